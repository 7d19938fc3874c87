"""Training loop (eqvae_lib.train_ae): resume equality, 2-process gloo, plateau rule, the kl-f8 paper path, CLI."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from eqvae_lib import autoencoders as ae
from eqvae_lib.losses import EQVAELoss, LossConfig
from eqvae_lib.cli_ae import cli_finetune
from eqvae_lib.experiment.records import earlier_runs
from eqvae_lib.train_ae import AETrainConfig, plateau_reached, train_autoencoder

REPO = Path(__file__).resolve().parent.parent


def _tiny():
    torch.manual_seed(0)
    return ae.build_autoencoder("small-f4", block_out_channels=(16, 16, 16))


def _data(n=48, side=16):
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _cfg(**kw):
    base = dict(loss=LossConfig(perceptual="none", disc_ndf=8, min_latent_side=2), batch_size=8, max_epochs=2,
                deterministic=True, progress=False, val_every=2, val_size=8, norm_images=16)
    base.update(kw)
    return AETrainConfig(**base)


def _summary(d):
    return json.loads((Path(d) / "summary.json").read_text())


def test_resume_is_bit_identical(tmp_path):
    x = _data(32)  # 4 steps per epoch
    train_autoencoder(_tiny(), x, _cfg(), tmp_path / "full")
    # interrupted twice: mid-epoch (stop at step 3), then at step 6 (epoch 1.5), then run to the end
    train_autoencoder(_tiny(), x, _cfg(max_steps=3, checkpoint_every_steps=1), tmp_path / "cut")
    train_autoencoder(_tiny(), x, _cfg(max_epochs=1.5), tmp_path / "cut")
    train_autoencoder(_tiny(), x, _cfg(), tmp_path / "cut")
    a, b = _summary(tmp_path / "full"), _summary(tmp_path / "cut")
    assert a["steps"] == b["steps"] == 8 and a["images_seen"] == b["images_seen"] == 64
    assert a["weights_hash"] == b["weights_hash"]
    assert a["branch_counts"] == b["branch_counts"] and sum(a["branch_counts"].values()) == 8
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ca["disc"][k], cb["disc"][k]) for k in ca["disc"])  # discriminator too
    # the log was cut back at each resume: one line per step
    steps = [r["step"] for r in map(json.loads, (tmp_path / "cut" / "log.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == list(range(1, 9))
    # the log says how many interrupted runs the last one continued (the README's wall-time table reads it)
    assert earlier_runs(tmp_path / "cut" / "log.jsonl", started=0.0) == 2
    assert earlier_runs(tmp_path / "full" / "log.jsonl", started=0.0) == 0
    rec = json.loads((tmp_path / "full" / "log.jsonl").read_text().splitlines()[1])
    for key in ("loss", "branch", "tau", "d_weight", "logits_real", "logits_fake", "images_seen"):
        assert key in rec
    # the final model is saved in diffusers format with its measured normalisation
    m = ae.load_autoencoder(tmp_path / "full" / "model")
    assert ae.weights_hash(m) == a["weights_hash"] and m.config.latents_mean is not None
    assert a["latent_norm"]["measured"] and b["stop_reason"] == "max_epochs"


class _Recorder(EQVAELoss):
    """The real loss, recording (step, branch, posterior noise) of every micro-batch."""

    def __init__(self, cfg, in_channels=1):
        super().__init__(cfg, in_channels=in_channels)
        self.seen = []

    def generator_loss(self, vae, x, step=0, generator=None, **kw):
        loss, logs, pair = super().generator_loss(vae, x, step, generator, **kw)
        self.seen.append((step, logs["branch"], kw["posterior_noise"].clone()))
        return loss, logs, pair


def _crn_run(tmp_path, name, **loss_kw):
    lc = LossConfig(perceptual="none", disc_ndf=8, min_latent_side=2, **loss_kw)
    torch.manual_seed(1)  # the PatchGAN's initialisation (train_autoencoder seeds it when it builds the loss)
    rec = _Recorder(lc)
    cfg = _cfg(loss=lc, max_steps=6, max_epochs=None, val_every=0, measure_norm=False, seed=3)
    train_autoencoder(_tiny(), _data(48), cfg, tmp_path / name, loss_fn=rec)
    return rec.seen, _summary(tmp_path / name)


def test_common_random_numbers_eq_with_p_alpha_1_is_the_plain_fine_tune(tmp_path):
    # p_α = 1, no low-resolution branch: every batch takes the plain branch; the objective's own draws (branch)
    # come from their own stream, so they shift nothing: the EQ fine-tune equals the plain control bit for bit
    _, eq = _crn_run(tmp_path, "eq", objective="eq", p_alpha=1.0, p_prior_s=0.0)
    _, plain = _crn_run(tmp_path, "plain", objective="plain")
    assert eq["branch_counts"] == {"plain": 6, "lowres": 0, "eq": 0}
    assert eq["weights_hash"] == plain["weights_hash"]
    _, mixed = _crn_run(tmp_path, "mixed", objective="eq", p_alpha=0.5)
    assert mixed["weights_hash"] != plain["weights_hash"]  # the EQ branch does change the weights


def test_common_random_numbers_posterior_noise_at_p_alpha_half(tmp_path):
    eq, _ = _crn_run(tmp_path, "eq", objective="eq", p_alpha=0.5, p_prior_s=0.25)
    plain, _ = _crn_run(tmp_path, "plain", objective="plain")
    branches = [b for _, b, _ in eq]
    # the design of this test: plain-branch steps of the EQ arm that come after eq / low-resolution steps
    first_other = next(i for i, b in enumerate(branches) if b != "plain")
    shared = [i for i, b in enumerate(branches) if b == "plain" and i > first_other]
    assert shared, branches
    for i, b in enumerate(branches):
        assert eq[i][0] == plain[i][0] == i
        if b == "plain":  # both arms run the plain branch: identical posterior noise
            assert torch.equal(eq[i][2], plain[i][2]), (i, branches)
        else:  # the noise is still the same draw of (seed, step); the branch only decides how it is used
            assert torch.equal(eq[i][2], plain[i][2])
    assert not torch.equal(eq[0][2], eq[1][2])  # and it differs from step to step


def test_log_lines_are_interval_means_and_logging_does_not_change_training(tmp_path):
    x = _data(32)
    lc = LossConfig(perceptual="none", disc_ndf=8, min_latent_side=2)
    train_autoencoder(_tiny(), x, _cfg(loss=lc, max_steps=4, max_epochs=None, val_every=0, measure_norm=False),
                      tmp_path / "every")
    train_autoencoder(_tiny(), x, _cfg(loss=lc, max_steps=4, max_epochs=None, val_every=0, measure_norm=False,
                                       log_every=2), tmp_path / "two")
    assert _summary(tmp_path / "every")["weights_hash"] == _summary(tmp_path / "two")["weights_hash"]
    every = [r for r in map(json.loads, (tmp_path / "every" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    two = [r for r in map(json.loads, (tmp_path / "two" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in two] == [2, 4]
    for r, (a, b) in zip(two, [(every[0], every[1]), (every[2], every[3])]):
        for key in ("loss", "nll", "l1", "reg", "g_loss", "d_loss", "d_weight"):
            assert r[key] == pytest.approx((a[key] + b[key]) / 2, rel=1e-5, abs=1e-9), key


def test_grad_accumulation_counts_and_lr_scaling(tmp_path):
    train_autoencoder(_tiny(), _data(), _cfg(batch_size=4, grad_accum=3, max_epochs=1), tmp_path / "r")
    s = _summary(tmp_path / "r")
    assert s["effective_batch"] == 12 and s["steps"] == 4 and s["images_seen"] == 48
    assert s["lr"] == pytest.approx(4.5e-6 * 12) and sum(s["branch_counts"].values()) == 12


def test_plateau_rule(tmp_path):
    # window means: [1.0 0.99 | 0.996 0.99] -> (0.995 - 0.993) / 0.995 = 0.00201 < 0.01
    assert plateau_reached([1.0, 0.9, 0.8], 2, 0.01) == (False, None)  # needs 2 x window values
    stop, imp = plateau_reached([1.0, 0.99, 0.996, 0.99], 2, 0.01)
    assert stop and imp == pytest.approx(0.002 / 0.995)
    assert plateau_reached([1.0, 1.0, 0.5, 0.5], 2, 0.01) == (False, 0.5)
    assert plateau_reached([0.5, 0.5, 1.0, 1.0], 2, 0.01) == (True, -1.0)  # worse than the window before: stop
    with pytest.raises(ValueError, match="window"):
        plateau_reached([1.0, 0.9], 0, 0.01)
    with pytest.raises(ValueError, match="plateau_window"):  # refused before any training, not at the 1st validation
        _cfg(plateau_window=0)
    with pytest.raises(ValueError, match="val_every"):
        _cfg(plateau=True, val_every=0)
    # a huge threshold stops at the first decision point: 2 x window validations
    train_autoencoder(_tiny(), _data(), _cfg(plateau=True, plateau_window=2, plateau_threshold=10.0,
                                             max_epochs=None, max_steps=100), tmp_path / "p")
    s = _summary(tmp_path / "p")
    assert s["stop_reason"] == "plateau" and s["steps"] == 8 and len(s["val_trace"]) == 4
    assert "stop when" in s["plateau_rule"]
    # validations before the GAN starts (step 4 here) do not count: the first decision comes 2 x window = 4
    # validations later (steps 6, 8, 10, 12)
    cfg = _cfg(plateau=True, plateau_window=2, plateau_threshold=10.0, max_epochs=None, max_steps=100)
    cfg.loss.disc_start = 4
    train_autoencoder(_tiny(), _data(), cfg, tmp_path / "q")
    s = _summary(tmp_path / "q")
    assert s["stop_reason"] == "plateau" and s["steps"] == 12 and len(s["val_trace"]) == 6


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, math, os, torch
        from eqvae_lib import autoencoders as ae
        from eqvae_lib.losses import LossConfig
        from eqvae_lib.train_ae import AETrainConfig, init_distributed, train_autoencoder
        rank, world = init_distributed("cpu")  # gloo on the CPU, also on a machine with one GPU
        torch.manual_seed(0)
        vae = ae.build_autoencoder("small-f4", block_out_channels=(16, 16, 16))
        x = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        cfg = AETrainConfig(loss=LossConfig(perceptual="none", disc_ndf=8, min_latent_side=2), batch_size=8,
                            max_epochs=1, progress=False, val_every=0, norm_images=16, device="cpu")
        train_autoencoder(vae, x, cfg, {str(tmp_path / 'run')!r})
        out = {{"hash": ae.weights_hash(vae), "world": world}}
        json.dump(out, open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w"))
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    h0, h1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert h0["world"] == h1["world"] == 2 and h0["hash"] == h1["hash"]
    s = _summary(tmp_path / "run")
    assert s["world_size"] == 2 and s["steps"] == 4 and s["images_seen"] == 64
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"loss"' in l]
    assert len(losses) == 4 and all(np.isfinite(losses))
    # the saved model equals both ranks' weights (the ranks' training differed only by data and noise)
    assert ae.weights_hash(ae.load_autoencoder(tmp_path / "run" / "model")) == h0["hash"]


def test_kl_f8_paper_path_on_an_image_folder(tmp_path):
    """Random-weight SD-VAE architecture: saved, reloaded, EQ fine-tuned a few steps on 64-px images of an
    ImageFolder, exported in diffusers and LDM layout; the LDM file loads back to the same weights."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    torch.manual_seed(0)
    ae.save_autoencoder(ae.build_autoencoder("kl-f8"), tmp_path / "base")
    rc = cli_finetune(["--vae", str(tmp_path / "base"), "--data", str(tmp_path / "imgs"), "--size", "64",
                       "--batch-size", "2", "--steps", "2", "--perceptual", "none", "--disc-ndf", "16",
                       "--val-size", "2", "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    s = _summary(tmp_path / "run")
    assert s["steps"] == 2 and s["objective"] == "eq" and s["perceptual"] == "none"
    assert not s["latent_norm"]["measured"] and s["latent_norm"]["scale"] == pytest.approx([0.18215] * 4)  # SD-VAE keeps 0.18215
    tuned = ae.load_autoencoder(tmp_path / "run" / "model")
    assert ae.weights_hash(tuned) == s["weights_hash"] != ae.weights_hash(ae.load_autoencoder(tmp_path / "base"))
    assert ae.weights_hash(ae.load_autoencoder(tmp_path / "run" / "model.ckpt")) == s["weights_hash"]


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert cli_finetune(["--vae", str(tmp_path / "missing"), "--data", "fashion-mnist"]) == 2
    assert "missing" in capsys.readouterr().err
    ae.save_autoencoder(_tiny(), tmp_path / "m")
    assert cli_finetune(["--vae", str(tmp_path / "m"), "--data", "cifar"]) == 2
    assert "cifar" in capsys.readouterr().err
    # a usage error is argparse's exit code 2, returned like every other bad input (no SystemExit escapes)
    assert cli_finetune(["--vae", str(tmp_path / "m"), "--data", "fashion-mnist", "--objective", "magic"]) == 2


def test_config_needs_a_stopping_rule():
    with pytest.raises(ValueError, match="stopping rule"):
        AETrainConfig(max_epochs=None)
