"""The claim table, records → verdict rows, the re-derivation from committed tables, the README's generated results
tables and the comparison with the reference run (issue #14)."""

import json
import math

import numpy as np
import pytest

from eqvae_lib.experiment import claims as C
from eqvae_lib.experiment import paper_values as pv
from eqvae_lib.experiment import records as R
from eqvae_lib.experiment import verdicts as V
from eqvae_lib.experiment.config import FIGURES_DIR, REPO_ROOT


def _rows(records):
    return {r["claim"]: r for r in C.evaluate(records)}


def test_claim_table_is_fixed_and_takes_paper_numbers_from_paper_values():
    assert C.PRIMARY == ("table1_delta_R", "table1_delta_S", "recon_kept_rFID", "table5_ID", "table6_gFID_fixed_budget",
                         "fig5_epoch1")
    by = {c.id: c for c in C.CLAIMS}
    assert len(by) == len(C.CLAIMS)  # unique ids
    assert by["table1_delta_R"].paper_effect == pytest.approx(pv.TABLE1["SD-VAE"]["eq"]["delta_R"]
                                                              - pv.TABLE1["SD-VAE"]["base"]["delta_R"])
    assert by["recon_kept_rFID"].margin == 1.10 and by["recon_kept_rFID"].comparator == "plain"
    assert by["table12_PSNR_kept"].margin == -0.3 and by["table12_PSNR_kept"].direction == "higher"
    assert by["table6_gFID_fixed_budget"].paper_effect == pytest.approx(34.1 - 43.5)
    # Fig. 5's paper number is epoch 1 vs epoch 0: it belongs to fig5_epoch1_vs_base, not to EQ vs plain at epoch 1
    assert by["fig5_epoch1"].paper is None and by["fig5_epoch1"].paper_effect is None
    assert "no paper number" in by["fig5_epoch1"].statement
    assert by["fig5_epoch1_vs_base"].paper_effect == pytest.approx(pv.FIG5[1] - pv.FIG5[0])
    for c in C.CLAIMS:
        assert c.kind in (C.DIFF, C.RATIO, C.SPEEDUP, C.CORR, C.MEAS)
        if c.kind != C.MEAS:
            assert c.direction in ("lower", "higher"), c.id


def test_seeded_replicates_give_holm_adjusted_intervals():
    rec = R.RunRecord("table1", "t", "cpu")
    for s, (eq, base) in enumerate([(0.25, 1.05), (0.30, 1.00), (0.28, 1.10)]):
        rec.add("delta_R", eq, subject="eq", seed=s)
        rec.add("delta_R", base, subject="base", seed=s)
    row = _rows([rec])["table1_delta_R"]
    assert row["n_replicates"] == 3 and row["verdict"] == V.REPRODUCED
    assert row["alpha"] == pytest.approx(0.05 / 6)  # the only tested member of a family of 6 (untested ones count)
    t = V.paired_t_interval([0.25 - 1.05, 0.30 - 1.00, 0.28 - 1.10], alpha=0.05 / 6)
    assert (row["effect_ci_low"], row["effect_ci_high"]) == pytest.approx((t.low, t.high))
    assert row["verdict_text"].startswith("direction reproduced: effect -0.773 [")
    # the same numbers on an exploratory claim use the unadjusted 95% level
    assert _rows([rec])["table1_delta_S"]["verdict"] == V.NOT_RUN


def test_one_finetune_with_two_generator_seeds_is_not_testable_but_shows_the_conditional_interval():
    rec = R.RunRecord("table2", "t", "cpu", params={"gen_fid_n": 1000})
    for subj, vals in (("base", (124.19, 122.41)), ("plain", (115.44, 110.96)), ("eq", (119.10, 114.57))):
        rec.add("dit_gFID_final", sum(vals) / 2, subject=subj)
        for s, v in enumerate(vals):
            rec.add(f"dit_gFID_step1500_seed{s}", v, subject=subj)
            rec.add(f"dit_gFID_step500_seed{s}", v + 60, subject=subj)
    row = _rows([rec])["table2_DiT"]
    assert row["verdict"] == V.NOT_TESTABLE and row["n_replicates"] == 1 and row["effect_ci_low"] is None
    t = V.paired_t_interval([119.10 - 124.19, 114.57 - 122.41])
    assert (row["cond_ci_low"], row["cond_ci_high"]) == pytest.approx((t.low, t.high)) and row["cond_k"] == 2
    assert row["n_samples"] == 1000 and "generator noise only" in row["verdict_text"]


def test_check_rows_refuses_overclaims():
    good = dict(claim="x", verdict=V.REPRODUCED, effect_ci_low=-3.0, effect_ci_high=-1.0, null_value=0.0, margin=None)
    C.check_rows([good])
    with pytest.raises(ValueError, match="contains"):
        C.check_rows([dict(good, effect_ci_high=0.5)])
    with pytest.raises(ValueError, match="without an interval"):
        C.check_rows([dict(good, effect_ci_low=None)])
    with pytest.raises(ValueError, match="margin|contains"):
        C.check_rows([dict(good, effect_ci_low=1.0, effect_ci_high=1.2, null_value=1.0, margin=1.1)])
    with pytest.raises(ValueError, match="not one of"):
        C.check_rows([dict(good, verdict="partly reproduced")])


def test_correlation_over_a_trajectory_record_is_not_testable():
    rec = R.RunRecord("ablations", "t", "cpu")
    rec.add("pearson_ID_gFID", 0.98, notes="over 5 autoencoders")
    row = _rows([rec])["id_gfid_relation"]
    assert row["verdict"] == V.NOT_TESTABLE and "ONE EQ fine-tune trajectory" in row["verdict_text"]


def _legacy_tables(folder):
    folder.mkdir(parents=True)
    (folder / "results.csv").write_text(
        "claim,subject,metric,ours,unit,paper,source,notes\n"
        "table1,base,delta_R,1.05,,0.89,Table 1,\n"
        "table1,eq,delta_R,0.25,,0.56,Table 1,\n"
        "table5_id,eq,ID_TwoNN,11.3,dimensions,39.4,Table 5,\"95% CI [10.7, 11.8], n=2000\"\n")
    (folder / "report.md").write_text(
        "# r\n\n## table1: Latent equivariance error\n\nScale: Fashion-MNIST 32 px.  \nVerdict: **partly reproduced** "
        "— x  \nProvenance: commit `abc123`, wall time 0.5 min, seeds [0], inputs base_ae=11, eq_ae=22\n")


def test_records_from_tables_round_trip_and_report(tmp_path):
    folder = tmp_path / "cpu"
    _legacy_tables(folder)
    recs = {r.claim: r for r in R.records_from_tables("cpu", folder)}
    t1 = recs["table1"]
    assert t1.git_commit == "abc123" and t1.seeds == [0] and t1.inputs == {"base_ae": "11", "eq_ae": "22"}
    assert t1.wall_time_s == pytest.approx(30.0) and t1.title == "Latent equivariance error"
    assert "re-derived from the committed" in t1.origin and t1.get("delta_R", "eq") == 0.25
    # v1 runs: the seeds the tables say (report.md's provenance), never today's replicate_seeds
    assert all("replicate_seeds" not in r.params for r in recs.values())
    R.save_records_beside_figures(recs.values(), folder)
    back = R.load_record(folder / "records" / "table1.json")
    assert back.verdict == V.NOT_TESTABLE and back.origin == t1.origin
    R.write_report("cpu", folder, root=tmp_path / "no-runs")
    rows = R.read_results_csv(folder / "results.csv")
    assert {r["verdict"] for r in rows} <= set(V.VERDICT_WORDS)
    assert [c for c in C.COLUMNS[:16]] == list(rows[0])[:16]
    id_row = next(r for r in rows if r["claim"] == "table5_ID")
    assert id_row["verdict"] == V.NOT_RUN  # no base ID in these tables
    # the report can be rebuilt from the records it wrote (measurements.csv is the per-metric table now)
    again = {r.claim: r for r in R.records_from_tables("cpu", folder)}
    assert again["table5_id"].metrics[0].notes.endswith("n=2000")


def test_compare_to_reference_inside_outside_and_no_interval(tmp_path):
    ref = [dict(claim="a", verdict=V.WITHIN_NOISE, effect=1.0, effect_ci_low=-1.0, effect_ci_high=3.0, n_replicates=3),
           dict(claim="b", verdict=V.NOT_TESTABLE, effect=2.0, effect_ci_low=None, effect_ci_high=None,
                cond_ci_low=1.5, cond_ci_high=2.5, cond_k=2),
           dict(claim="c", verdict=V.NOT_TESTABLE, effect=5.0, effect_ci_low=None, effect_ci_high=None),
           dict(claim="d", verdict=V.NOT_TESTABLE, effect=5.0),
           dict(claim="r", verdict=V.WITHIN_NOISE, effect=1.0, effect_ci_low=0.5, effect_ci_high=2.0, n_replicates=3,
                null_value=1.0)]
    user = [dict(claim="a", effect=4.9, n_replicates=1), dict(claim="b", effect=3.0), dict(claim="c", effect=5.0),
            dict(claim="r", effect=3.9, n_replicates=3)]
    out = {r["claim"]: r for r in R.compare_to_reference(user, ref)}
    # a: the mean's interval [-1, 3] (k = 3) widened by sqrt(1 + 3/1) = 2 around its centre for one new replicate
    assert (out["a"]["reference_low"], out["a"]["reference_high"]) == pytest.approx((-3.0, 5.0))
    assert out["a"]["agreement"] == "inside" and out["a"]["interval"] == "replicates"
    # b: [1.5, 2.5] over 2 generator seeds, widened by sqrt(3): [1.134, 2.866]; 3.0 lies outside
    assert out["b"]["reference_high"] == pytest.approx(2.0 + 0.5 * math.sqrt(3))
    assert out["b"]["agreement"] == "outside" and out["b"]["interval"] == "generator seeds only"
    # r: a ratio claim is widened on the log scale: exp(log 1 ± log 2 · sqrt(2)) = [0.375, 2.665]
    assert out["r"]["reference_high"] == pytest.approx(math.exp(math.log(2) * math.sqrt(2)))
    assert out["r"]["agreement"] == "outside"
    assert out["c"]["agreement"] == "no reference interval" and out["d"]["agreement"] == "not in your run"
    assert out["c"]["relative_difference"] == 0.0 and out["a"]["relative_difference"] == pytest.approx(3.9)


def test_compare_to_reference_lists_claims_only_your_run_has():
    ref = [dict(claim="a", verdict=V.WITHIN_NOISE, effect=1.0, effect_ci_low=-1.0, effect_ci_high=3.0, n_replicates=3)]
    user = [dict(claim="a", effect=1.5, n_replicates=3), dict(claim="new", effect=2.5),
            dict(claim="m", verdict="measurement", ours=7.0, effect=None)]
    out = {r["claim"]: r for r in R.compare_to_reference(user, ref)}
    assert set(out) == {"a", "new", "m"}
    assert out["new"]["agreement"] == "not in the reference" and out["new"]["user_effect"] == 2.5
    assert out["m"]["agreement"] == "not in the reference" and out["m"]["user_effect"] == 7.0


def test_the_default_reference_is_the_committed_file_not_your_run(tmp_path):
    # make reproduce rewrites figures/<profile>/results.csv; the default reference must stay the committed one
    import subprocess

    repo = tmp_path / "repo"

    def git(*args):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)

    csv = repo / "figures" / "cpu" / "results.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("claim,effect\nx,1.0\n")
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "empty")
    with pytest.raises(FileNotFoundError, match="not committed at HEAD"):
        R.committed_results("cpu", root=repo)
    git("add", "figures")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "reference")
    csv.write_text("claim,effect\nx,9.0\n")  # your run overwrote the working file
    rows, source = R.committed_results("cpu", root=repo)
    assert rows[0]["effect"] == 1.0 and "as committed at" in source
    outside = tmp_path / "nogit"
    (outside / "figures" / "cpu").mkdir(parents=True)
    (outside / "figures" / "cpu" / "results.csv").write_text("claim,effect\nx,9.0\n")
    rows, source = R.committed_results("cpu", root=outside)  # no git repository: the working file, said so
    assert rows[0]["effect"] == 9.0 and "working file" in source


def test_compare_to_reference_refuses_a_claim_whose_definition_changed():
    ref = dict(claim="fig5_epoch1", verdict=V.WITHIN_NOISE, effect=-1.0, effect_ci_low=-3.0, effect_ci_high=1.0,
               n_replicates=3, metric="gFID", subject="eq epoch 1", comparator="epoch 0")
    same = dict(ref, effect=-1.2)
    out = R.compare_to_reference([same], [ref])[0]
    assert out["agreement"] == "inside"
    for key, changed in (("comparator", "plain epoch 1"), ("metric", "gFID_final"), ("subject", "eq")):
        out = R.compare_to_reference([dict(same, **{key: changed})], [ref])[0]
        assert out["agreement"] == "definition changed since the reference run", key
    # a column missing on one side and empty on the other is the same (empty) definition
    out = R.compare_to_reference([dict(same, comparator=None)], [dict(ref, comparator=float("nan"))])[0]
    assert out["agreement"] == "inside"


def test_identical_replicates_and_primary_claims_below_three_replicates_are_not_testable():
    rec, fig7 = R.RunRecord("table1", "t", "cpu"), R.RunRecord("fig7", "t", "cpu")
    for s, (eq, base) in enumerate([(0.25, 1.05), (0.30, 1.00)]):
        rec.add("delta_R", eq, subject="eq", seed=s)
        rec.add("delta_R", base, subject="base", seed=s)
        fig7.add("latent_roughness", 0.5, subject="eq", seed=s)  # one value twice: no variance
        fig7.add("latent_roughness", 0.9, subject="base", seed=s)
    rows = _rows([rec, fig7])
    assert rows["table1_delta_R"]["n_replicates"] == 2 and rows["table1_delta_R"]["verdict"] == V.NOT_TESTABLE
    assert "needs k >= 3" in rows["table1_delta_R"]["verdict_text"]
    assert rows["fig7_roughness"]["verdict"] == V.NOT_TESTABLE and "identical" in rows["fig7_roughness"]["verdict_text"]


def test_the_fixed_base_pairs_with_every_finetune_seed():
    rec = R.RunRecord("table1", "t", "cpu")
    rec.add("delta_R", 1.05, subject="base")  # the one base autoencoder: no seed
    for s, eq in enumerate([0.25, 0.30, 0.28]):
        rec.add("delta_R", eq, subject="eq", seed=s)
    row = _rows([rec])["table1_delta_R"]
    t = V.paired_t_interval([0.25 - 1.05, 0.30 - 1.05, 0.28 - 1.05], alpha=0.05 / 6)
    assert row["n_replicates"] == 3 and row["verdict"] == V.REPRODUCED
    assert (row["effect_ci_low"], row["effect_ci_high"]) == pytest.approx((t.low, t.high))


def test_an_unseeded_base_gfid_does_not_pair_with_generator_replicates():
    # the base arm of a generative claim has its own generator seeds: one unseeded base gFID is no comparator arm
    rec = R.RunRecord("table2", "t", "cpu")
    rec.add("gFID_final", 60.0, subject="base")
    for s, v in enumerate([50.0, 51.0, 52.5]):
        rec.add("gFID_final", v, subject="eq", seed=s)
    row = _rows([rec])["table2_gFID"]
    assert row["verdict"] == V.NOT_TESTABLE and "comparator has no replicate seeds" in row["verdict_text"]
    assert row["effect_ci_low"] is None
    # the same numbers seeded per generator seed in the base arm pair by seed
    for s, v in enumerate([60.0, 61.0, 59.0]):
        rec.add("gFID_final", v, subject="base", seed=s)
    assert _rows([rec])["table2_gFID"]["verdict"] == V.REPRODUCED


def test_compare_reference_cli_on_synthetic_records(tmp_path, capsys):
    refdir, mine = tmp_path / "ref", tmp_path / "mine"
    recs = []
    for seed_shift, dest in ((0.0, refdir), (0.01, mine)):
        rec = R.RunRecord("table1", "t", "cpu")
        for s, (eq, base) in enumerate([(0.25, 1.05), (0.30, 1.00), (0.28, 1.10)]):
            rec.add("delta_R", eq + seed_shift, subject="eq", seed=s)
            rec.add("delta_R", base, subject="base", seed=s)
        recs.append(rec)
        if dest is refdir:
            refdir.mkdir()
            (refdir / "records").mkdir()
            R.atomic_write_json(refdir / "records" / "table1.json", json.loads(json.dumps(R.asdict(rec))))
            R.write_report("cpu", refdir, root=tmp_path / "none")
        else:
            mine.mkdir()
            R.atomic_write_json(mine / "table1.json", R.asdict(rec))
    assert R.cli_compare_reference(["--profile", "cpu", "--records", str(mine), "--reference", str(refdir)]) == 0
    out = capsys.readouterr().out
    assert "| table1_delta_R |" in out and "inside" in out
    assert R.cli_compare_reference(["--records", str(tmp_path / "empty"), "--reference", str(refdir)]) == 2


@pytest.mark.parametrize("profile", ["cpu", "cpu-full"])
def test_committed_results_use_only_verdict_words_and_match_the_readme(profile):
    rows = R.read_results_csv(FIGURES_DIR / profile / "results.csv")
    C.check_rows(rows)  # only the six words; no 'reproduced' whose interval holds the null or leaves the margin
    for col in ("claim", "metric", "subject", "comparator", "ours", "effect", "effect_ci_low", "effect_ci_high",
                "relative_effect", "null_value", "n_replicates", "n_samples", "paper_value", "paper_effect",
                "primary", "verdict"):
        assert col in rows[0]
    readme = (REPO_ROOT / "README.md").read_text()
    assert R.readme_block(profile, rows) in readme, (f"README results table of {profile} differs from "
                                                     f"figures/{profile}/results.csv: run `python -m eqvae_lib report "
                                                     f"--profile {profile} --readme`")
    records = [R.load_record(p) for p in sorted(R.records_dir(profile).glob("*.json")) if p.stem != "report"]
    assert R.times_block(profile, records) in readme, (f"README wall-time table of {profile} differs from "
                                                      f"figures/{profile}/records: run `python -m eqvae_lib report "
                                                      f"--profile {profile} --readme`")


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    folder = tmp_path / "cpu"
    folder.mkdir()
    cells = {"claim": "x", "verdict": V.WITHIN_NOISE}
    (folder / "results.csv").write_text(",".join(C.COLUMNS) + "\n"
                                        + ",".join(cells.get(c, "") for c in C.COLUMNS) + "\n")
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- results:cpu -->\nold\n<!-- /results:cpu -->\nafter\n"
                      "<!-- times:cpu -->\nold times\n<!-- /times:cpu -->\nend\n")
    assert R.update_readme("cpu", readme, folder)
    text = readme.read_text()
    assert text.startswith("before\n<!-- results:cpu -->") and text.endswith("<!-- /times:cpu -->\nend\n")
    assert "<!-- /results:cpu -->\nafter\n<!-- times:cpu -->" in text
    assert "old" not in text and "| x |" in text and "No records of profile `cpu` yet." in text
    assert not R.update_readme("cpu", readme, folder)  # idempotent
    with pytest.raises(ValueError, match="markers"):
        R.update_readme("cpu-full", readme, folder)
    readme.write_text("<!-- results:cpu -->\n<!-- /results:cpu -->\n")  # a results block without its times block
    with pytest.raises(ValueError, match="times:cpu"):
        R.update_readme("cpu", readme, folder)
    # a results.csv with a word that is not a verdict never reaches the README
    (folder / "results.csv").write_text(",".join(C.COLUMNS) + "\n"
                                        + ",".join(dict(cells, verdict="x").get(c, "") for c in C.COLUMNS) + "\n")
    with pytest.raises(ValueError, match="claim x: verdict 'x' is not one of"):
        R.update_readme("cpu", readme, folder)


def _timed(claim: str, started: float, minutes: float, commit: str = "a" * 40) -> R.RunRecord:
    rec = R.RunRecord(claim, "t", "cpu", git_commit=commit, started=started)
    rec.wall_time_s = 60 * minutes
    return rec


def _design(started: float) -> R.RunRecord:
    rec = _timed("design", started, 2.0)
    rec.add("stage_throughput", 70.4, "images/s", subject="ae_pretrain")
    rec.add("stage_throughput", 40.0, "images/s", subject="ae_pretrain_gan")
    rec.add("stage_throughput", 900.0, "images/s", subject="classifier_train")  # not shown
    rec.add("stage_throughput", math.nan, "latents/s", subject="gen_train_sit")  # not a number: not shown
    rec.add("projected_wall_time", 3.0, "min", subject="00_design_pilot")
    rec.add("projected_wall_time", 100.0, "min", subject="01_data_and_base_ae", notes="at most; base AE: its cap")
    return rec


T0 = 1_700_000_000.0


def test_verdict_tally_counts_comparisons_primary_first():
    rows = [dict(verdict=V.REPRODUCED, primary=True), dict(verdict=V.WITHIN_NOISE, primary="True"),
            dict(verdict=V.WITHIN_NOISE, primary=False), dict(verdict=V.NOT_TESTABLE, primary=""),
            dict(verdict=V.MEASUREMENT, primary=False), dict(verdict=V.NOT_RUN, primary=True)]
    assert R.verdict_tally(rows) == ("Verdicts of the 2 primary claims: 1 reproduced, 1 within noise. Of all 4 "
                                     "comparisons: 1 reproduced, 2 within noise, 1 not testable at this scale.")
    assert R.verdict_tally(rows[2:4]) == "Of all 2 comparisons: 1 within noise, 1 not testable at this scale."
    assert R.verdict_tally(rows[4:]) == "No comparison in this profile's results."
    block = R.readme_block("cpu", [dict(r, claim=f"c{i}", subject="eq") for i, r in enumerate(rows)])
    assert R.verdict_tally(rows) in block and "Not run in this profile: c5." in block


def test_times_block_one_run_back_to_back():
    # each notebook starts 10 s after the previous one ends
    one = [_design(T0), _timed("base_ae", T0 + 130, 90.0), _timed("table6_finetune", T0 + 130 + 5400 + 10, 30.0)]
    df = R.notebook_times(one)
    assert list(df.notebook) == ["00_design_pilot", "01_data_and_base_ae", "02_finetune"]  # CLAIMS order
    assert df.measured_min.tolist() == [2.0, 90.0, 30.0]
    assert df.projected_min.iloc[:2].tolist() == [3.0, 100.0] and math.isnan(df.projected_min.iloc[2])
    assert df.projected_at_most.tolist() == [False, True, False]
    assert math.isnan(df.gap_before_s.iloc[0]) and df.gap_before_s.iloc[1:].tolist() == [10.0, 10.0]
    block = R.times_block("cpu", one)
    assert block.startswith("<!-- times:cpu -->") and block.endswith("<!-- /times:cpu -->")
    assert "| `00_design_pilot` | 2.0 | 3.0 |" in block and "| `01_data_and_base_ae` | 90.0 | ≤ 100.0 |" in block
    assert "AE pretraining step without the GAN 70 images/s, with the GAN 40 images/s." in block
    assert "classifier" not in block and "SiT" not in block and "nan" not in block
    # 122 min in the notebooks; from the first start to the last end: 130 + 5400 + 10 + 1800 s = 122.3 min
    assert "One run of 3 notebooks, back to back: 122 min in the notebooks, 122 min from the first" in block
    assert "estimate" not in block and "different commits" not in block
    assert "No record (not run in this profile, or not yet): `03_equivariance_failure`" in block


def test_times_block_calls_separate_or_out_of_order_runs_a_sum_and_an_estimate():
    # the same notebooks run as two sessions 3 hours apart, the second at another commit
    two = [_design(T0), _timed("base_ae", T0 + 130, 90.0),
           _timed("table6_finetune", T0 + 130 + 5400 + 3 * 3600, 30.0, commit="b" * 40)]
    block = R.times_block("cpu", two)
    assert "Sum of the wall times of the 3 measured notebooks: 122 min, from 2 separate runs." in block
    assert "An estimate of one run from empty caches, not a measurement of one" in block and "One run" not in block
    assert "different commits: `aaaaaaaaaaaa`, `bbbbbbbbbbbb`" in block
    # notebook 00 re-run a week after the others (only its source changed): its successors started long before its
    # end, which must not pass as "back to back" (nor give a negative span)
    week = 7 * 86400
    late = [_design(T0 + week), _timed("base_ae", T0 + 130, 90.0), _timed("table6_finetune", T0 + 5540, 30.0)]
    assert R.notebook_times(late).gap_before_s.iloc[1] < -R.ONE_RUN_GAP_S
    block = R.times_block("cpu", late)
    assert "from 2 separate runs" in block and "One run" not in block


def test_times_block_marks_a_notebook_with_earlier_runs_as_its_last_run_only():
    # back to back, but notebook 01 finished a base whose training an earlier, killed run had begun
    base = _timed("base_ae", T0 + 130, 90.0)
    base.add(R.EARLIER_RUNS_METRIC, 1, "runs", subject="notebook")
    runs = [_design(T0), base, _timed("table6_finetune", T0 + 130 + 5400 + 10, 30.0)]
    assert R.notebook_times(runs).earlier_runs.tolist() == [0, 1, 0]
    block = R.times_block("cpu", runs)
    assert "| `01_data_and_base_ae` | 90.0 (last of 2 runs) | ≤ 100.0 |" in block
    assert "One run" not in block and ", from one run" not in block
    assert "Sum of the wall times of the 3 measured notebooks: 122 min, from at least 2 separate runs" in block
    assert "timed for their last run only" in block and "`01_data_and_base_ae` (1 earlier run)" in block
    # a NaN, or the metric of another subject, is not read as earlier runs
    rec = _timed("base_ae", T0, 1.0)
    rec.add(R.EARLIER_RUNS_METRIC, math.nan, "runs", subject="notebook")
    rec.add(R.EARLIER_RUNS_METRIC, 3, "runs", subject="base")
    assert R.notebook_times([rec]).earlier_runs.tolist() == [0]


def test_earlier_runs_counts_resumes_and_a_cache_load_and_names_a_broken_log(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"kind": "event", "step": 0, "event": "start"}\n{"kind": "train", "step": 1}\n'
                   '{"kind": "event", "step": 1, "event": "resume"}\n\n{"kind": "event", "step": 1, "event": "end"}\n')
    written = log.stat().st_mtime
    assert R.earlier_runs(log, started=written) == 1  # trained in this run, continuing one interrupted run
    assert R.earlier_runs(log, started=written + 1) == 2  # written before this run: loaded from the cache as well
    # a run started over (resume=False) appends to the old log: only resumes after the last start count
    log.write_text('{"kind": "event", "event": "start"}\n{"kind": "event", "event": "resume"}\n'
                   '{"kind": "event", "event": "start"}\n{"kind": "event", "event": "resume"}\n'
                   '{"kind": "event", "event": "resume"}\n')
    assert R.earlier_runs(log, started=0.0) == 2
    log.write_text('{"kind": "event", "event": "resume"}\n{"kind": "tra')  # cut off mid-line
    with pytest.raises(ValueError, match=r"log.jsonl, line 2: not JSON"):
        R.earlier_runs(log, started=0.0)
    with pytest.raises(FileNotFoundError):
        R.earlier_runs(tmp_path / "missing.jsonl", started=0.0)


def test_times_block_never_shows_a_re_derived_record_as_measured():
    old = _timed("base_ae", T0, 17.0)  # a real-looking clock...
    old.origin = "re-derived from the committed tables; start time unknown"  # ...but re-derived: no clock
    df = R.notebook_times([old])
    assert math.isnan(df.measured_min.iloc[0]) and df.started.iloc[0] == ""
    block = R.times_block("cpu", [old])
    assert "unknown (re-derived record, no clock)" in block and "17.0" not in block
    assert "One run" not in block and "Sum" not in block and "Machine" not in block
    # beside a measured notebook, the re-derived one is named as unclocked and the total is only a sum
    design = _design(T0 - 200)
    block = R.times_block("cpu", [design, old])
    assert "Sum of the wall times of the 1 measured notebooks: 2 min, from one run; without a clock: " \
           "01_data_and_base_ae." in block
    # a re-derived design record's rates are not shown as notebook 00's measurement beside a measured notebook
    design.origin = "re-derived"
    block = R.times_block("cpu", [design, _timed("base_ae", T0, 17.0)])
    assert "Machine of the measured notebooks" in block and "Throughput" not in block


def test_record_verdict_never_claims_more_than_its_least_conclusive_claim():
    rec = R.RunRecord("table1", "t", "cpu")
    for s, (eq, base, eqs, bases) in enumerate([(0.25, 1.05, 0.80, 0.84), (0.30, 1.00, 0.86, 0.83),
                                               (0.28, 1.10, 0.79, 0.85)]):
        rec.add("delta_R", eq, subject="eq", seed=s)
        rec.add("delta_R", base, subject="base", seed=s)
        rec.add("delta_S", eqs, subject="eq", seed=s)
        rec.add("delta_S", bases, subject="base", seed=s)
    rows = _rows([rec])
    assert rows["table1_delta_R"]["verdict"] == V.REPRODUCED and rows["table1_delta_S"]["verdict"] == V.WITHIN_NOISE
    word, text = C.record_verdict(rec)
    assert word == V.WITHIN_NOISE and text.startswith("claims differ:")
    meas = R.RunRecord("design", "t", "cpu")
    meas.add("throughput", 181.2, subject="fashion-mnist 32px small-f4")
    assert C.record_verdict(meas) == (V.MEASUREMENT, "design_throughput = 181.2")


def _gen_record(claim, values, metric="gFID_final", notes="SiT-T/2 (headline), n = 5000"):
    """A record with per-seed full replicates ``values = {subject: [v_seed0, v_seed1, ...]}``."""
    rec = R.RunRecord(claim, "t", "cpu")
    for subj, vals in values.items():
        for s, v in enumerate(vals):
            rec.add(metric, v, subject=subj, seed=s, notes=notes)
    return rec


def test_speedup_estimator_on_curves_with_a_known_crossing_and_censored():
    steps = [300, 600, 900, 1200, 1500]
    base = [100.0, 80.0, 70.0, 64.0, 60.0]
    eq = [90.0, 70.0, 50.0, 45.0, 40.0]  # crosses 60 halfway between 600 (70) and 900 (50) -> step 750
    e = V.speedup_estimate(steps, eq, base)
    assert e.target == 60.0 and e.reach == 750 and e.speedup == pytest.approx(1500 / 750) and not e.censored
    assert e.describe("EQ", "the base") == "target 60: EQ reaches it at step 750, the base at 1500"
    # a slower subject: the target is the worse final (61, its own), which the base reaches first at 1425
    slow = [120.0, 100.0, 90.0, 75.0, 61.0]
    c = V.speedup_estimate(steps, slow, base)
    assert c.target == 61.0 and c.reach == 1500 and c.comparator_reach == 1425 and not c.censored
    assert c.speedup == pytest.approx(1425 / 1500)  # < 1: slower
    # symmetric: swapping the arms inverts the estimate
    assert V.speedup_estimate(steps, base, slow).speedup == pytest.approx(1500 / 1425)
    # a curve with no usable final value never reaches a target: censored, no number (the robustness path)
    c = V.speedup_estimate(steps, eq[:4] + [float("nan")], base)
    assert c.censored and c.speedup is None
    c = V.speedup_estimate(steps, eq, base[:4] + [float("nan")])  # either arm's
    assert c.censored and c.speedup is None
    assert c.describe() == "no finite final gFID in one of the curves: no target, censored"
    first = V.speedup_estimate(steps, [55.0, 50, 45, 40, 35], base)  # already there at the first checkpoint
    assert first.at_first_checkpoint and first.speedup == pytest.approx(5.0)
    assert first.describe("EQ", "the base").endswith("EQ already at the first checkpoint, a lower bound")
    with pytest.raises(ValueError):
        V.speedup_estimate(steps, eq[:4], base)
    # per-replicate verdict: all reached -> a log-scale t interval; any censored -> not testable, no number
    v = V.speedup_verdict([2.0, 1.8, 2.3])
    t = V.paired_t_interval([math.log(2.0), math.log(1.8), math.log(2.3)])
    assert v.word == V.REPRODUCED and (v.low, v.high) == pytest.approx((math.exp(t.low), math.exp(t.high)))
    cv = V.speedup_verdict([2.0, None, 2.3], comparator="the base")
    assert cv.word == V.NOT_TESTABLE and cv.effect is None and "censored: in 1 of 3" in cv.text


_SIM_STEPS = list(range(250, 3001, 250))


def _sim_curve(shape, scale, rng, noise, rescale=1.0):
    """A decreasing gFID curve at ``rescale`` × ``_SIM_STEPS`` (rescale 2 = twice as fast) + Gaussian evaluation
    noise: ``"plateau"`` falls linearly from 100 to 20 at step ``scale`` then stays flat;
    ``"exp"`` = 20 + 80·e^(−t/scale)
    (still improving at the end of the budget)."""
    t = np.asarray(_SIM_STEPS, dtype=float) * rescale
    clean = np.maximum(20.0, 100.0 - 80.0 * t / scale) if shape == "plateau" else 20.0 + 80.0 * np.exp(-t / scale)
    return (clean + rng.normal(0.0, noise, size=t.size)).tolist()


def _simulated_speedup_words(rng, n_designs, shape, rescale, k=3):
    words = []
    for _ in range(n_designs):  # one curve per design; the subject's runs `rescale` times as fast
        scale = rng.uniform(600, 1800) if shape == "plateau" else rng.uniform(400, 1000)
        noise = rng.uniform(0.1, 2.0)
        ests = [V.speedup_estimate(_SIM_STEPS, _sim_curve(shape, scale, rng, noise, rescale),
                                   _sim_curve(shape, scale, rng, noise)).speedup for _ in range(k)]
        words.append(V.speedup_verdict(ests).word)
    return words


@pytest.mark.parametrize("shape", ["plateau", "exp"])
def test_speedup_verdict_is_calibrated_under_the_null_of_one_curve_for_both_arms(shape):
    # issue 14-style null calibration: 400 designs of k = 3 replicates, both arms drawn from one decreasing curve
    # (decreasing-then-plateau, or still improving) + noise. The old estimator (target = the comparator's final gFID,
    # which its own curve reaches by definition) gave every uncensored replicate a speed-up >= 1 and 'reproduced' in
    # ~50% of the plateau designs here; the symmetric one stays near the test's level, in both directions.
    words = _simulated_speedup_words(np.random.default_rng(1414), 400, shape, rescale=1.0)
    share = {w: words.count(w) / len(words) for w in set(words)}
    assert share.get(V.REPRODUCED, 0.0) <= 0.05, share
    assert share.get(V.OPPOSITE, 0.0) <= 0.05, share


def test_speedup_verdict_finds_a_true_twofold_time_rescaling():
    # a curve still improving at the end of the budget: the subject's runs twice as fast -> 'reproduced' in most
    # k = 3 designs (on an exactly flat plateau the first step reaching a noisy plateau level is mostly noise: then
    # about half the designs come out 'reproduced' at k = 3)
    words = _simulated_speedup_words(np.random.default_rng(7), 100, "exp", rescale=2.0)
    assert words.count(V.REPRODUCED) / len(words) >= 0.75, {w: words.count(w) for w in set(words)}
    # and the reverse (the subject twice as slow) comes out opposite, with the speed-up near 1/2
    rng = np.random.default_rng(8)
    ests = [V.speedup_estimate(_SIM_STEPS, _sim_curve("exp", 700, rng, 0.3),
                               _sim_curve("exp", 700, rng, 0.3, rescale=2.0)).speedup for _ in range(3)]
    v = V.speedup_verdict(ests)
    assert v.word == V.OPPOSITE and v.effect == pytest.approx(0.5, rel=0.15)


def test_speedup_claim_reads_per_replicate_estimates_and_reports_censoring():
    rec = _gen_record("table2", {"eq": [2.0, 1.8, 2.3]}, metric="speedup_vs_base", notes="")
    row = _rows([rec])["speedup"]
    assert row["verdict"] == V.REPRODUCED and row["n_replicates"] == 3
    assert row["ours"] == pytest.approx((2.0 * 1.8 * 2.3) ** (1 / 3))
    rec2 = _gen_record("table2", {"eq": [2.0, None, 2.3]}, metric="speedup_vs_plain", notes="")
    row2 = _rows([rec2])["speedup_vs_plain"]
    assert row2["verdict"] == V.NOT_TESTABLE and row2["ours"] is None and row2["effect"] is None
    assert "censored" in row2["verdict_text"]
    # the bound notes of SpeedupEstimate.describe reach the verdict text with their own direction
    steps, base = [300, 600, 900], [80.0, 70.0, 60.0]
    pairs = (([55.0, 50.0, 45.0], base),  # EQ at the target (60) at its first checkpoint
             ([90.0, 80.0, 75.0], [70.0, 65.0, 60.0]),  # the base at the target (75) at its first checkpoint
             ([40.0, 45.0, 41.0], [39.0, 44.0, 42.0]))  # both at the target (42) at the first checkpoint
    notes = [V.speedup_estimate(steps, eq, b).describe("EQ", "the base") for eq, b in pairs]
    assert "a lower bound" in notes[0] and "an upper bound" in notes[1] and "no bound" in notes[2]
    rec3 = R.RunRecord("table2", "t", "cpu")
    for s, (v, note) in enumerate(zip([5.0, 1 / 3, 1.0], notes)):
        rec3.add("speedup_vs_base", v, "x", subject="eq", seed=s, notes=note)
    text = _rows([rec3])["speedup"]["verdict_text"]
    assert "1 replicate(s) reached the target at the first checkpoint, so their speed-up is a lower bound" in text
    assert "so their speed-up is an upper bound" in text and "no bound (both arms were there)" in text


def test_a_base_stopped_at_a_cap_makes_every_generative_claim_not_testable():
    gen = _gen_record("table2", {"base": [60.0, 62.0, 61.0], "plain": [58.0, 59.5, 59.0],
                                 "eq": [50.0, 51.0, 52.5]})
    rows = _rows([gen])
    assert rows["table6_gFID_fixed_budget"]["verdict"] == V.REPRODUCED
    assert rows["table2_gFID"]["verdict"] == V.REPRODUCED
    capped = R.RunRecord("base_ae", "t", "cpu")
    capped.add("plateau_reached", 0.0, "bool", subject="base")
    rows = _rows([gen, capped])
    for cid in ("table6_gFID_fixed_budget", "table2_gFID"):
        assert rows[cid]["verdict"] == V.NOT_TESTABLE, cid
        assert "stopped at a cap" in rows[cid]["verdict_text"] and "reproduced" in rows[cid]["verdict_text"]
        assert rows[cid]["effect_ci_high"] < 0  # the interval stays, reported, not judged
    # either direction: an 'opposite' gFID row is not testable too; an autoencoder-side claim is untouched
    opp = _gen_record("table2", {"plain": [50.0, 51.0, 52.5], "eq": [60.0, 62.0, 61.0]})
    t1 = R.RunRecord("table1", "t", "cpu")
    for s, (e, b) in enumerate([(0.25, 1.05), (0.30, 1.00), (0.28, 1.10)]):
        t1.add("delta_R", e, subject="eq", seed=s)
        t1.add("delta_R", b, subject="base", seed=s)
    assert _rows([opp])["table6_gFID_fixed_budget"]["verdict"] == V.OPPOSITE
    rows = _rows([opp, t1, capped])
    assert rows["table6_gFID_fixed_budget"]["verdict"] == V.NOT_TESTABLE
    assert rows["table1_delta_R"]["verdict"] == V.REPRODUCED
    # the base's own stop reason carried in a generative record (base_plateau_reached) triggers the same rule
    gen.add("base_plateau_reached", 0.0, subject="base")
    assert _rows([gen])["table2_gFID"]["verdict"] == V.NOT_TESTABLE
    plateau = R.RunRecord("base_ae", "t", "cpu")
    plateau.add("plateau_reached", 1.0, subject="base")
    assert C.base_cap_reason([plateau]) is None and C.base_cap_reason([capped])
    assert {c.id for c in C.CLAIMS if C.is_generative(c)} >= {"table6_gFID_fixed_budget", "fig5_epoch1", "speedup",
                                                              "id_gfid_relation"}
    assert not any(C.is_generative(c) for c in C.CLAIMS if c.record in ("table1", "table1_vq"))


def test_a_base_without_a_recorded_stop_reason_counts_as_not_converged():
    gen = _gen_record("table2", {"base": [60.0, 62.0, 61.0], "eq": [50.0, 51.0, 52.5]})
    silent = R.RunRecord("base_ae", "t", "cpu")  # a kit-trained base whose record carries no stop reason
    silent.add("pretrain_steps", 4000.0, "steps", subject="base")
    reason = C.base_cap_reason([gen, silent])
    assert reason and "stop reason is not recorded" in reason
    row = _rows([gen, silent])["table2_gFID"]
    assert row["verdict"] == V.NOT_TESTABLE and "stop reason is not recorded" in row["verdict_text"]
    silent.add("plateau_reached", None, subject="base")  # a value that is no value says nothing either
    assert C.base_cap_reason([silent])
    ok = R.RunRecord("base_ae", "t", "cpu")
    ok.add("plateau_reached", 1.0, subject="base")
    assert C.base_cap_reason([gen, ok]) is None and _rows([gen, ok])["table2_gFID"]["verdict"] == V.REPRODUCED


def _vq_record(stop_notes):
    rec = _gen_record("table1_vq", {"base": [60.0, 62.0, 61.0], "eq": [50.0, 51.0, 52.5]},
                      metric="maskgit_gFID_final", notes="n = 1000")
    if stop_notes is not None:
        rec.add("base_vq_pretrain_steps", 3000.0, "steps", subject="base", notes=stop_notes)
    return rec


def test_the_cap_rule_applies_to_the_vq_base_for_table3():
    assert _rows([_vq_record("stop reason: plateau")])["table3_maskgit_gFID"]["verdict"] == V.REPRODUCED
    for notes, why in (("stop reason: max_steps", "stopped at a cap (max_steps)"), (None, "not recorded")):
        row = _rows([_vq_record(notes)])["table3_maskgit_gFID"]
        assert row["verdict"] == V.NOT_TESTABLE and why in row["verdict_text"], notes
    # the continuous base's cap does not void the discrete path, nor the VQ base's the continuous claims
    capped = R.RunRecord("base_ae", "t", "cpu")
    capped.add("plateau_reached", 0.0, "bool", subject="base")
    assert _rows([_vq_record("stop reason: plateau"), capped])["table3_maskgit_gFID"]["verdict"] == V.REPRODUCED
    gen = _gen_record("table2", {"base": [60.0, 62.0, 61.0], "eq": [50.0, 51.0, 52.5]})
    assert _rows([_vq_record("stop reason: max_steps"), gen])["table2_gFID"]["verdict"] == V.REPRODUCED


def test_table3_speedup_over_maskgit_seeds_of_one_vq_finetune_is_conditional_only():
    # notebook 10: one VQ fine-tune per arm, so its per-MaskGIT-seed speed-ups ("eq, seed s") are generator noise:
    # reported as a conditional interval, never as the verdict
    rec = _vq_record("stop reason: plateau")
    for s, v in enumerate([2.1, 1.9, 2.4]):
        rec.add("maskgit_speedup_vs_base", v, "x", subject=f"eq, seed {s}", notes="")
    row = _rows([rec])["table3_speedup"]
    assert row["verdict"] == V.NOT_TESTABLE and "generator" in row["verdict_text"]
    assert row["cond_k"] == 3 and row["cond_effect"] == pytest.approx((2.1 * 1.9 * 2.4) ** (1 / 3))
    # seeded VQ fine-tunes (full replicates, metric seed=s) would decide it; a capped VQ base voids it
    full = _vq_record("stop reason: plateau")
    for s, v in enumerate([2.1, 1.9, 2.4]):
        full.add("maskgit_speedup_vs_base", v, "x", subject="eq", seed=s, notes="")
    assert _rows([full])["table3_speedup"]["verdict"] == V.REPRODUCED
    capped = _vq_record("stop reason: max_epochs")
    for s, v in enumerate([2.1, 1.9, 2.4]):
        capped.add("maskgit_speedup_vs_base", v, "x", subject="eq", seed=s, notes="")
    assert _rows([capped])["table3_speedup"]["verdict"] == V.NOT_TESTABLE


def test_per_record_verdicts_see_the_cap_rule_so_the_report_agrees_with_results_csv(tmp_path):
    gen = _gen_record("table2", {"base": [60.0, 62.0, 61.0], "plain": [58.0, 59.5, 59.0],
                                 "eq": [50.0, 51.0, 52.5]})
    capped = R.RunRecord("base_ae", "t", "cpu")
    capped.add("plateau_reached", 0.0, "bool", subject="base")
    runs = tmp_path / "runs"
    gen.save(runs)
    capped.save(runs)
    assert C.record_verdict(gen, R.load_records("cpu", runs))[0] == V.NOT_TESTABLE
    assert C.record_verdict(gen)[0] == V.REPRODUCED  # (what a caller without the other records would say)
    # a stale saved copy of the record itself (here: the opposite result) never overrides the one being judged
    stale = _gen_record("table2", {"base": [50.0, 51.0, 52.5], "plain": [50.0, 51.0, 52.5], "eq": [60.0, 62.0, 61.0]})
    assert C.record_verdict(gen, [stale])[0] == V.REPRODUCED
    gen.set_verdict(*C.record_verdict(gen))  # a notebook that judged before base_ae existed: "reproduced"...
    gen.save(runs)
    folder = tmp_path / "fig"
    R.write_report("cpu", folder, root=runs)
    rows = {r["claim"]: r for r in R.read_results_csv(folder / "results.csv")}
    assert rows["table2_gFID"]["verdict"] == V.NOT_TESTABLE
    report = (folder / "report.md").read_text()
    section = report.split("## table2:")[1].split("\n## ")[0]
    assert "Verdict: **not testable at this scale**" in section and "Verdict: **reproduced**" not in section
    # ...report.md's line reads results.csv's rows (above); the record keeps its notebook's verdict
    assert R.load_record(runs / "cpu" / "records" / "table2.json").verdict == V.REPRODUCED
    # given the run's rows, the summary reads them instead of re-evaluating the record alone
    full = C.evaluate(R.load_records("cpu", runs))
    assert C.record_verdict(gen, rows=full)[0] == V.NOT_TESTABLE
    R.save_records_beside_figures(R.load_records("cpu", runs), folder)
    assert R.load_record(folder / "records" / "table2.json").verdict == V.NOT_TESTABLE


def test_primaries_voided_by_the_cap_rule_or_identical_replicates_take_no_rank_in_the_holm_family():
    t1 = R.RunRecord("table1", "t", "cpu")
    t1.add("delta_R", 1.05, subject="base")
    for s, eq in enumerate([0.25, 0.40, 0.31]):
        t1.add("delta_R", eq, subject="eq", seed=s)
    gen = _gen_record("table2", {"plain": [58.0, 59.0, 60.0], "eq": [50.0, 51.01, 52.0]})  # p far below delta_R's
    capped = R.RunRecord("base_ae", "t", "cpu")
    capped.add("plateau_reached", 0.0, "bool", subject="base")
    assert _rows([t1, gen])["table1_delta_R"]["alpha"] == pytest.approx(0.05 / 5)  # gFID took the first rank
    rows = _rows([t1, gen, capped])
    assert rows["table6_gFID_fixed_budget"]["verdict"] == V.NOT_TESTABLE
    assert rows["table1_delta_R"]["alpha"] == pytest.approx(0.05 / 6)  # the voided gFID no longer counts as tested
    # identical replicates: no variance, no test -> nan, never p = 0
    by = {c.id: c for c in C.CLAIMS}
    assert math.isnan(C._pvalue(by["table1_delta_R"], [-0.8, -0.8, -0.8]))
    assert math.isnan(C._pvalue(by["recon_kept_rFID"], [1.02, 1.02, 1.02]))
    assert C._pvalue(by["table1_delta_R"], [-0.8, -0.75, -0.7]) < 0.01


def _id_record(data_ci):
    rec = R.RunRecord("table5_id", "t", "cpu")
    rec.add("ID_TwoNN", 12.0, subject="base", notes="95% CI [11.0, 13.0], n=2000")
    rec.add("ID_TwoNN_n500", 8.0, subject="base", notes="first 500 test images; 95% CI [7.2, 8.9], n=500")
    for s, v in enumerate([9.0, 9.5, 9.2]):
        rec.add("ID_TwoNN", v, subject="eq", seed=s)
    rec.add("ID_TwoNN_n500", 20.0, subject="data: pooled 2x2", notes="first 500 test images, pooled 2x2; 95% CI "
            "[18.0, 22.5], n=500")
    rec.add("ID_TwoNN_n500", 8.3, subject="data: pixels", notes=f"first 500 test images, pixels; 95% CI {data_ci}, "
            "n=500")
    return rec


def test_table5_id_is_not_testable_when_the_base_latent_id_lies_inside_the_datas_own():
    row = _rows([_id_record("[7.5, 9.6]")])["table5_ID"]
    assert row["verdict"] == V.NOT_TESTABLE and "no dimension to lose" in row["verdict_text"]
    assert "pixels: [7.5, 9.6]" in row["verdict_text"] and row["effect_ci_high"] < 0  # reported, not judged
    row = _rows([_id_record("[np.float64(7.5), np.float64(9.6)]")])["table5_ID"]  # a numpy repr in the notes
    assert row["verdict"] == V.NOT_TESTABLE
    # the base's latent ID above both data intervals: the claim is judged
    assert _rows([_id_record("[5.0, 7.9]")])["table5_ID"]["verdict"] == V.REPRODUCED
    assert C.data_id_reason([_id_record("[5.0, 7.9]")]) is None
    assert C.data_id_reason([_id_record("None")]) is None  # no interval: the rule cannot be checked


def test_fig5_epoch1_pairs_eq_and_plain_by_seed():
    rec = R.RunRecord("fig5", "t", "cpu")
    eq, plain, base = {0: 50.0, 1: 54.0, 2: 49.0, 3: 70.0}, {2: 52.0, 0: 53.5, 1: 55.0}, {0: 60.0, 1: 61.0, 2: 58.0}
    for s, v in eq.items():  # seed 3 exists only for EQ: it has no pair and must not count
        rec.add("gFID", v, subject="eq epoch 1", seed=s)
    for s, v in plain.items():  # added in another seed order: pairing is by seed, not by position
        rec.add("gFID", v, subject="plain epoch 1", seed=s)
    for s, v in base.items():
        rec.add("gFID", v, subject="epoch 0", seed=s)
    rows = _rows([rec])
    row = rows["fig5_epoch1"]
    d = [eq[s] - plain[s] for s in (0, 1, 2)]
    t = V.paired_t_interval(d, alpha=row["alpha"])
    assert row["n_replicates"] == 3 and row["effect"] == pytest.approx(sum(d) / 3)
    assert (row["effect_ci_low"], row["effect_ci_high"]) == pytest.approx((t.low, t.high))
    vb = rows["fig5_epoch1_vs_base"]
    assert vb["n_replicates"] == 3 and vb["effect"] == pytest.approx(sum(eq[s] - base[s] for s in (0, 1, 2)) / 3)
    assert not next(c for c in C.CLAIMS if c.id == "fig5_epoch1_vs_base").primary


def test_id_gfid_points_are_independent_autoencoders_one_per_variant_and_fine_tune_seed():
    rec = R.RunRecord("ablations", "t", "cpu")
    pts = {("rotation", 0): (40.0, 60.0), ("rotation", 1): (42.0, 63.0), ("scale", 0): (30.0, 50.0),
           ("scale", 1): (33.0, 52.0), ("none (base)", None): (50.0, 70.0)}
    for (subj, s), (idv, g) in pts.items():
        rec.add("ID", idv, subject=subj, seed=s)
        rec.add("gFID", g, subject=subj, seed=s)
    row = _rows([rec])["id_gfid_relation"]
    xs, ys = zip(*pts.values())
    v = V.correlation_verdict(list(xs), list(ys), independent=True)
    assert row["n_replicates"] == 5 and row["effect"] == pytest.approx(v.effect)  # two seeds of a variant: two points
    assert row["verdict"] == v.word
    # the base (a fixed comparator) recorded per generator seed is still ONE autoencoder: one point, its mean
    rec2 = R.RunRecord("ablations", "t", "cpu")
    for (subj, s), (idv, g) in pts.items():
        if subj != "none (base)":
            rec2.add("ID", idv, subject=subj, seed=s)
            rec2.add("gFID", g, subject=subj, seed=s)
    for s, g in enumerate([68.0, 70.0, 72.0]):
        rec2.add("ID", 50.0, subject="none (base)", seed=s)
        rec2.add("gFID", g, subject="none (base)", seed=s)
    row2 = _rows([rec2])["id_gfid_relation"]
    assert row2["n_replicates"] == 5 and row2["effect"] == pytest.approx(v.effect)
    assert "the base once" in row2["verdict_text"]


def test_report_refuses_to_rewrite_the_committed_reference_without_a_run_of_its_own(tmp_path, monkeypatch, capsys):
    # a fresh clone has no runs/<profile>/records: `report` would rebuild figures/<profile> (the committed reference)
    # with today's claim set and rewrite its verdicts, so it refuses and says how to proceed
    monkeypatch.setattr(R, "RUNS_DIR", tmp_path)
    before = (R.FIGURES_DIR / "cpu" / "results.csv").read_text()
    assert R.cli_report(["--profile", "cpu"]) == 2
    assert "--overwrite-reference" in capsys.readouterr().err
    assert (R.FIGURES_DIR / "cpu" / "results.csv").read_text() == before


def test_delta_S_on_the_trained_scales_is_exploratory_beside_the_pre_specified_primary():
    by = {c.id: c for c in C.CLAIMS}
    assert by["table1_delta_S"].metric == "delta_S" and by["table1_delta_S"].primary
    extra = by["table1_delta_S_trained"]
    assert extra.metric == "delta_S_trained" and not extra.primary and extra.paper_effect is None
    assert "not pre-specified" in extra.statement
    rec = R.RunRecord("table1", "t", "cpu")
    for s, (eq, base) in enumerate([(0.20, 0.60), (0.22, 0.64), (0.25, 0.61)]):
        rec.add("delta_S_trained", eq, subject="eq", seed=s)
        rec.add("delta_S_trained", base, subject="base", seed=s)
        rec.add("delta_S", eq + 0.9, subject="eq", seed=s)  # EQ worse over T_S (s = 0.25 below the training floor)
        rec.add("delta_S", base + 0.1, subject="base", seed=s)
    rows = _rows([rec])
    assert rows["table1_delta_S_trained"]["verdict"] == V.REPRODUCED and rows["table1_delta_S_trained"]["alpha"] == 0.05
    assert rows["table1_delta_S"]["verdict"] == V.OPPOSITE  # the primary is not replaced by the friendlier view
