"""SiT: linear interpolant end points and velocity, ODE samplers against exact velocity fields, model build."""

import pytest
import torch

from eqvae_lib.sit import LinearInterpolant, sample_sit, sit_model

torch.set_num_threads(1)


def test_interpolant_endpoints_and_velocity():
    it = LinearInterpolant()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    torch.testing.assert_close(it.interpolate(x0, eps, torch.zeros(3)), x0)
    torch.testing.assert_close(it.interpolate(x0, eps, torch.ones(3)), eps)
    t = torch.tensor([0.2, 0.5, 0.9])
    torch.testing.assert_close(it.interpolate(x0, eps, t), (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps)
    h = 1e-3  # finite-difference derivative of the path equals the velocity target
    fd = (it.interpolate(x0, eps, t + h) - it.interpolate(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(fd, it.velocity_target(x0, eps), atol=1e-3, rtol=1e-3)
    ts = it.sample_t(10000, torch.Generator().manual_seed(0))
    assert ts.min() >= 0 and ts.max() <= 1 and abs(ts.mean().item() - 0.5) < 0.02


def test_loss_zero_for_exact_velocity():
    it = LinearInterpolant(t_scale=1000.0)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 2, 2, 2, generator=g), torch.randn(4, 2, 2, 2, generator=g)
    seen = []

    def oracle(x, t):
        seen.append(t.clone())
        return eps - x0

    t = torch.tensor([0.1, 0.3, 0.6, 0.95])
    assert it.loss(oracle, x0, t, eps).abs().max() < 1e-12
    torch.testing.assert_close(seen[0], 1000.0 * t)  # the network sees t_scale * t


def _gaussian_velocity(m, s):
    """Exact E[ε - x_0 | x_t] for data N(m, s²) under x_t = (1 - t) x_0 + t ε."""
    def v(x, t):
        t = t.view(-1, 1, 1, 1).double()
        x = x.double()
        denom = (1 - t) ** 2 * s ** 2 + t ** 2
        e_x0 = m + (1 - t) * s ** 2 / denom * (x - (1 - t) * m)
        e_eps = t / denom * (x - (1 - t) * m)
        return (e_eps - e_x0).float()
    return v


@pytest.mark.parametrize("method,steps", [("euler", 200), ("heun", 30)])
def test_ode_samplers_transport_noise_to_gaussian_data(method, steps):
    it = LinearInterpolant()
    x = it.sample_ode(_gaussian_velocity(0.7, 0.5), (4000, 1, 1, 1), method=method, steps=steps,
                      generator=torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - 0.7) < 0.03
    assert abs(x.std().item() / 0.5 - 1) < 0.03


def test_point_mass_reached_exactly():
    target = torch.tensor([1.5, -0.5]).view(1, 2, 1, 1)

    def v(x, t):  # x_t - x* = t (ε - x*)  ->  v = (x_t - x*) / t
        return (x - target) / t.view(-1, 1, 1, 1)

    for method in ("euler", "heun"):
        x = LinearInterpolant().sample_ode(v, (6, 2, 1, 1), method=method, steps=7,
                                           generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(x, target.expand(6, 2, 1, 1), atol=1e-5, rtol=0)


def test_sit_model_and_deterministic_sampling():
    torch.manual_seed(0)
    m = sit_model("SiT-M/2", input_size=4, in_channels=3, num_classes=5)
    assert m.out_channels == 3 and not m.learn_sigma
    for p in m.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    y = torch.tensor([0, 4])
    a = sample_sit(m, 2, y=y, steps=5, generator=torch.Generator().manual_seed(1))
    b = sample_sit(m, 2, y=y, steps=5, generator=torch.Generator().manual_seed(1))
    c = sample_sit(m, 2, y=y, steps=5, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 3, 4, 4) and torch.equal(a, b) and not torch.allclose(a, c)
    u = sample_sit(m, 2, y=None, method="euler", steps=5, generator=torch.Generator().manual_seed(1))
    g = sample_sit(m, 2, y=y, cfg_scale=3.0, method="euler", steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(u).all() and torch.isfinite(g).all() and not torch.allclose(u, g)
    with pytest.raises(ValueError, match="euler"):
        sample_sit(m, 1, method="ddpm")
    with pytest.raises(ValueError, match="unknown SiT"):
        sit_model("SiT-Q/2")
