"""Transforms of EQ-VAE (eqvae_lib.transforms): exact on images and latents, sizes consistent, families, errors."""

import math

import pytest
import torch

from eqvae_lib.transforms import (FAMILIES, IDENTITY, Transform, evaluation_transforms, sample_transform,
                                  scale_range)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 4, 8, 8), (1, 16, 6, 10)])
def test_four_quarter_turns_are_identity(shape):
    x = _x(*shape)
    y = x
    for _ in range(4):
        y = Transform(k=1).apply(y)
    assert torch.equal(y, x)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_then_4_minus_k_is_identity_on_images_and_latents(k):
    for shape in [(2, 3, 64, 64), (2, 4, 8, 8)]:
        x = _x(*shape, seed=k)
        assert torch.equal(Transform(k=4 - k).apply(Transform(k=k).apply(x)), x)
        assert not torch.equal(Transform(k=k).apply(x), x)  # a real rotation


def test_rotation_direction_counter_clockwise():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    assert Transform(k=1).apply(x).view(2, 2).tolist() == [[2.0, 4.0], [1.0, 3.0]]
    assert Transform(k=2).apply(x).view(2, 2).tolist() == [[4.0, 3.0], [2.0, 1.0]]
    assert Transform(k=1).degrees == 90


def test_identity_returns_input_unchanged():
    x = _x(2, 3, 16, 16)
    assert IDENTITY.is_identity and torch.equal(IDENTITY.apply(x), x)
    assert IDENTITY.describe() == "identity"


def test_half_scale_of_block_constant_image_is_exact():
    # bilinear, align_corners=False, no antialias: s = 0.5 samples exactly between 2x2 blocks -> block value
    small = _x(2, 3, 8, 8)
    big = small.repeat_interleave(2, -2).repeat_interleave(2, -1)
    out = Transform(sx=0.5, sy=0.5).apply(big)
    assert torch.allclose(out, small, atol=1e-6)
    const = torch.full((1, 2, 32, 32), 0.3)
    assert torch.allclose(Transform(k=3, sx=0.75, sy=0.75).apply(const), torch.full((1, 2, 24, 24), 0.3))


@pytest.mark.parametrize("grid", ["discrete", "continuous"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n,f", [(8, 4), (16, 4), (32, 8), (7, 8)])
def test_image_size_is_f_times_latent_size_for_every_sampled_tau(grid, family, n, f):
    g = torch.Generator().manual_seed(1)
    z = torch.zeros(1, 4, n, n)
    x = torch.zeros(1, 3, f * n, f * n)
    for _ in range(40):
        tau = sample_transform(n, family=family, scale_grid=grid, generator=g)
        zs, xs = tau.apply(z).shape[-2:], tau.apply(x).shape[-2:]
        assert (xs[0], xs[1]) == (f * zs[0], f * zs[1]), tau
        assert tau.out_size(n, n) == tuple(zs)


def test_family_contents():
    g = torch.Generator().manual_seed(0)
    n = 16
    lo, hi = scale_range(n, 0.25)
    assert (lo, hi) == (4, 15)
    draws = {fam: [sample_transform(n, family=fam, generator=g) for _ in range(400)] for fam in FAMILIES}
    assert {t.k for t in draws["rotation"]} == {1, 2, 3} and all(not t.scales for t in draws["rotation"])
    assert {t.k for t in draws["scale"]} == {0}
    assert {round(t.sx * n) for t in draws["scale"]} == set(range(lo, hi + 1))  # the whole discrete grid
    assert all(t.sx == t.sy for t in draws["scale"] + draws["rotation+scale"])
    assert {t.k for t in draws["rotation+scale"]} == {1, 2, 3} and all(t.sx < 1 for t in draws["rotation+scale"])
    aniso = draws["rotation+anisotropic"]
    assert any(t.sx != t.sy for t in aniso) and all(t.k in (1, 2, 3) for t in aniso)
    for t in draws["scale"] + aniso:  # scales lie on the latent grid m/n
        assert math.isclose(t.sx * n, round(t.sx * n)) and math.isclose(t.sy * n, round(t.sy * n))


def test_continuous_grid_and_floor():
    g = torch.Generator().manual_seed(0)
    ms = {round(sample_transform(8, "scale", "continuous", min_latent_side=4, generator=g).sx * 8)
          for _ in range(300)}
    assert ms == {4, 5, 6, 7}


def test_evaluation_sets():
    assert [t.k for t in evaluation_transforms("rotation")] == [1, 2, 3]
    assert [t.sx for t in evaluation_transforms("scale")] == [0.25, 0.5, 0.75]


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="quarter-turns"):
        Transform(k=4)
    with pytest.raises(ValueError, match="sx=1.5"):
        Transform(sx=1.5)
    with pytest.raises(ValueError, match="'cubic'"):
        Transform(mode="cubic")
    with pytest.raises(ValueError, match="'shear'"):
        sample_transform(8, family="shear")
    with pytest.raises(ValueError, match="'grid'"):
        sample_transform(8, scale_grid="grid")
    with pytest.raises(ValueError, match="latent side 2"):
        scale_range(2, 0.25, min_latent_side=4)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        Transform(k=1).apply(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="'scale'"):
        evaluation_transforms("shear")
