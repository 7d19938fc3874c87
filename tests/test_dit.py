"""DiT model and Gaussian diffusion: closed forms, oracle samplers, parameter counts, overfitting, determinism."""

import math

import numpy as np
import pytest
import torch

from eqvae_lib.dit import (DIT_CONFIGS, DiT, GaussianDiffusion, count_params, create_diffusion, dit_model,
                           linear_betas, sample_dit, space_timesteps)

torch.set_num_threads(1)


def _ref_alphas_cumprod():
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # DDPM's schedule, written out independently
    return betas, np.cumprod(1 - betas)


def test_schedule_is_ddpm_linear():
    betas, acp = _ref_alphas_cumprod()
    d = create_diffusion("")
    np.testing.assert_allclose(d.betas, betas, rtol=0, atol=1e-15)
    np.testing.assert_allclose(d.alphas_cumprod, acp, rtol=1e-12)
    assert d.num_timesteps == 1000


def test_q_sample_matches_closed_form():
    _, acp = _ref_alphas_cumprod()
    d = create_diffusion("")
    x0 = torch.linspace(-2, 2, 8).view(8, 1, 1, 1).expand(8, 2, 3, 3).contiguous()
    t = torch.tensor([0, 10, 100, 250, 500, 750, 900, 999])
    mean, var, logvar = d.q_mean_variance(x0, t)
    a = torch.tensor(acp[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(mean, a.sqrt() * x0)
    torch.testing.assert_close(var, (1 - a).expand_as(var))
    want_log = torch.tensor(np.log(1 - acp[t.numpy()]), dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(logvar, want_log.expand_as(var))
    # empirical moments of q_sample over many noise draws
    g = torch.Generator().manual_seed(0)
    x0b = torch.full((20000, 1, 1, 1), 1.5)
    tb = torch.full((20000,), 300)
    xt = d.q_sample(x0b, tb, torch.randn(x0b.shape, generator=g))
    assert abs(xt.mean().item() - math.sqrt(acp[300]) * 1.5) < 0.02
    assert abs(xt.var().item() - (1 - acp[300])) < 0.02


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1}|x_t, x_0) from conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0 (independent derivation)."""
    betas, acp = _ref_alphas_cumprod()
    d = create_diffusion("")
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(6, 2, 2, 2, generator=g), torch.randn(6, 2, 2, 2, generator=g)
    t = torch.tensor([1, 5, 50, 400, 800, 999])
    mean, var, _ = d.q_posterior_mean_variance(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        a_prev, a_t, alpha = acp[ti - 1], acp[ti], 1 - betas[ti]
        m1, v1 = math.sqrt(a_prev) * x0[i].double(), 1 - a_prev  # x_{t-1} | x_0
        m2, v2 = math.sqrt(a_t) * x0[i].double(), 1 - a_t  # x_t | x_0
        cov = math.sqrt(alpha) * v1  # Cov(x_{t-1}, x_t | x_0)
        want_mean = m1 + cov / v2 * (xt[i].double() - m2)
        want_var = v1 - cov ** 2 / v2
        torch.testing.assert_close(mean[i].double(), want_mean, rtol=1e-5, atol=1e-5)
        assert abs(var[i].flatten()[0].item() - want_var) < 1e-6 * max(want_var, 1e-4) + 1e-9
    # DDPM's printed formula (Ho et al. Eq. 7) for the mean coefficients
    ti = 123
    c1 = math.sqrt(acp[ti - 1]) * betas[ti] / (1 - acp[ti])
    c2 = math.sqrt(1 - betas[ti]) * (1 - acp[ti - 1]) / (1 - acp[ti])
    assert abs(d.posterior_mean_coef1[ti] - c1) < 1e-12 and abs(d.posterior_mean_coef2[ti] - c2) < 1e-12


def test_respacing_keeps_alphas_cumprod():
    _, acp = _ref_alphas_cumprod()
    use = space_timesteps(1000, "250")
    assert len(use) == 250 and use[0] == 0 and use[-1] == 999
    d = create_diffusion("250")
    np.testing.assert_allclose(d.alphas_cumprod, acp[use], rtol=1e-10)
    assert list(d.timestep_map) == use
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))


def test_learned_range_variance_endpoints():
    d = create_diffusion("", learn_sigma=True)
    x = torch.randn(3, 2, 2, 2)
    t = torch.tensor([5, 100, 900])
    for v, arr in ((-1.0, d.posterior_log_variance_clipped), (1.0, np.log(d.betas))):
        out = d.p_mean_variance(torch.cat([torch.zeros_like(x), torch.full_like(x, v)], 1), x, t)
        want = torch.tensor(arr[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1).expand_as(x)
        torch.testing.assert_close(out["log_variance"], want)


def test_oracle_eps_gives_zero_mse_and_finite_vb():
    d = create_diffusion("", learn_sigma=True)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    t = torch.tensor([0, 1, 500, 999])

    def oracle(x, tt):
        return torch.cat([noise, torch.zeros_like(noise)], 1)

    terms = d.training_losses(oracle, x0, t, noise)
    assert terms["mse"].abs().max() < 1e-10
    assert torch.isfinite(terms["vb"]).all() and (terms["vb"][1:] >= -1e-6).all()


class _Oracle(torch.nn.Module):
    """Exact ε(x_t, t) for Gaussian data N(m, s²) (x_0 = m exactly when s = 0)."""

    def __init__(self, m, s, learn_sigma):
        super().__init__()
        self.m, self.s, self.learn_sigma = m, s, learn_sigma
        self.acp = torch.tensor(_ref_alphas_cumprod()[1])

    def forward(self, x, t, y=None):
        a = self.acp[t].float().view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.m) / (a * self.s ** 2 + 1 - a)
        return torch.cat([eps, -torch.ones_like(eps)], 1) if self.learn_sigma else eps


@pytest.mark.parametrize("respacing,method", [("50", "ddpm"), ("ddim25", "ddim")])
def test_samplers_recover_a_point_mass(respacing, method):
    d = create_diffusion(respacing, learn_sigma=True)
    target = torch.tensor([0.7, -1.3]).view(1, 2, 1, 1).expand(5, 2, 3, 3)
    oracle = _Oracle(target[:1], 0.0, True)
    g = torch.Generator().manual_seed(0)
    loop = d.p_sample_loop if method == "ddpm" else d.ddim_sample_loop
    x = loop(oracle, (5, 2, 3, 3), generator=g)
    torch.testing.assert_close(x, target, atol=1e-4, rtol=0)


def test_ddpm_samples_gaussian_data_distribution():
    d = create_diffusion("250", learn_sigma=True)
    oracle = _Oracle(0.5, 0.8, True)
    x = d.p_sample_loop(oracle, (4000, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - 0.5) < 0.05
    assert abs(x.std().item() / 0.8 - 1) < 0.05
    # a broken noise scale (no noise) would collapse the spread
    y = d.ddim_sample_loop(oracle, (4000, 1, 1, 1), generator=torch.Generator().manual_seed(0), eta=1.0)
    assert abs(y.std().item() / 0.8 - 1) < 0.05


def test_published_parameter_counts():
    published = {"DiT-S/2": 33e6, "DiT-B/2": 130e6, "DiT-L/2": 458e6, "DiT-XL/2": 675e6}
    for name, n in published.items():
        with torch.device("meta"):
            m = dit_model(name, input_size=32, in_channels=4, num_classes=1000)
        assert abs(count_params(m) / n - 1) < 0.01, (name, count_params(m))


@pytest.mark.parametrize("name", ["DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2", "DiT-B/1", "DiT-T/2"])
def test_forward_shapes_every_config(name):
    with torch.device("meta"):
        m = dit_model(name, input_size=32, in_channels=4, num_classes=1000)
        out = m(torch.empty(2, 4, 32, 32), torch.tensor([3, 999]), torch.tensor([1, 2]))
        out_u = m(torch.empty(2, 4, 32, 32), torch.tensor([3, 999]), None)
    assert out.shape == out_u.shape == (2, 8, 32, 32)
    assert name in DIT_CONFIGS


def test_adaln_zero_init_and_label_checks():
    m = dit_model("DiT-M/2", input_size=8, num_classes=10)
    out = m(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 9]))
    assert out.abs().max() == 0  # adaLN-Zero: the network starts as the zero function
    with pytest.raises(ValueError, match="labels must lie"):
        m(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([10]))
    with pytest.raises(ValueError, match="DiT expects"):
        m(torch.randn(1, 3, 8, 8), torch.tensor([1]), None)
    mu = dit_model("DiT-M/2", input_size=8, num_classes=0)
    with pytest.raises(ValueError, match="unconditional"):
        mu(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([0]))


def test_small_dit_overfits_one_batch():
    torch.manual_seed(0)
    m = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=4,
            learn_sigma=False)
    d = create_diffusion("", learn_sigma=False)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 4, 8, 8, generator=g), torch.randn(8, 4, 8, 8, generator=g)
    t, y = torch.randint(0, 1000, (8,), generator=g), torch.arange(8) % 4
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    m.eval()  # no label dropout: a fixed batch
    losses = []
    for _ in range(250):
        loss = d.loss(m, x0, t, noise, {"y": y}).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 20, (losses[0], losses[-1])


def test_sampling_deterministic_and_cfg():
    torch.manual_seed(0)
    m = dit_model("DiT-M/2", input_size=4, in_channels=2, num_classes=3)
    for p in m.parameters():  # leave the zero init so outputs depend on inputs
        p.data.add_(0.05 * torch.randn_like(p))
    y = torch.tensor([0, 1, 2])
    m.eval()  # no label dropout
    for sampler in ("ddpm", "ddim"):
        a = sample_dit(m, 3, y=y, sampler=sampler, steps=10, generator=torch.Generator().manual_seed(5))
        b = sample_dit(m, 3, y=y, sampler=sampler, steps=10, generator=torch.Generator().manual_seed(5))
        c = sample_dit(m, 3, y=y, sampler=sampler, steps=10, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.allclose(a, c)
        assert torch.isfinite(a).all() and a.shape == (3, 2, 4, 4)
    # guidance: the guided eps equals u + s (c - u) computed by hand
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([10, 500, 900])
    cond, uncond = m(x, t, y), m(x, t, None)
    out = m.forward_with_cfg(x, t, y, 4.0)
    torch.testing.assert_close(out[:, :2], uncond[:, :2] + 4.0 * (cond[:, :2] - uncond[:, :2]))
    torch.testing.assert_close(out[:, 2:], cond[:, 2:])
    torch.testing.assert_close(m.forward_with_cfg(x, t, y, 1.0), cond)
    with pytest.raises(ValueError, match="needs class labels"):
        m.forward_with_cfg(x, t, None, 2.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown DiT config"):
        dit_model("DiT-Q/2")
    with pytest.raises(ValueError, match="sampler"):
        sample_dit(dit_model("DiT-M/2", input_size=4), 1, sampler="euler")
    with pytest.raises(ValueError):
        GaussianDiffusion(np.array([0.0, 0.1]))
    assert len(linear_betas(500)) == 500


def test_attention_is_sdpa_and_equals_the_softmax_formula(monkeypatch):
    from eqvae_lib.dit import Attention
    torch.manual_seed(0)
    att = Attention(32, 4)
    x = torch.randn(2, 10, 32)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: (calls.append(1), sdpa(*a, **k))[1])
    out = att(x)
    assert calls  # the fused kernel path (flash / memory-efficient on CUDA), not a hand-written softmax
    q, k, v = att.qkv(x).reshape(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)  # softmax(QKᵀ/√d) V
    ref = att.proj((w @ v).transpose(1, 2).reshape(2, 10, 32))
    assert torch.allclose(out, ref, atol=1e-5)
