"""The projection of notebook wall times: the count model on a synthetic profile whose counts are worked out by hand,
the arithmetic of counts / rates with a cap, the stored throughput's freshness rule, and the CLI's bad-input exit."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from eqvae_lib.experiment import projection as pr
from eqvae_lib.__main__ import main as cli_main
from eqvae_lib.experiment.config import build_config

# A synthetic profile small enough to count by hand (every number below is derived in the comments of the tests).
# small-f4 on 32 px: latent side 8. Equivariance scales: eval_scales {0.5, 0.75} ∪ the paper's T_S {0.25, 0.5, 0.75}
# ∪ the trained scales m / 8 for m = max(ceil(8 · 0.25), min_latent_side 4) .. 7 = {0.5, 0.625, 0.75, 0.875}
# = 5 scales, E = 5 + 3 rotations = 8 transforms: (E + 1) x eval_n = 90 encodes per AE. Decoder equivariance:
# T = identity + 2 eval_scales + 3 rotations = 6 transforms: 10 encodes, 60 decodes, 120 features per AE.
SYNTH = dict(
    dataset="fashion-mnist", image_size=32, ae_arch="small-f4", n_train=1000, n_test=500, val_size=20, seed=0,
    replicate_seeds=[0, 1],
    pretrain_batch=10, pretrain_max_epochs=2, pretrain_max_steps=150, pretrain_disc_start=50, pretrain_val_every=40,
    finetune_subset=100, finetune_epochs=2, finetune_batch=10,
    family="rotation+scale", min_latent_side=4,
    ablations=["rotation+scale (default)", "rotation"], ablation_epochs=1, ablation_gfid=False,
    matched_rfid_max_extra_epochs=0,
    eval_n=10, eval_scales=[0.5, 0.75], id_n=30, id_sizes=[40, 20], fid_extractor="classifier",
    classifier_n_train=200, classifier_epochs=2, inception_n=0,
    gen_methods=["sit", "dit"], gen_steps=30, gen_batch=8, gen_eval_steps=[10, 30], gen_fid_n=16,
    gen_fid_n_final=24, fid_spread_draws=3, fig5_epochs=[1],
    pilot_candidates=[{"dataset": "fashion-mnist", "image_size": 32, "arch": "small-f4"},
                      {"dataset": "fashion-mnist", "image_size": 64, "arch": "small-f4"}],
    pilot_steps=5, pilot_batch=4,
    vq_pretrain_max_steps=None, vq_pretrain_max_epochs=None, vq_finetune_epochs=3, maskgit_batch=50,
    maskgit_epochs=2, maskgit_eval_epochs=[1, 2],
)


def totals(model: pr.CountModel) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for w in model.work:
        out[(w.notebook, w.stage)] = out.get((w.notebook, w.stage), 0.0) + w.count
    return out


def test_count_model_on_a_synthetic_profile():
    m = pr.work_table(pr.knobs_of(build_config(SYNTH)))
    t = totals(m)
    # 00: (5 steps + 3 warm-up) x batch 4 = 32 images at 32 px; the 64 px candidate costs 4x the pixels: 128
    assert t[("00_design_pilot", "ae_finetune_eq")] == 32 + 128
    # 01: caps 2 epochs x floor(1000 / 10) = 200 steps and 150 steps: 150 steps, 50 before disc_start, 100 with the
    # GAN, batch 10; validations at steps 40, 80, 120 and at the end = 4 x 20 images (encode + decode)
    assert t[("01_data_and_base_ae", "ae_pretrain")] == 500
    assert t[("01_data_and_base_ae", "ae_pretrain_gan")] == 1000
    assert t[("01_data_and_base_ae", "encode")] == t[("01_data_and_base_ae", "decode")] == 80
    assert all(w.at_most for w in m.work if w.notebook == "01_data_and_base_ae")
    assert not m.caps
    # 02: per arm and replicate seed 2 epochs x floor(100 / 10) = 20 steps x 10 images; 2 seeds; one validation
    # (20 images) per epoch: 2 seeds x 2 arms x 2 epochs x 20
    assert t[("02_finetune", "ae_finetune_plain")] == t[("02_finetune", "ae_finetune_eq")] == 2 * 200
    assert t[("02_finetune", "encode")] == t[("02_finetune", "decode")] == 2 * 2 * 2 * 20
    # 03: classifier 2 epochs x 0.9 x 200 = 360; decoder part of 5 AEs (the base once + plain / EQ per seed)
    assert t[("03_equivariance_failure", "classifier_train")] == 360
    assert t[("03_equivariance_failure", "encode")] == 5 * 10
    assert t[("03_equivariance_failure", "decode")] == 5 * 60
    assert t[("03_equivariance_failure", "features")] == 5 * 120
    # 04: per AE equivariance 90 encodes, reconstruction 10 encodes + 10 decodes + 20 features
    assert t[("04_table1_reconstruction", "encode")] == 5 * 100
    assert t[("04_table1_reconstruction", "decode")] == 5 * 10
    assert t[("04_table1_reconstruction", "features")] == 5 * 20
    # 05: latent statistics on eval_n images; 06: TwoNN on id_n = 30 + the paired TwoNN on max(id_sizes) = 40
    assert t[("05_latent_pca", "encode")] == 5 * 10
    assert t[("06_intrinsic_dimension", "encode")] == 5 * (30 + 40)
    # 07: per method 3 arms x 2 seeds = 6 curves of 30 steps x 8 latents; evaluations at steps 10 (16 samples) and 30
    # (the last: 24): 40 samples per curve, + the last checkpoint re-scored on gen_fid_n = 16 for the speed-up
    # (curve_fid.on_one_n): 56; the FID spread: 3 draws x 24 of the headline generator (sit); 5 latent caches of
    # 1000; reference: all 500 test images; rFID cached by 04
    assert t[("07_generative_comparison", "gen_train_sit")] == t[("07_generative_comparison", "gen_train_dit")] == 1440
    assert t[("07_generative_comparison", "gen_sample_sit")] == 6 * 56 + 72
    assert t[("07_generative_comparison", "gen_sample_dit")] == 6 * 56
    assert t[("07_generative_comparison", "features")] == 500 + 12 * 56 + 72
    assert t[("07_generative_comparison", "encode")] == 5 * 1000
    assert ("07_generative_comparison", "decode") not in t
    # 08: Fig. 5 at epoch 1 (and 0 = the base), EQ and plain x 2 seeds, the headline generator only: 4 new AEs, each
    # a latent cache, a sit curve, equivariance (90 encodes) and reconstruction (10 + 10 + 20); base / last cached
    assert t[("08_gfid_per_epoch", "gen_train_sit")] == 4 * 240
    assert t[("08_gfid_per_epoch", "gen_sample_sit")] == 4 * 40
    assert t[("08_gfid_per_epoch", "encode")] == 4 * (1000 + 90 + 10)
    assert t[("08_gfid_per_epoch", "decode")] == 4 * 10
    assert t[("08_gfid_per_epoch", "features")] == 4 * (40 + 20)
    assert ("08_gfid_per_epoch", "gen_train_dit") not in t
    # 09: the default variant is EQ seed 0's epoch 1 (cached by 02); "rotation": 1 epoch = 10 steps x 10 images, 1
    # validation (20), all four parts with the extractor (90 + 10 + 10 + 30 encodes, 60 + 10 decodes, 120 + 20
    # features). New parts of cached AEs: the base's ID with the extractor (30; 06 measured it without), EQ ep1's
    # decoder part (10 enc, 60 dec, 120 feat) and ID with the extractor (30); the ID-gFID points: EQ ep1's ID without
    # the extractor (30), every point's curve exists already
    assert t[("09_ablations", "ae_finetune_eq")] == 100
    assert t[("09_ablations", "encode")] == 20 + 140 + 30 + 10 + 30 + 30
    assert t[("09_ablations", "decode")] == 20 + 70 + 60
    assert t[("09_ablations", "features")] == 140 + 120
    assert not any(w.stage.startswith("gen_") for w in m.work if w.notebook == "09_ablations")
    # 10: the base VQ takes the base AE's caps (VQ caps None): 150 steps, 50 without the GAN, 4 validations of 20
    # images; plain and EQ fine-tunes 3 epochs x 10 steps x 10 images, one final validation each (20); per tokenizer
    # (3): latent equivariance (E + 1) x 10 = 90 encodes, reconstruction 10 (+ 20 features), token cache 1000
    # encodes; MaskGIT per tokenizer x seed (3 x 2 = 6 curves): 2 epochs x floor(1000 / 50) steps x 50 grids = 2000
    # grids, 2 evaluations x gen_fid_n 16 = 32 samples (+ 32 features); the FID reference was built by notebook 07
    nb = "10_discrete_vq_maskgit"
    assert (t[(nb, "vq_pretrain")], t[(nb, "vq_pretrain_gan")]) == (500, 1000)
    assert t[(nb, "vq_finetune_plain")] == t[(nb, "vq_finetune_eq")] == 300
    assert t[(nb, "vq_reconstruct")] == 80 + 2 * 20 + 3 * 10
    assert t[(nb, "vq_encode")] == 3 * (90 + 1000)
    assert t[(nb, "maskgit_train")] == 6 * 2000
    assert t[(nb, "maskgit_sample")] == 6 * 32
    assert t[(nb, "features")] == 3 * 20 + 6 * 32
    assert nb not in m.unmodelled


def test_count_model_fig5_all_epochs_ablation_gfid_matched_rfid():
    """fig5_epochs None = every epoch; three replicate seeds; DiT the headline generator; gFID per ablation; the
    matched-rFID epochs."""
    m = pr.work_table(pr.knobs_of(build_config({**SYNTH, "replicate_seeds": [0, 1, 2], "gen_methods": ["dit"],
                                                "fig5_epochs": None, "ablation_gfid": True,
                                                "matched_rfid_max_extra_epochs": 2})))
    t = totals(m)
    # 02: 3 seeds x 200 images per arm
    assert t[("02_finetune", "ae_finetune_eq")] == 3 * 200
    # 07: 3 arms x 3 seeds = 9 curves of 240 latents; matched rFID: EQ seed 0 epochs 3 and 4 (2 x 100 images, their
    # validations 2 x 20, reconstruction 10 encodes + 10 decodes each) and one more curve on epoch 4, all "at most"
    assert t[("07_generative_comparison", "gen_train_dit")] == 9 * 240 + 240
    assert t[("07_generative_comparison", "ae_finetune_eq")] == 200
    assert t[("07_generative_comparison", "decode")] == 2 * 20 + 2 * 10
    matched = [w for w in m.work if w.notebook == "07_generative_comparison" and w.stage == "ae_finetune_eq"]
    assert matched and all(w.at_most for w in matched)
    # 08: epochs 1 and 2 (epoch 2 = the last, cached by 07): EQ and plain epoch 1 x 3 seeds = 6 new curves
    assert t[("08_gfid_per_epoch", "gen_train_dit")] == 6 * 240
    # 09: gFID of each variant: base and EQ seed 0 epoch 1 cached (07, 08), "rotation" new; no ID-gFID extra points
    assert t[("09_ablations", "gen_train_dit")] == 240
    assert t[("09_ablations", "encode")] == 20 + 140 + 30 + 10 + 30 + 1000


def test_project_arithmetic_cap_and_missing_rate():
    model = pr.CountModel(
        work=[pr.Work("a", "encode", 100, "x"), pr.Work("a", "decode", 30, "y"),
              pr.Work("b", "ae_pretrain", 1000, "z", at_most=True), pr.Work("c", "gen_train_sit", 5, "w")],
        caps=[pr.Cap("b", ("ae_pretrain",), 40.0)])
    rows = {r["notebook"]: r for r in pr.project(model, {"encode": 50.0, "decode": 10.0, "ae_pretrain": 10.0},
                                                 ("a", "b", "c"))}
    assert rows["a"]["seconds"] == pytest.approx(100 / 50 + 30 / 10)
    assert not rows["a"]["at_most"]
    assert rows["b"]["seconds"] == pytest.approx(40.0)  # 100 s of steps, capped at 40 s
    assert rows["b"]["at_most"] and pr.format_minutes(rows["b"]) == "at most 0.7 min"
    assert rows["c"]["seconds"] is None and rows["c"]["missing"] == ["gen_train_sit"]
    with pytest.raises(ValueError, match="encode"):
        pr.project(model, {"encode": 0.0})


def test_stored_throughput_is_reused_only_for_the_same_config_and_when_younger_than_the_library(tmp_path):
    path = tmp_path / "throughput.json"
    P = build_config(SYNTH)
    measured = {"encode": {"rate": 12.5, "unit": "images/s"}}
    pr.save_throughput(P, measured, path)
    assert json.loads(path.read_text())["machine"]["cpus"] == os.cpu_count()
    assert pr.load_throughput(P, path) == measured
    assert pr.load_throughput(P.replace(gen_batch=16), path) is None
    old = pr.library_mtime() - 10
    os.utime(path, (old, old))
    assert pr.load_throughput(P, path) is None


@pytest.mark.parametrize("only", [("features", "classifier_train"), ("vq_reconstruct", "maskgit_train",
                                                                    "maskgit_sample")])
def test_measure_throughput_selected_stages(only):
    rates = pr.measure_throughput(build_config(SYNTH), seconds=0.0, progress=False, only=only)
    assert set(rates) == set(only)
    assert all(v["rate"] > 0 and v["steps"] >= 1 for v in rates.values())


@pytest.mark.parametrize("argv, named", [(["project", "--profile", "no_such_profile"], "no_such_profile"),
                                         (["project", "--profile", "smoke", "-p", "no_such_key", "1"], "no_such_key"),
                                         (["project", "--profile", "smoke", "--notebooks", "42_x"], "42_x")])
def test_cli_bad_input_exits_2(argv, named, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "error" in err


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_reproduce_prints_the_projection_first_and_never_fails_on_it():
    """``make reproduce`` runs the projection once, after the checks and before the first notebook; a failing
    projection (here: PY=false) prints why and the target still succeeds."""
    dry = subprocess.run(["make", "-n", "reproduce", "PROFILE=smoke", "STAMP=", "PY=echo"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert dry.count("eqvae_lib project --profile smoke --seconds 0.5") == 1
    assert "--notebooks 00_design_pilot.ipynb" in dry
    assert dry.index("eqvae_lib project") < dry.index("papermill")
    run = subprocess.run(["make", "-s", "project", "STAMP=", "PY=false"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "projection of the wall times failed (exit 1" in run.stdout
