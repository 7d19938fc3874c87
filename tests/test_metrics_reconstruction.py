"""PSNR / SSIM / LPIPS of reconstructions against closed forms and identities."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eqvae_lib.losses import PerceptualLoss
from eqvae_lib.metrics.reconstruction import (get_lpips, psnr_per_image, reconstruction_metrics, ssim_per_image,
                                              to_uint8)


def u8_to_float(u):
    return u.float() / 127.5 - 1.0


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, 0.5])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 191]  # 0 → 127.5 rounds half to even → 128; 0.5 → 191.25


def test_to_uint8_round_trip_of_uint8_values():
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(u8_to_float(u)), u)


@pytest.mark.parametrize("d", [1, 5, 20])
def test_psnr_of_known_noise_matches_closed_form(d):
    # every uint8 value shifted by ±d (random signs) → MSE = d² exactly → PSNR = 20·log10(255 / d)
    g = torch.Generator().manual_seed(d)
    base = torch.randint(30, 220, (4, 3, 16, 16), generator=g, dtype=torch.uint8)
    sign = torch.randint(0, 2, base.shape, generator=g) * 2 - 1
    noisy = (base.int() + d * sign).to(torch.uint8)
    p = psnr_per_image(u8_to_float(base), u8_to_float(noisy))
    assert p.shape == (4,)
    assert torch.allclose(p, torch.full((4,), 20 * math.log10(255 / d), dtype=torch.float64), atol=1e-9)


def test_psnr_is_per_image_then_averaged():
    a = torch.zeros(2, 1, 8, 8, dtype=torch.uint8) + 100
    b = a.clone()
    b[0] += 1  # MSE 1 → 48.13 dB
    b[1] += 10  # MSE 100 → 28.13 dB
    p = psnr_per_image(a, b)
    assert p.tolist() == pytest.approx([20 * math.log10(255), 20 * math.log10(25.5)])


def test_identical_images_give_inf_psnr_ssim_one_lpips_zero():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.isinf(psnr_per_image(x, x)).all()
    assert np.allclose(ssim_per_image(x, x), 1.0)
    assert torch.allclose(get_lpips()(x, x), torch.zeros(3), atol=1e-7)


def test_ssim_and_lpips_decrease_with_noise():
    g = torch.Generator().manual_seed(0)
    x = F.avg_pool2d(torch.rand(2, 3, 64, 64, generator=g), 4, stride=2, padding=1) * 2 - 1  # smooth images
    n = torch.randn(x.shape, generator=g)
    s = [ssim_per_image(x, (x + a * n).clamp(-1, 1)).mean() for a in (0.05, 0.2)]
    lp = [float(get_lpips()(x, (x + a * n).clamp(-1, 1)).mean()) for a in (0.05, 0.2)]
    assert 1 > s[0] > s[1]
    assert 0 < lp[0] < lp[1]


def test_lpips_small_grayscale_inputs_are_handled():
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    v = get_lpips()(x, -x)
    assert v.shape == (2,) and (v > 0).all()


def test_reconstruction_metrics_identity_autoencoder():
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    res = reconstruction_metrics(x, lambda a: a, lambda z: z, latent="mean", batch_size=2, return_per_image=True)
    assert res["n"] == 5 and res["latent"] == "mean"
    assert math.isinf(res["psnr"]) and res["n_identical"] == 5
    assert res["ssim"] == pytest.approx(1.0)
    assert res["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert "AlexNet" in res["lpips_net"] and "data_range=255" in res["ssim_impl"]
    assert res["rfid"] is None and len(res["per_image"]["psnr"]) == 5


def test_reconstruction_metrics_known_offset():
    # decoder adds exactly 4 uint8 levels to every pixel → PSNR = 20·log10(255/4) for every image
    u = torch.randint(10, 200, (4, 3, 16, 16), dtype=torch.uint8)
    res = reconstruction_metrics(u8_to_float(u), lambda a: a, lambda z: z + 4 / 127.5, lpips=False, ssim=False)
    assert res["psnr"] == pytest.approx(20 * math.log10(255 / 4), abs=1e-6)
    assert res["n_identical"] == 0 and res["ssim"] is None and res["lpips"] is None


def test_dataset_input_and_shape_mismatch():
    from torch.utils.data import TensorDataset

    x = torch.rand(3, 1, 16, 16) * 2 - 1
    ds = TensorDataset(x, torch.zeros(3))
    res = reconstruction_metrics(ds, lambda a: a, lambda z: z, lpips=False)
    assert res["n"] == 3
    with pytest.raises(ValueError, match="reconstruction shape"):
        reconstruction_metrics(x, lambda a: a, lambda z: z[..., :8, :8], lpips=False)


def _stlpips_by_hand(net: str, x: torch.Tensor, y: torch.Tensor, min_side: int) -> torch.Tensor:
    """ST-LPIPS straight from stlpips-pytorch with the kit's preprocessing (gray → RGB, bilinear up-sampling of
    sides below ``min_side``): the reference the one wrapper must reproduce."""
    from stlpips_pytorch import stlpips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False).eval()
    if x.shape[1] == 1:
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if min(h, w) < min_side:
        size = (max(min_side, round(h * min_side / min(h, w))), max(min_side, round(w * min_side / min(h, w))))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        return model(x, y).flatten()


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 40, 36)])
def test_the_one_lpips_wrapper_equals_stlpips_and_the_loss_network(shape):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(shape, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(shape, generator=g)).clamp(-1, 1)
    metric = get_lpips("alex")(x, y)
    # the metric (AlexNet trunk, up-sampled to 32 px as before the merge) = stlpips-pytorch on the same inputs
    assert torch.allclose(metric, _stlpips_by_hand("alex", x, y, 32), rtol=1e-5, atol=1e-7)
    assert (metric > 0).all()
    # ... = the loss's perceptual distance (one network, one preprocessing), which keeps its gradient to the inputs
    loss_net = PerceptualLoss("stlpips-alex")
    xg = x.clone().requires_grad_(True)
    d = loss_net(xg, y)
    assert torch.allclose(metric, d.detach(), rtol=1e-6, atol=1e-8)
    d.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert get_lpips("alex").perceptual.name == "stlpips-alex"
