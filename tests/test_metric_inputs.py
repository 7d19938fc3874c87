"""Issue #16 kind 4: metric results state their inputs; the latent convention (raw by default) is the one under
which a global scale factor leaves Δ unchanged and a per-channel shift/scale does not."""

import pytest
import torch

from eqvae_lib import autoencoders as ae
from eqvae_lib.metrics.equivariance import decoder_equivariance, equivariance_error
from eqvae_lib.metrics.intrinsic_dim import intrinsic_dimension, latent_points
from eqvae_lib.metrics.reconstruction import reconstruction_metrics


def _vae(**cfg):
    torch.manual_seed(0)
    return ae.build_autoencoder("small-f4", block_out_channels=(16, 16, 16), norm_num_groups=8, **cfg).eval()


def _x(n=6):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_global_scale_leaves_delta_unchanged_per_channel_normalisation_changes_it():
    x = _x()
    glob = _vae(scaling_factor=0.18215)
    raw = equivariance_error(x, ae.make_encoder(glob), kinds=("rotation",))
    scaled = equivariance_error(x, ae.make_encoder(glob, space="normalised"), kinds=("rotation",))
    assert scaled["delta_R"] == pytest.approx(raw["delta_R"], rel=1e-5)
    per = _vae(scaling_factor=1.0, latents_mean=[0.3, -0.2, 0.5, 0.1], latents_std=[0.2, 0.9, 0.4, 1.7])
    a = equivariance_error(x, ae.make_encoder(per), kinds=("rotation",))
    b = equivariance_error(x, ae.make_encoder(per, space="normalised"), kinds=("rotation",))
    assert abs(a["delta_R"] - b["delta_R"]) > 0.05 * a["delta_R"]  # differs: so the record must say which
    assert a["inputs"]["latent_space"] == "raw" and b["inputs"]["latent_space"] == "normalised"
    assert not a["inputs"]["normalisation"]["applied"] and b["inputs"]["normalisation"]["applied"]
    assert b["inputs"]["normalisation"]["shift"] == pytest.approx([0.3, -0.2, 0.5, 0.1])
    assert b["inputs"]["normalisation"]["scale"] == pytest.approx([5.0, 1 / 0.9, 2.5, 1 / 1.7], rel=1e-6)
    assert a["inputs"]["posterior"] == "posterior mean" and a["inputs"]["weights_hash"] == ae.weights_hash(per)
    assert a["inputs"]["images"] == {"n": 6, "shape_chw": [1, 32, 32], "value_range": "[-1, 1]"}


def test_every_metric_records_inputs_and_reference():
    x = _x(4)
    vae = _vae()
    enc = ae.make_encoder(vae, "sample", generator=torch.Generator().manual_seed(0))
    rec = reconstruction_metrics(x, enc, lambda z: ae.decode(vae, z), lpips=False, ssim=False,
                                 inputs={"image_set": "synthetic noise"})
    assert rec["inputs"]["posterior"] == "posterior sample" and rec["inputs"]["image_set"] == "synthetic noise"
    assert rec["rfid_reference"] is None  # no extractor: no rFID, no reference claimed
    deq = decoder_equivariance(x, ae.make_encoder(vae), lambda z: ae.decode(vae, z), rotations=False)
    assert deq["inputs"]["latent_space"] == "raw" and "same N images" in deq["reference"]
    # a bare callable says nothing about its latents: recorded as unspecified, never guessed
    bare = equivariance_error(x, lambda t: ae.encode(vae, t), kinds=("rotation",))
    assert bare["inputs"]["latent_space"].startswith("unspecified")
    enc = ae.make_encoder(vae)
    idim = intrinsic_dimension(latent_points(x, enc), n_bootstrap=0, mle=False, inputs=enc.inputs)
    assert idim["inputs"]["latent_space"] == "raw" and idim["inputs"]["weights_hash"] == ae.weights_hash(vae)
    assert idim["inputs"]["points"] == {"n_given": 4, "ambient_dim": 4 * 8 * 8}
    from eqvae_lib.metrics.reconstruction import inputs_summary

    assert inputs_summary(idim).endswith(f"AE {ae.weights_hash(vae)}, 4 images")


def test_inputs_summary_line_for_records():
    from eqvae_lib.metrics.reconstruction import inputs_summary

    vae = _vae(scaling_factor=0.18215)
    e = equivariance_error(_x(3), ae.make_encoder(vae), kinds=("rotation",))
    line = inputs_summary({"equivariance": e, "other": {"no": "inputs"}})
    assert line.startswith("equivariance: raw latents (not applied: shift 0, scale 0.18215), posterior mean")
    assert ae.weights_hash(vae) in line and "3 images [1, 32, 32]" in line and "\n" not in line
