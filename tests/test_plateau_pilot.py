"""The plateau pilot (eqvae_lib.experiment.plateau_pilot, issue #15 item 1): reading the plateau rule post hoc from a run with
the rule off gives the step at which a run with the rule on stops."""

import json
from pathlib import Path

import pytest
import torch

from eqvae_lib import autoencoders as ae
from eqvae_lib.losses import LossConfig
from eqvae_lib.experiment.plateau_pilot import plateau_fire_step, psnr_trend, readme_paragraph, update_readme, validation_trace
from eqvae_lib.train_ae import AETrainConfig, train_autoencoder

REPO = Path(__file__).resolve().parent.parent


def _trace(l1s, start=10, every=10):
    return [{"step": start + i * every, "l1": v, "mse": v * v, "psnr": 0.0} for i, v in enumerate(l1s)]


def test_fire_step_analytic():
    # after the GAN start (step 30): 1.0, 0.9, 0.8, 0.8, 0.79, 0.8, 0.5. Window 2 (means of 2), threshold 0.01:
    # step 70 [1.0 0.9 | 0.8 0.8] -> (0.95-0.8)/0.95 = 0.158; step 80 [0.9 0.8 | 0.8 0.79] -> 0.065;
    # step 90 [0.8 0.8 | 0.79 0.8] -> 0.00625 < 0.01: fires there. Counting the flat values before the GAN start,
    # step 40 [0.5 0.5 | 0.5 1.0] is worse (-0.5): fires at once.
    tr = _trace([0.5, 0.5, 0.5, 1.0, 0.9, 0.8, 0.8, 0.79, 0.8, 0.5])
    assert plateau_fire_step(tr, gan_on=30, window=2, threshold=0.01) == 90
    assert plateau_fire_step(tr, gan_on=0, window=2, threshold=0.01) == 40
    # threshold 0.001: step 90 gives 0.00625, step 100 [0.79 0.8 | 0.8 0.5] gives 0.18: never
    assert plateau_fire_step(tr, gan_on=30, window=2, threshold=0.001) is None


def test_the_rule_follows_the_trend_not_a_lucky_validation():
    # L1 falls 1% per validation; validation 10 is a lucky one (10% low). The former rule (best of the last 4 against
    # the ONE value 4 validations earlier) takes that value as its reference 4 validations later and fires there
    # (the trend since then, 0.99^4 = 0.961, is not 10% lower); window means see ~1.5% or more in every window.
    l1 = [0.1 * 0.99 ** i * (0.9 if i == 10 else 1.0) for i in range(30)]
    former = [i for i in range(4, 30) if (l1[i - 4] - min(l1[i - 3:i + 1])) / l1[i - 4] < 0.005]
    assert former == [14]
    assert plateau_fire_step(_trace(l1), gan_on=0, window=4, threshold=0.005) is None
    flat = [0.1 * (0.9 if i % 2 else 1.1) for i in range(40)]  # swings around a flat trend: fires at the first decision
    assert plateau_fire_step(_trace(flat), gan_on=0, window=4, threshold=0.005) == _trace(flat)[7]["step"]


def test_validation_trace_keeps_the_last_point_of_a_step(tmp_path):
    lines = [{"step": 2, "val": {"l1": 0.5, "mse": 0.3, "psnr": 11.0}}, {"step": 2, "loss": 1.0},
             {"step": 4, "val": {"l1": 0.4, "mse": 0.2, "psnr": 12.0}},
             {"step": 2, "val": {"l1": 0.45, "mse": 0.25, "psnr": 11.5}}]  # written again after a resume
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert validation_trace(tmp_path) == [{"step": 2, "l1": 0.45, "mse": 0.25, "psnr": 11.5},
                                          {"step": 4, "l1": 0.4, "mse": 0.2, "psnr": 12.0}]


def test_post_hoc_fire_step_equals_the_stop_of_a_run_with_the_rule_on(tmp_path):
    x = torch.rand(48, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kw = dict(loss=LossConfig(perceptual="none", disc_ndf=8, min_latent_side=2, disc_start=4), batch_size=8,
              deterministic=True, progress=False, val_every=2, val_size=8, norm_images=16, plateau_window=2,
              plateau_threshold=0.05, max_epochs=None)

    def tiny():
        torch.manual_seed(0)
        return ae.build_autoencoder("small-f4", block_out_channels=(16, 16, 16))

    train_autoencoder(tiny(), x, AETrainConfig(plateau=True, max_steps=60, **kw), tmp_path / "on", val=x[:8])
    train_autoencoder(tiny(), x, AETrainConfig(plateau=False, max_steps=60, **kw), tmp_path / "off", val=x[:8])
    on = json.loads((tmp_path / "on" / "summary.json").read_text())
    assert on["stop_reason"] == "plateau", "the threshold must let the rule fire within the cap for this test"
    fire = plateau_fire_step(validation_trace(tmp_path / "off"), gan_on=4, window=2, threshold=0.05)
    assert fire == on["steps"]
    assert fire >= 4 + 2 * 2 * 2  # the rule needs 2 x window validations (every 2 steps) after the GAN start


def _record(psnrs, fire=None, start=250, every=250, gan_on=1500):
    tr = [{"step": start + i * every, "l1": 0.1, "mse": 0.01, "psnr": v} for i, v in enumerate(psnrs)]
    return {"kind": "ae", "profile": "cpu", "model": {"arch": "small-f4"}, "device": "cpu", "fire_step": fire,
            "steps_run": tr[-1]["step"], "steps_per_epoch": 1000, "gan_on": gan_on, "trace": tr}


def test_psnr_trend_recovers_a_known_slope_and_swing():
    # PSNR = 20 + 0.5 dB per 1000 steps + alternating ±0.2 dB swings after step 2500; the GAN shock before is skipped
    steps = [250 * (i + 1) for i in range(24)]
    swing = [0.2 if i % 2 else -0.2 for i in range(24)]
    psnr = [5.0 if s <= 2500 else 20 + 0.5 * s / 1000 + w for s, w in zip(steps, swing)]
    r = _record(psnr)
    t = psnr_trend(r["trace"], r["gan_on"], r["steps_run"])
    assert (t["first"], t["last"], t["n"]) == (2750, 6000, 14)
    assert abs(t["slope_db_per_1000"] - 0.5) < 0.05  # alternating swings bias the slope by at most 0.4/span
    assert 0.18 < t["residual_sd_db"] < 0.23
    assert psnr_trend(r["trace"], r["gan_on"], 4000)["last"] == 4000  # up to the fire step only
    with pytest.raises(ValueError, match="too few"):
        psnr_trend(r["trace"], r["gan_on"], 3000)


def test_readme_block_is_generated_from_the_committed_pilot_records(tmp_path):
    recs = sorted((REPO / "figures" / "cpu" / "design").glob("plateau_pilot_*.json"))
    assert recs, "the committed plateau pilot records are missing"
    block = readme_paragraph([json.loads(p.read_text()) for p in recs])
    assert block in (REPO / "README.md").read_text(), ("README's plateau-pilot block differs from its records: run "
                                                       "python -m eqvae_lib plateau-pilot --from-records ...")
    fake = tmp_path / "README.md"
    fake.write_text("a\n<!-- plateau-pilot -->\nold\n<!-- /plateau-pilot -->\nb\n")
    assert update_readme(recs, fake) and not update_readme(recs, fake)
    assert fake.read_text() == f"a\n<!-- plateau-pilot -->\n{block}\n<!-- /plateau-pilot -->\nb\n"


def test_the_cpu_cap_sits_above_what_the_pilot_saw():
    # the cap is a safety net: below the pilot's fire step (or, where the rule never fired, below the pilot's last
    # step) it would stop the reference base where the pilot saw no plateau yet. Where the rule never fired this is
    # a floor, not evidence that the cap leaves room for the plateau (README: the base is expected at its cap)
    from eqvae_lib.experiment.config import load_config
    from eqvae_lib.experiment.plateau_pilot import record_fire_step

    pilot = json.loads((REPO / "figures" / "cpu" / "design" / "plateau_pilot_ae.json").read_text())
    b = load_config("cpu").base_ae
    fire = record_fire_step(pilot)
    assert b.pretrain_max_epochs is None
    assert b.pretrain_max_steps >= (2 * fire if fire is not None else pilot["steps_run"])


def test_committed_pilot_records_state_the_current_rule_answer():
    # a record written under an earlier rule must not keep that rule's answer (the plot and README recompute it)
    from eqvae_lib.experiment.plateau_pilot import record_fire_step

    for path in sorted((REPO / "figures" / "cpu" / "design").glob("plateau_pilot_*.json")):
        r = json.loads(path.read_text())
        fire = record_fire_step(r)
        assert r["fire_step"] == fire, f"{path.name}: stored fire_step is stale; re-derive it"
        assert r["fire_epoch"] == (None if fire is None else fire / r["steps_per_epoch"]), path.name
