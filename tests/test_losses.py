"""The EQ-VAE objective (eqvae_lib.losses) against SPEC §1: closed forms, identity-τ equivalence, branch frequencies."""

import math

import pytest
import torch
from diffusers import VQModel

from eqvae_lib import autoencoders as ae
from eqvae_lib.losses import (EQVAELoss, LossConfig, NLayerDiscriminator, PerceptualLoss, adaptive_weight,
                              hinge_d_loss)
from eqvae_lib.transforms import IDENTITY, Transform


def _setup(**kw):
    torch.manual_seed(0)
    vae = ae.build_autoencoder("small-f4", in_channels=3, block_out_channels=(16, 16, 16))
    cfg = LossConfig(**{"perceptual": "none", "disc_ndf": 8, **kw})
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return vae, EQVAELoss(cfg, in_channels=3), x


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_identity_tau_equals_plain_loss_exactly():
    vae, loss_fn, x = _setup(perceptual="stlpips-alex")
    a, la, (ta, ra) = loss_fn.generator_loss(vae, x, 0, _g(5), branch="eq", tau=IDENTITY)
    b, lb, (tb, rb) = loss_fn.generator_loss(vae, x, 0, _g(5), branch="plain")
    assert torch.equal(a, b) and torch.equal(ra, rb) and la["d_weight"] == lb["d_weight"]
    c, _, (tc, rc) = loss_fn.generator_loss(vae, x, 0, _g(5), branch="eq", tau=Transform(k=2))
    assert not torch.equal(a, c)
    assert torch.equal(tc, torch.rot90(x, 2, (-2, -1)))  # target = τ∘x


def test_eq_branch_decodes_the_transformed_sample():
    vae, loss_fn, x = _setup(disc_weight=0.0)
    tau = Transform(k=1, sx=0.5, sy=0.5)
    _, logs, (target, recon) = loss_fn.generator_loss(vae, x, 0, _g(2), branch="eq", tau=tau)
    post = ae.encode_posterior(vae, x)
    z = post.sample(generator=_g(2))  # the generator's first draw is the posterior noise
    assert torch.allclose(recon, ae.decode(vae, tau.apply(z)), atol=1e-6)
    assert target.shape == (3, 3, 16, 16) and torch.equal(target, tau.apply(x))
    assert logs["tau"] == "rot90·s0.50"


def test_reconstruction_and_kl_closed_form():
    vae, loss_fn, x = _setup(disc_weight=0.0, kl_weight=0.0)
    l0, logs, (t, r) = loss_fn.generator_loss(vae, x, 0, _g(3), branch="plain")
    assert torch.allclose(l0, (x - r).abs().sum() / 3, rtol=1e-5)  # Σ over C,H,W, mean over batch
    loss_fn.cfg.kl_weight = 1.0
    l1, _, _ = loss_fn.generator_loss(vae, x, 0, _g(3), branch="plain")
    post = ae.encode_posterior(vae, x)
    kl = 0.5 * (post.mean ** 2 + post.var - 1 - post.logvar).sum() / 3
    assert torch.allclose(l1 - l0, kl, rtol=1e-4)


def test_perceptual_term_is_broadcast_over_pixels():
    vae, loss_fn, x = _setup(perceptual="stlpips-alex", disc_weight=0.0, kl_weight=0.0)
    y = x.flip(-1)
    nll, parts = loss_fn.reconstruction_loss(x, y)
    p = loss_fn.perceptual(x, y)
    assert torch.allclose(nll, ((x - y).abs().sum() + p.sum() * 3 * 32 * 32) / 3, rtol=1e-5)
    assert torch.allclose(loss_fn.perceptual(x, x), torch.zeros(3), atol=1e-6) and (p > 0).all()


def test_adaptive_weight_matches_formula_and_gan_enters_loss():
    vae, loss_fn, x = _setup(disc_weight=0.5, kl_weight=0.0)
    loss, logs, (t, r) = loss_fn.generator_loss(vae, x, 0, _g(4), branch="plain")
    # recompute by hand
    post = ae.encode_posterior(vae, x)
    rec = ae.decode(vae, post.sample(generator=_g(4)))
    nll = (x - rec).abs().sum() / 3
    g_loss = -loss_fn.discriminator(rec).mean()
    last = ae.last_layer(vae)
    gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
    w = 0.5 * torch.clamp(gn / (gg + 1e-4), 0, 1e4)
    assert math.isclose(logs["d_weight"], float(w), rel_tol=1e-4)
    assert math.isclose(float(loss), float((nll + w * g_loss).detach()), rel_tol=1e-5)
    assert torch.allclose(adaptive_weight(nll, g_loss, last, 0.5), w)
    # before disc_start the GAN is off
    loss_fn.cfg.disc_start = 10
    off, logs_off, _ = loss_fn.generator_loss(vae, x, 9, _g(4), branch="plain")
    assert logs_off["g_loss"] == 0.0 and torch.allclose(off, nll, rtol=1e-5)
    d, dl = loss_fn.discriminator_loss(t, r, 9)
    assert float(d) == 0.0 and not d.requires_grad


def test_hinge_discriminator_loss():
    assert float(hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-3.0, 1.0]))) == pytest.approx(
        0.5 * ((0 + 1) / 2 + (0 + 2) / 2))
    vae, loss_fn, x = _setup()
    _, _, pair = loss_fn.generator_loss(vae, x, 0, _g(0), branch="plain")
    d, logs = loss_fn.discriminator_loss(*pair, 0)
    assert d.requires_grad and logs["logits_real"] is not None


def test_branch_frequencies_match_p_alpha_and_p_prior_s():
    n = 20000
    for p_alpha, p_s in [(0.5, 0.25), (0.3, 0.5)]:
        loss_fn = EQVAELoss(LossConfig(perceptual="none", p_alpha=p_alpha, p_prior_s=p_s, disc_ndf=8))
        g = _g(11)
        counts = {"eq": 0, "plain": 0, "lowres": 0}
        for _ in range(n):
            counts[loss_fn.sample_branch(g)] += 1
        expect = {"eq": 1 - p_alpha, "lowres": p_alpha * p_s, "plain": p_alpha * (1 - p_s)}
        for b, p in expect.items():
            sigma = math.sqrt(p * (1 - p) / n)
            assert abs(counts[b] / n - p) < 4.5 * sigma, (b, counts)
    plain = EQVAELoss(LossConfig(objective="plain", perceptual="none", disc_ndf=8))
    assert {plain.sample_branch(_g(i)) for i in range(50)} == {"plain"}  # Table 6 control: Eq. 1 only


def test_lowres_branch_reconstructs_the_downscaled_image():
    vae, loss_fn, x = _setup()
    _, logs, (t, r) = loss_fn.generator_loss(vae, x, 0, _g(0), branch="lowres", lowres_scale=0.25)
    assert t.shape == r.shape == (3, 3, 8, 8)  # 8 px: below the PatchGAN's 24 px -> up-sampled for D only
    assert torch.allclose(t, Transform(sx=0.25, sy=0.25).apply(x))


def test_small_inputs_are_upsampled_for_perceptual_and_discriminator():
    p = PerceptualLoss("stlpips-alex")
    a, b = torch.rand(2, 1, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8) * 2 - 1
    assert p(a, b).shape == (2,)
    d = NLayerDiscriminator(3, ndf=8, n_layers=3)
    assert d.min_side == 24 and d(torch.zeros(1, 3, 8, 8)).shape == (1, 1, 1, 1)
    assert d(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 2, 2)


def test_lpips_vgg_fails_clearly_offline_or_measures_a_distance():
    try:
        p = PerceptualLoss("lpips-vgg")
    except RuntimeError as e:  # offline: the message names the offline alternatives
        assert "stlpips" in str(e) and "lpips-vgg" in str(e)
        return
    # weights available: a per-image distance, 0 for identical images and positive for different ones
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        same, diff = p(a, a), p(a, b)
    assert same.shape == diff.shape == (2,)
    assert torch.allclose(same, torch.zeros(2), atol=1e-6) and bool((diff > 1e-3).all())


def test_explicit_variant_adds_lambda_times_latent_mse():
    vae, loss_fn, x = _setup(objective="explicit", explicit_lambda=0.0, disc_weight=0.0)
    a, la, _ = loss_fn.generator_loss(vae, x, 0, _g(7))
    loss_fn.cfg.explicit_lambda = 100.0  # large enough for float32 differences of a ~2000 loss
    b, lb, _ = loss_fn.generator_loss(vae, x, 0, _g(7))
    assert la["branch"] == "plain" and lb["explicit"] > 0
    assert math.isclose(float(b - a), 100.0 * lb["explicit"], rel_tol=1e-3)
    # stop-grad on E(τ∘x) changes the encoder gradient of the explicit term
    grads = []
    for sg in (False, True):
        vae.zero_grad()
        loss_fn.cfg.explicit_stopgrad = sg
        loss_fn.cfg.explicit_lambda = 1e6
        loss, _, _ = loss_fn.generator_loss(vae, x, 0, _g(7))
        loss.backward()
        grads.append(vae.encoder.conv_in.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_vq_model_uses_vq_loss_instead_of_kl():
    torch.manual_seed(0)
    vq = VQModel(in_channels=3, out_channels=3, block_out_channels=(16, 16, 16),
                 down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                 latent_channels=4, num_vq_embeddings=32, norm_num_groups=16, layers_per_block=1)
    loss_fn = EQVAELoss(LossConfig(perceptual="none", disc_ndf=8), in_channels=3)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loss, logs, (t, r) = loss_fn.generator_loss(vq, x, 0, _g(0), branch="eq", tau=Transform(k=1, sx=0.5, sy=0.5))
    loss.backward()
    assert math.isfinite(float(loss)) and logs["reg"] > 0 and r.shape == (2, 3, 16, 16)
    assert vq.encoder.conv_in.weight.grad is not None  # straight-through: the encoder is trained


def test_config_errors():
    with pytest.raises(ValueError, match="p_alpha"):
        LossConfig(p_alpha=1.5)
    with pytest.raises(ValueError, match="'lpips'"):
        LossConfig(perceptual="lpips")
    with pytest.raises(ValueError, match="'implicit'"):
        LossConfig(objective="implicit")
    vae, loss_fn, _ = _setup()
    with pytest.raises(ValueError, match="square"):
        loss_fn.generator_loss(vae, torch.zeros(1, 3, 32, 16))


def test_plain_objective_never_reads_the_equivariance_knobs():
    # what pipeline.UNUSED_LOSS_FIELDS relies on: the plain objective gives the same loss whatever these fields are
    vae, default, x = _setup(objective="plain")
    other = EQVAELoss(LossConfig(objective="plain", perceptual="none", disc_ndf=8, p_alpha=0.1, p_prior_s=0.9, family="scale", scale_grid="continuous",
                                 min_scale=0.5, min_latent_side=3, explicit_lambda=3.0,
                                 explicit_stopgrad=True), in_channels=x.shape[1])
    other.discriminator.load_state_dict(default.discriminator.state_dict())
    for step in range(3):
        a, _, (ta, ra) = default.generator_loss(vae, x, step, _g(step))
        b, _, (tb, rb) = other.generator_loss(vae, x, step, _g(step))
        assert torch.equal(a, b) and torch.equal(ra, rb) and torch.equal(ta, x)
