"""Latent statistics (eqvae_lib.metrics.latent): roughness on all / interior cells, posterior-noise fraction."""

import pytest
import torch

from eqvae_lib.metrics.latent import latent_roughness, posterior_noise_fraction


def _ramp_with_noisy_border(b=16, c=2, n=8, seed=0):
    """Interior: a vertical ramp z[i, j] = i (plus a per-image offset); border ring: white noise of SD 10."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(n, dtype=torch.float64).view(1, 1, n, 1).expand(b, c, n, n).clone()
    z = i + torch.randn(b, c, 1, 1, generator=g, dtype=torch.float64)
    ring = torch.ones(n, n, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    z[..., ring] = 10 * torch.randn(b, c, int(ring.sum()), generator=g, dtype=torch.float64)
    return z


def test_interior_roughness_ignores_a_border_artefact():
    z = _ramp_with_noisy_border()
    inner = z[..., 1:-1, 1:-1]
    # interior ramp: horizontal differences 0, vertical differences 1 -> (0 + 1) / 2 / Var(interior)
    expected = 0.5 / float(inner.var())
    assert latent_roughness(z, interior=True) == pytest.approx(expected, rel=1e-9)
    assert latent_roughness(z) > 5 * latent_roughness(z, interior=True)  # the noisy border dominates all cells
    # a border of 2 cells: the 4x4 core of the same ramp
    core = z[..., 2:-2, 2:-2]
    assert latent_roughness(z, interior=True, border=2) == pytest.approx(0.5 / float(core.var()), rel=1e-9)


def test_roughness_of_white_noise_and_constant():
    z = torch.randn(64, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    assert latent_roughness(z) == pytest.approx(2.0, abs=0.05)
    assert latent_roughness(z, interior=True) == pytest.approx(2.0, abs=0.05)
    assert latent_roughness(torch.ones(2, 1, 4, 4)) == 0.0
    assert latent_roughness(3 * z + 7) == pytest.approx(latent_roughness(z), rel=1e-9)  # shift/scale invariant


def test_roughness_rejects_too_small_grids():
    with pytest.raises(ValueError, match="no neighbouring cells"):
        latent_roughness(torch.randn(2, 1, 3, 3), interior=True)
    with pytest.raises(ValueError, match=r"\[B, c, h, w\]"):
        latent_roughness(torch.randn(3, 3))


def test_posterior_noise_fraction_of_a_synthetic_posterior():
    g = torch.Generator().manual_seed(0)
    n, shape = 20000, (2, 3, 3)
    # means with variance 3 per element, posterior std 1 everywhere: f = 1 / (3 + 1)
    mu = 3 ** 0.5 * torch.randn(n, *shape, generator=g, dtype=torch.float64)
    r = posterior_noise_fraction(mu, torch.ones(n, *shape, dtype=torch.float64))
    assert r["fraction"] == pytest.approx(0.25, abs=0.01)
    assert r["mean_posterior_var"] == pytest.approx(1.0) and r["mean_signal_var"] == pytest.approx(3.0, rel=0.03)
    # the fraction equals the share of posterior noise in the variance of SAMPLED latents (law of total variance)
    std = 0.5 + torch.rand(n, *shape, generator=g, dtype=torch.float64)
    z = mu + std * torch.randn(n, *shape, generator=g, dtype=torch.float64)
    f = posterior_noise_fraction(mu, std)["fraction"]
    assert f == pytest.approx(float(std.pow(2).mean(0).sum() / z.var(0).sum()), rel=0.03)
    # deterministic encoder -> 0; collapsed posterior (all means equal) -> 1
    assert posterior_noise_fraction(mu, torch.zeros_like(mu))["fraction"] == 0.0
    assert posterior_noise_fraction(torch.zeros(5, 2), torch.ones(5, 2))["fraction"] == 1.0


def test_posterior_noise_fraction_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        posterior_noise_fraction(torch.zeros(4, 2), torch.ones(4, 3))
    with pytest.raises(ValueError, match="at least 2 images"):
        posterior_noise_fraction(torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="negative"):
        posterior_noise_fraction(torch.zeros(3, 2), -torch.ones(3, 2))
