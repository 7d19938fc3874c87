"""The plateau pilot (eqvae_lib.plateau_pilot, issue #15 item 1): reading the plateau rule post hoc from a run with
the rule off gives the step at which a run with the rule on stops."""

import json

import torch

from eqvae_lib import autoencoders as ae
from eqvae_lib.losses import LossConfig
from eqvae_lib.plateau_pilot import plateau_fire_step, validation_trace
from eqvae_lib.train_ae import AETrainConfig, train_autoencoder


def _trace(l1s, start=10, every=10):
    return [{"step": start + i * every, "l1": v, "mse": v * v, "psnr": 0.0} for i, v in enumerate(l1s)]


def test_fire_step_analytic():
    # after the GAN start (step 30): 1.0, 0.9, 0.8, 0.799, 0.7985. Window 2, threshold 0.01:
    # [1.0 | 0.9, 0.8] -> 0.2; [0.9 | 0.8, 0.799] -> 0.112; [0.8 | 0.799, 0.7985] -> 0.0019 < 0.01: fires there.
    # The flat values before the GAN start would fire at once if they counted.
    tr = _trace([0.5, 0.5, 0.5, 1.0, 0.9, 0.8, 0.799, 0.7985, 0.7])
    assert plateau_fire_step(tr, gan_on=30, window=2, threshold=0.01) == 80
    assert plateau_fire_step(tr, gan_on=0, window=2, threshold=0.01) == 30
    assert plateau_fire_step(tr, gan_on=30, window=2, threshold=0.001) is None


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
    assert fire > 4 + 2 * 2  # the rule needs window + 1 validations after the GAN start
