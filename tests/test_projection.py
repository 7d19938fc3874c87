"""The projection of notebook wall times: the count model on a synthetic profile whose counts are worked out by hand,
the arithmetic of counts / rates with a cap, the stored throughput's freshness rule, and the CLI's bad-input exit."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from eqvae_lib import projection as pr
from eqvae_lib.__main__ import main as cli_main
from eqvae_lib.config import build_config

# A synthetic profile small enough to count by hand (every number below is derived in the comments of the test).
SYNTH = dict(
    dataset="fashion-mnist", image_size=32, n_train=1000, n_test=500, val_size=20, seed=0,
    pretrain_batch=10, pretrain_max_epochs=2, pretrain_max_minutes=60.0, pretrain_disc_start=50,
    pretrain_val_every=40,
    finetune_subset=100, finetune_epochs=2, finetune_batch=10,
    ablations=["rotation+scale (default)", "rotation"], ablation_epochs=1, ablation_gfid=False,
    matched_rfid_max_extra_epochs=0,
    eval_n=10, eval_scales=[0.5, 0.75], id_n=30, fid_extractor="classifier", classifier_n_train=200,
    classifier_epochs=2, inception_n=0,
    gen_seeds=[0, 1], sit=False, gen_steps=30, gen_batch=8, gen_eval_steps=[10, 30], gen_fid_n=16,
    pilot_candidates=[{"dataset": "fashion-mnist", "image_size": 32, "arch": "small-f4"},
                      {"dataset": "fashion-mnist", "image_size": 64, "arch": "small-f4"}],
    pilot_steps=5, pilot_batch=4,
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
    # 01: 2 epochs x floor(1000 / 10) = 200 steps: 50 before disc_start, 150 with the GAN, batch 10;
    # validations at steps 40, 80, ..., 200 = 5 x 20 images (encode + decode)
    assert t[("01_data_and_base_ae", "ae_pretrain")] == 500
    assert t[("01_data_and_base_ae", "ae_pretrain_gan")] == 1500
    assert t[("01_data_and_base_ae", "encode")] == t[("01_data_and_base_ae", "decode")] == 100
    assert all(w.at_most for w in m.work if w.notebook == "01_data_and_base_ae")
    assert [c.seconds for c in m.caps if c.notebook == "01_data_and_base_ae"] == [3600.0]
    # 02: per arm 2 epochs x floor(100 / 10) = 20 steps x 10 images; one validation (20 images) per epoch
    assert t[("02_finetune", "ae_finetune_plain")] == t[("02_finetune", "ae_finetune_eq")] == 200
    assert t[("02_finetune", "encode")] == 2 * 2 * 20
    # 03: classifier 2 epochs x 0.9 x 200 = 360; decoder part per AE (3 AEs, T = 2 scales + 3 rotations = 5):
    # 10 encodes, 50 decodes, 100 features
    assert t[("03_equivariance_failure", "classifier_train")] == 360
    assert t[("03_equivariance_failure", "encode")] == 3 * 10
    assert t[("03_equivariance_failure", "decode")] == 3 * 50
    assert t[("03_equivariance_failure", "features")] == 3 * 100
    # 04: per AE equivariance (T + 1) x 10 = 60 encodes, reconstruction 10 encodes + 10 decodes + 20 features
    assert t[("04_table1_reconstruction", "encode")] == 3 * 70
    assert t[("04_table1_reconstruction", "decode")] == 3 * 10
    assert t[("04_table1_reconstruction", "features")] == 3 * 20
    assert t[("05_latent_pca", "encode")] == 3 * 10
    assert t[("06_intrinsic_dimension", "encode")] == 3 * 30
    # 07: 3 AEs x 2 seeds = 6 curves of 30 steps x 8 latents; 2 evals x 16 samples each; 3 latent caches of 1000;
    # reference: 16 features; the reconstruction metrics are cached by 04
    assert t[("07_generative_comparison", "gen_train_dit")] == 6 * 240
    assert t[("07_generative_comparison", "gen_sample_dit")] == 6 * 32
    assert t[("07_generative_comparison", "features")] == 16 + 6 * 32
    assert t[("07_generative_comparison", "encode")] == 3 * 1000
    # 08: Fig. 5 epochs 0, 1, 2 with seed 0: base and epoch 2 were trained by 07; new: epoch 1's latent cache,
    # its curve, its equivariance (60 encodes) and reconstruction (10 encodes, 10 decodes, 20 features)
    assert t[("08_gfid_per_epoch", "gen_train_dit")] == 240
    assert t[("08_gfid_per_epoch", "encode")] == 1000 + 60 + 10
    assert t[("08_gfid_per_epoch", "features")] == 32 + 20
    # 09: the default variant is the EQ fine-tune's epoch 1 (cached); "rotation": 1 epoch = 10 steps x 10 images,
    # 1 validation, all four metric parts (60 + 10 + 10 + 30 encodes); ID of EQ epoch 1 (30); every point's curve
    # exists already
    assert t[("09_ablations", "ae_finetune_eq")] == 100
    assert t[("09_ablations", "encode")] == 20 + 60 + 10 + 10 + 30 + 30
    assert ("09_ablations", "gen_train_dit") not in t
    assert "10_discrete_vq_maskgit" in m.unmodelled


def test_count_model_adds_sit_and_seeds():
    """SiT doubles the generator lines of 07 only (08 and 09 use DiT); three seeds give 3 x 3 curves."""
    m = pr.work_table(pr.knobs_of(build_config({**SYNTH, "sit": True, "gen_seeds": [0, 1, 2]})))
    t = totals(m)
    assert t[("07_generative_comparison", "gen_train_dit")] == 9 * 240
    assert t[("07_generative_comparison", "gen_train_sit")] == 9 * 240
    assert ("08_gfid_per_epoch", "gen_train_sit") not in t


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


def test_measure_throughput_selected_stages():
    rates = pr.measure_throughput(build_config(SYNTH), seconds=0.0, progress=False,
                                  only=("features", "classifier_train"))
    assert set(rates) == {"features", "classifier_train"}
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
