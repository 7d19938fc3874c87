"""Latent equivariance error Δ (App. C.3) and decoder-side equivariance (Fig. 3) against known answers."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from eqvae_lib.metrics.equivariance import (decoder_equivariance, delta_over_scales, equivariance_error, scale_label,
                                            transformed_decodings)
from eqvae_lib.transforms import Transform


def pool_encoder(x):
    """Exactly equivariant to quarter-turns and to box (area) down-scaling by 1/2, 1/4 (f = 2)."""
    return F.avg_pool2d(x, 2)


def upsample_decoder(z):
    return F.interpolate(z, scale_factor=2, mode="nearest")


def images(n=6, size=32, c=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


def test_pooling_encoder_is_equivariant_for_rotations_and_area_scales():
    res = equivariance_error(images(), pool_encoder, scales=(0.25, 0.5), mode="area", batch_size=4)
    assert res["n"] == 6 and res["latent"] == "mean" and res["mode"] == "area"
    assert set(res["per_transform"]) == {"rot90", "rot180", "rot270", "s0.25", "s0.50"}
    for k, v in res["per_transform"].items():
        assert v < 1e-10, (k, v)
    assert res["delta_R"] < 1e-10 and res["delta_S"] < 1e-10


def test_pooling_encoder_not_equivariant_for_non_dyadic_bilinear_scale():
    # bilinear resizing by 3/4 does not commute with 2x2 average pooling: Δ_S must be clearly positive
    res = equivariance_error(images(), pool_encoder, kinds=("scale",), scales=(0.75,), mode="bilinear")
    assert res["delta_R"] is None
    assert res["delta_S"] > 1e-3


def test_random_conv_net_has_positive_delta():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 4, stride=2, padding=1)).eval()
    with torch.no_grad():
        res = equivariance_error(images(), net)
    assert res["delta_R"] > 0.05 and res["delta_S"] > 0.05


def test_delta_matches_hand_computation_for_one_rotation():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 2, 2)
    enc = lambda x: F.conv2d(x, w, stride=2)  # noqa: E731
    x = images(3)
    t = Transform(k=1)
    expect = ((t(enc(x)) - enc(t(x))).pow(2).flatten(1).sum(1) / enc(t(x)).pow(2).flatten(1).sum(1)).mean()
    res = equivariance_error(x, enc, kinds=("rotation",), latent="sample")
    assert res["latent"] == "sample"
    assert res["per_transform"]["rot90"] == pytest.approx(float(expect), rel=1e-6)


def test_incompatible_scale_raises_clear_error():
    # 32 px / f=2 → 16 cells; s = 0.3 gives 10 px → 5 cells vs latent 16·0.3 → 5 cells OK, but s = 0.35:
    # image 11 px → 5 cells, latent round(5.6) = 6 cells
    with pytest.raises(ValueError, match="shapes differ"):
        equivariance_error(images(), pool_encoder, kinds=("scale",), scales=(0.35,))


def test_decoder_side_rotation_psnr_equals_identity_psnr_for_equivariant_ae():
    x = images()
    res = decoder_equivariance(x, pool_encoder, upsample_decoder, scales=(0.5,), mode="area")
    per = res["per_transform"]
    assert set(per) == {"identity", "s0.50", "rot90", "rot180", "rot270"}
    for k in ("rot90", "rot180", "rot270"):
        assert per[k]["psnr"] == pytest.approx(per["identity"]["psnr"], abs=1e-9)
    assert res["rotation_mean"]["psnr"] == pytest.approx(per["identity"]["psnr"], abs=1e-9)
    assert res["per_scale"]["0.5"] is per["s0.50"]
    assert res["rfid_metric"] is None and per["identity"]["rfid"] is None
    # psnr of the pooled reconstruction, computed directly
    from eqvae_lib.metrics.reconstruction import psnr_per_image
    assert per["identity"]["psnr"] == pytest.approx(float(psnr_per_image(x, upsample_decoder(pool_encoder(x))).mean()))


def test_decoder_side_identity_autoencoder_gives_infinite_psnr():
    res = decoder_equivariance(images(3), lambda x: x, lambda z: z, scales=(0.5,), rotations=True)
    for k, v in res["per_transform"].items():
        assert math.isinf(v["psnr"]) and v["n_identical"] == 3, k


def test_transformed_decodings_shapes():
    x = images(2)
    d = transformed_decodings(x, pool_encoder, upsample_decoder, Transform(k=2, sx=0.5, sy=0.5))
    assert d["target"].shape == (2, 3, 16, 16)
    assert d["decode_transformed_latent"].shape == d["decode_latent_of_transformed"].shape == (2, 3, 16, 16)


def test_delta_over_scales_is_the_mean_of_the_chosen_scales():
    # pooling encoder, bilinear: 0.5 is exact (dyadic), 0.75 and 0.25 are not; per-scale values differ
    res = equivariance_error(images(), pool_encoder, kinds=("scale",), scales=(0.25, 0.5, 0.75), mode="bilinear")
    per = res["per_transform"]
    assert scale_label(0.5) == "s0.50" and per["s0.50"] < 1e-10 < per["s0.75"]
    assert delta_over_scales(res, [0.5, 0.75]) == pytest.approx((per["s0.50"] + per["s0.75"]) / 2)
    assert delta_over_scales(res, [0.25, 0.5, 0.75]) == pytest.approx(res["delta_S"])
    assert delta_over_scales(res, [0.75]) == pytest.approx(per["s0.75"])
    assert delta_over_scales(res, []) is None
    with pytest.raises(ValueError, match="not evaluated"):
        delta_over_scales(res, [0.625])
    with pytest.raises(ValueError, match="share labels"):
        delta_over_scales(res, [0.5, 0.501])
