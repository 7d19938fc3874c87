"""The EQ-VAE objective (arXiv 2502.09509 v3, Eq. 1, 5, 7; Tables 5–7) on top of the LDM "LPIPS with discriminator" loss.

Everything a reader needs to check the loss against SPEC.md §1 is in this file:

Reconstruction loss of one (target, reconstruction) pair — LDM ``LPIPSWithDiscriminator``, logvar fixed at 0::

    rec(x, x̂)  = Σ_{C,H,W} ( |x − x̂| + w_p · P(x, x̂) ) / B          (P: per-image perceptual distance, broadcast to
                                                                     every pixel; sum over pixels, mean over batch)
    L_reg      = KL(q(z|x) ‖ N(0, I)), Σ over c,h,w, mean over batch  (log σ² clamped to [−30, 20]); VQ models: the
                 codebook + commitment loss of diffusers' VectorQuantizer
    L_gan      = −mean(D(x̂))                                          (generator side of the hinge GAN)
    λ_gan      = disc_weight · clamp(‖∇_last rec‖ / (‖∇_last L_gan‖ + 1e−4), 0, 1e4).detach()   (adaptive weight;
                 "last" = the decoder's final conv weight), × disc_factor once step ≥ disc_start
    L          = rec + kl_weight · L_reg + λ_gan · L_gan                 (Eq. 1 with w_p = 1, kl_weight = 1e−6)
    L_D        = disc_factor · ½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂)))  (hinge, PatchGAN D)

The decoder is fed a posterior SAMPLE ``z ~ q(z|x)`` (not the mean). Branches (one per batch, as the official code):

* ``"eq"`` (Eq. 5): ``z' = τ∘z``, ``x̂ = D(z')``, target ``τ∘x``; KL of the posterior of the UNtransformed x; the
  GAN's real sample is ``τ∘x``.
* ``"plain"`` (prior preservation, τ = identity): ``x̂ = D(E(x))`` vs ``x``.
* ``"lowres"`` (official code, undocumented in the paper): inside prior preservation, with probability ``p_prior_s``
  the image is down-scaled by s (same scale grid as τ) and reconstructed at low resolution.

Branch choice (Eq. 7), with ``p_alpha`` in the PAPER's meaning — the probability of prior preservation:
P(eq) = 1 − p_alpha, P(lowres) = p_alpha · p_prior_s, P(plain) = p_alpha · (1 − p_prior_s). At the defaults (0.5,
0.25): 50 % / 12.5 % / 37.5 %. The official code's ``p_prior`` is the probability of the *equivariance* branch (the
opposite reading; both agree at 0.5).

Objectives (``LossConfig.objective``): ``"eq"`` (Eq. 7, the method), ``"plain"`` (Eq. 1 only: no transforms, no
low-resolution branch — the Table 6 control and the pretraining loss), ``"explicit"`` (Table 7:
``L_VAE + λ ‖τ∘E(x) − E(τ∘x)‖²`` with λ = 0.1; E = posterior mean (VQ: the continuous latent), ‖·‖² = mean over
elements; optional stop-gradient on ``E(τ∘x)``).

Perceptual network (``LossConfig.perceptual``; reported in every result): ``"stlpips-alex"`` / ``"stlpips-vgg"``
(shift-tolerant LPIPS, ``stlpips_pytorch``, ships its weights — the offline default), ``"lpips-vgg"`` (the original
LPIPS of the paper; needs the ``lpips`` package and downloadable torchvision weights — fails with a clear message
otherwise), ``"none"`` (ablations).

Deviation for small images (SPEC §5): a down-scaled target can be smaller than AlexNet-LPIPS (32 px), VGG-LPIPS
(16 px) or the PatchGAN (3·2^n_layers px = 24 px) accept. For THOSE terms only, target and reconstruction are both
up-sampled (bilinear, align_corners=False) to the network's minimum side; L1 and KL are always computed at native size.
Another deviation: the discriminator step reuses the generator step's (detached) reconstruction instead of running the
autoencoder a second time as PyTorch-Lightning's LDM loop does (same expectation, half the cost).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .autoencoders import decode_with_loss, downsample_factor, encode_posterior, is_vq, last_layer
from .transforms import FAMILIES, IDENTITY, MODES, Transform, sample_transform

PERCEPTUAL_CHOICES = ("stlpips-alex", "stlpips-vgg", "lpips-vgg", "none")
OBJECTIVES = ("eq", "plain", "explicit")
BRANCHES = ("plain", "lowres", "eq")


@dataclass
class LossConfig:
    """Every knob of the autoencoder objective (defaults = the paper / official code, SPEC §1)."""

    objective: str = "eq"                # "eq" (Eq. 7), "plain" (Eq. 1; Table 6 control), "explicit" (Table 7)
    perceptual: str = "stlpips-alex"     # one of PERCEPTUAL_CHOICES
    perceptual_weight: float = 1.0
    kl_weight: float = 1e-6              # λ_reg for KL models
    vq_weight: float = 1.0               # λ_reg for VQ models (codebook + commitment loss)
    disc_weight: float = 0.5
    disc_start: int = 0                  # optimizer step from which the GAN term is on (0 when fine-tuning)
    disc_factor: float = 1.0
    disc_ndf: int = 64                   # PatchGAN width
    disc_layers: int = 3                 # PatchGAN stride-2 layers
    p_alpha: float = 0.5                 # P(prior preservation), paper's meaning
    p_prior_s: float = 0.25              # P(low-resolution | prior preservation), official code
    family: str = "rotation+scale"       # Table 5: rotation / scale / rotation+scale / rotation+anisotropic
    scale_grid: str = "discrete"         # "discrete" (official code) or "continuous" (paper text), transforms.py
    min_scale: float = 0.25
    min_latent_side: int = 1             # floor on the scaled latent side (cells); official code: 1
    interpolation: str = "bilinear"      # official code; the paper says bicubic
    explicit_lambda: float = 0.1         # Table 7
    explicit_stopgrad: bool = False      # stop-gradient on E(τ∘x) in the explicit variant

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.perceptual not in PERCEPTUAL_CHOICES:
            raise ValueError(f"perceptual must be one of {PERCEPTUAL_CHOICES}, got {self.perceptual!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.interpolation not in MODES:
            raise ValueError(f"interpolation must be one of {MODES}, got {self.interpolation!r}")
        for name in ("p_alpha", "p_prior_s"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {v}")


def _upsample_to(x: torch.Tensor, min_side: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if min(h, w) >= min_side:
        return x
    f = min_side / min(h, w)
    size = (max(min_side, int(round(h * f))), max(min_side, int(round(w * f))))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------ perceptual
class PerceptualLoss(nn.Module):
    """Per-image perceptual distance ``P(x, y) -> [B]`` for images in [-1, 1] (1 or 3 channels; grayscale is
    repeated to RGB). Frozen (no gradients to its weights; gradients flow to the inputs).

    Inputs smaller than ``self.min_side`` are up-sampled (both sides alike) — the small-image deviation above.

    Raises:
        ValueError: unknown name. RuntimeError: ``"lpips-vgg"`` when the ``lpips`` package or its torchvision
            backbone weights are not available (says which and what to use instead).
    """

    MIN_SIDE = {"stlpips-alex": 32, "stlpips-vgg": 16, "lpips-vgg": 16, "none": 1}

    def __init__(self, name: str = "stlpips-alex"):
        super().__init__()
        if name not in PERCEPTUAL_CHOICES:
            raise ValueError(f"perceptual must be one of {PERCEPTUAL_CHOICES}, got {name!r}")
        self.name, self.min_side, self.net = name, self.MIN_SIDE[name], None
        if name.startswith("stlpips"):
            try:
                from stlpips_pytorch import stlpips  # lazy: optional dependency, its absence becomes the error below
                # stlpips prints its setup and torchvision warns about its ``pretrained`` argument: keep both quiet
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    self.net = stlpips.LPIPS(net=name.split("-")[1], variant="shift_tolerant", verbose=False)
            except ImportError as e:
                raise RuntimeError(f"perceptual={name!r} needs stlpips-pytorch==0.0.2 and torchsummary==1.5.1 "
                                   f"({e}); install them or choose perceptual='none'") from e
        elif name == "lpips-vgg":
            try:
                import lpips  # noqa: F401  # lazy: optional dependency (paper's LPIPS), its absence becomes the error below
            except ImportError as e:
                raise RuntimeError("perceptual='lpips-vgg' needs the `lpips` package (pip install lpips) and "
                                   "torchvision's VGG16 weights, which download on first use; offline, use "
                                   "'stlpips-vgg' or 'stlpips-alex' (weights shipped)") from e
            try:
                self.net = lpips.LPIPS(net="vgg", verbose=False)
            except Exception as e:  # noqa: BLE001 - download errors come in many types
                raise RuntimeError(f"perceptual='lpips-vgg': cannot load the VGG16 backbone weights ({e}); they "
                                   "download from the internet. Use 'stlpips-vgg' or 'stlpips-alex' offline") from e
        if self.net is not None:
            self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # the network stays in eval mode (dropout off)
        super().train(mode)
        if self.net is not None:
            self.net.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            return x.new_zeros(x.shape[0])
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        x, y = _upsample_to(x, self.min_side), _upsample_to(y, self.min_side)
        return self.net(x, y).reshape(x.shape[0])


# ------------------------------------------------------------------------------------------------- PatchGAN
class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator of LDM/taming (Isola et al. 2017): conv(4, s2) + LeakyReLU, then ``n_layers − 1``
    blocks conv(4, s2) + BatchNorm + LeakyReLU, one conv(4, s1) + BN + LeakyReLU, and a conv(4, s1) to 1 logit per
    patch. Input ``[B, C, H, W]`` in [-1, 1]; output logits ``[B, 1, H', W']``. Inputs with a side below
    ``min_side = 3·2^n_layers`` are up-sampled first (small-image deviation, see module docstring).
    Weights: N(0, 0.02) for convs, N(1, 0.02) for BN scales (taming ``weights_init``)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                   nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*layers)
        self.min_side = 3 * 2 ** n_layers
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(_upsample_to(x, self.min_side))


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last: torch.Tensor, disc_weight: float) -> torch.Tensor:
    """LDM's adaptive GAN weight: ``disc_weight · clamp(‖∇_last nll‖ / (‖∇_last g_loss‖ + 1e−4), 0, 1e4)``, detached."""
    nll_grads = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    w = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(w, 0.0, 1e4).detach() * disc_weight


# ------------------------------------------------------------------------------------------------- the loss
class EQVAELoss(nn.Module):
    """The full autoencoder objective: LDM reconstruction + KL/VQ + adaptive hinge GAN, with the EQ-VAE branches.

    Usage per batch (what ``train_ae`` does)::

        loss, logs, pair = loss_fn.generator_loss(vae, x, step, generator=g)   # backward into the AE
        d_loss, d_logs = loss_fn.discriminator_loss(*pair, step)              # backward into loss_fn.discriminator

    Args:
        cfg: :class:`LossConfig`.
        in_channels: image channels (for the discriminator).
    """

    def __init__(self, cfg: LossConfig | None = None, in_channels: int = 3):
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.perceptual = PerceptualLoss(self.cfg.perceptual)
        self.discriminator = NLayerDiscriminator(in_channels, self.cfg.disc_ndf, self.cfg.disc_layers)

    # ----------------------------------------------------------------------------- sampling
    def sample_branch(self, generator: torch.Generator | None = None) -> str:
        """One branch per batch: ``"eq"`` w.p. 1 − p_alpha, ``"lowres"`` w.p. p_alpha·p_prior_s, else ``"plain"``
        (Eq. 7 + official low-res branch). ``objective`` "plain"/"explicit" always give ``"plain"``."""
        if self.cfg.objective != "eq":
            return "plain"
        u, v = torch.rand(2, generator=generator).tolist()
        if u < self.cfg.p_alpha:
            return "lowres" if v < self.cfg.p_prior_s else "plain"
        return "eq"

    def sample_tau(self, latent_side: int, generator: torch.Generator | None = None,
                   family: str | None = None) -> Transform:
        """τ from the configured family / grid / interpolation (transforms.sample_transform)."""
        c = self.cfg
        return sample_transform(latent_side, family=family or c.family, scale_grid=c.scale_grid,
                                min_scale=c.min_scale, min_latent_side=c.min_latent_side, mode=c.interpolation,
                                generator=generator)

    # ----------------------------------------------------------------------------- terms
    def reconstruction_loss(self, target: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``Σ_{C,H,W}(|x − x̂| + w_p·P(x, x̂)) / B`` (LDM nll with logvar = 0) and its parts (per-image means, as
        detached 0-d tensors: no host synchronisation)."""
        if target.shape != recon.shape:
            raise ValueError(f"target {tuple(target.shape)} and reconstruction {tuple(recon.shape)} differ in shape")
        b = target.shape[0]
        l1 = (target - recon).abs()
        p = self.perceptual(target.contiguous(), recon.contiguous()) if self.cfg.perceptual_weight > 0 \
            else target.new_zeros(b)
        rec = l1 + self.cfg.perceptual_weight * p.view(b, 1, 1, 1)
        nll = rec.sum() / b
        return nll, {"l1": l1.detach().mean(), "perceptual": p.detach().mean()}

    def disc_factor(self, step: int) -> float:
        return self.cfg.disc_factor if step >= self.cfg.disc_start else 0.0

    # ----------------------------------------------------------------------------- generator side
    def generator_loss(self, vae, x: torch.Tensor, step: int = 0, generator: torch.Generator | None = None,
                       branch: str | None = None, tau: Transform | None = None, lowres_scale: float | None = None,
                       posterior_noise: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, dict, tuple[torch.Tensor, torch.Tensor]]:
        """The autoencoder's loss for one batch (Eq. 1 / 5 / 7 or Table 7).

        Args:
            vae: ``AutoencoderKL`` or ``VQModel``.
            x: images ``[B, C, H, W]`` in [-1, 1], square, side a multiple of f.
            step: optimizer step (for ``disc_start``).
            generator: CPU RNG for the objective's own draws (branch, τ, low-resolution scale, explicit τ) and, when
                ``posterior_noise`` is None, for the posterior sample too.
            branch: force ``"plain"`` / ``"lowres"`` / ``"eq"`` (default: :meth:`sample_branch`).
            tau: force τ for the ``"eq"`` branch (e.g. ``IDENTITY``: then the loss equals the plain loss exactly).
            lowres_scale: force s for the ``"lowres"`` branch.
            posterior_noise: ε ``[B, C_z, ≥h, ≥w]`` ~ N(0, I) for the posterior sample z = μ + σ·ε, cropped to the
                latent's ``h × w`` (top-left; a low-resolution latent uses a corner of the full-size noise). Given
                by ``train_autoencoder`` from the ``posterior`` stream of the RNG rule (eqvae_lib.rng), so that the
                branch draws never shift the posterior noise (common random numbers between EQ and plain arms).

        Returns:
            ``(loss, logs, (target, recon))``: scalar loss; a dict of strings (``branch``, ``tau``), Python numbers
            (``disc_factor``) and DETACHED 0-d tensors (``loss``, ``nll``, ``l1``, ``perceptual``, ``reg``,
            ``g_loss``, ``d_weight``, ``logits_fake``, ``explicit``; None when the term is off) — read them with
            ``float()`` only when logging, each read waits for the device; the detached pair for
            :meth:`discriminator_loss`.
        """
        c = self.cfg
        if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"expected square images [B, C, H, H], got {tuple(x.shape)}")
        f = downsample_factor(vae)
        if x.shape[-1] % f:
            raise ValueError(f"image side {x.shape[-1]} is not a multiple of the downsampling factor {f}")
        n = x.shape[-1] // f
        branch = branch or self.sample_branch(generator)
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        if branch == "eq":
            tau = tau if tau is not None else self.sample_tau(n, generator)
        else:
            tau = IDENTITY
        x_in = x
        if branch == "lowres":
            s = lowres_scale if lowres_scale is not None else self.sample_tau(n, generator, family="scale").sx
            x_in = Transform(sx=s, sy=s, mode=c.interpolation).apply(x)

        # Eq. 5: encode x, sample z, transform the latent, decode; target = τ∘x
        post = encode_posterior(vae, x_in)
        b = x.shape[0]
        if is_vq(vae):
            z, kl = post, None
        else:
            if posterior_noise is None:
                z = post.sample(generator=generator)  # a CPU generator also serves CUDA tensors (diffusers)
            else:  # the same arithmetic as diffusers' DiagonalGaussianDistribution.sample: z = μ + σ·ε
                h, w = post.mean.shape[-2:]
                z = post.mean + post.std * posterior_noise[..., :h, :w].to(post.mean)
            kl = post.kl().sum() / b
        recon, vq_reg = decode_with_loss(vae, tau.apply(z))
        target = tau.apply(x_in)
        nll, parts = self.reconstruction_loss(target, recon)
        reg = vq_reg if kl is None else kl
        reg_w = c.vq_weight if kl is None else c.kl_weight
        loss = nll + reg_w * reg

        explicit = None
        if c.objective == "explicit":  # Table 7: + λ ‖τ∘E(x) − E(τ∘x)‖²
            tau_x = self.sample_tau(n, generator)
            e_x = post if is_vq(vae) else post.mean
            e_tx = encode_posterior(vae, tau_x.apply(x))
            e_tx = e_tx if is_vq(vae) else e_tx.mean
            if c.explicit_stopgrad:
                e_tx = e_tx.detach()
            explicit = F.mse_loss(tau_x.apply(e_x), e_tx)
            loss = loss + c.explicit_lambda * explicit
            parts["explicit_tau"] = tau_x.describe()

        disc_factor = self.disc_factor(step)
        g_loss, d_weight, logits_fake = torch.zeros((), device=x.device), torch.zeros((), device=x.device), None
        if disc_factor > 0 and c.disc_weight > 0:
            self.discriminator.requires_grad_(False)
            logits = self.discriminator(recon.contiguous())
            self.discriminator.requires_grad_(True)
            g_loss = -logits.mean()
            logits_fake = logits.detach().mean()
            if torch.is_grad_enabled() and recon.requires_grad:
                d_weight = adaptive_weight(nll, g_loss, last_layer(vae), c.disc_weight)
            else:  # evaluation: no gradients, LDM uses weight 0
                d_weight = torch.zeros((), device=x.device)
            loss = loss + d_weight * disc_factor * g_loss

        logs = {"branch": branch, "tau": tau.describe() if branch != "lowres" else f"lowres·{x_in.shape[-1]}px",
                "loss": loss.detach(), "nll": nll.detach(), **parts,
                "reg": reg.detach() if reg is not None else 0.0, "g_loss": g_loss.detach(),
                "d_weight": d_weight.detach(), "disc_factor": disc_factor, "logits_fake": logits_fake,
                "explicit": explicit.detach() if explicit is not None else None}
        return loss, logs, (target.detach(), recon.detach())

    # ----------------------------------------------------------------------------- discriminator side
    def discriminator_loss(self, target: torch.Tensor, recon: torch.Tensor, step: int = 0
                           ) -> tuple[torch.Tensor, dict]:
        """Hinge loss of the PatchGAN on (real = target, fake = reconstruction), both detached; × disc_factor.
        Returns ``(loss, {"d_loss", "logits_real", "logits_fake_d"})`` (detached 0-d tensors; ``0.0`` / None when
        the GAN is off); loss is a zero with no graph when the GAN is off (``step < disc_start`` or
        ``disc_weight == 0``)."""
        factor = self.disc_factor(step)
        if factor == 0 or self.cfg.disc_weight == 0:
            z = torch.zeros((), device=target.device)
            return z, {"d_loss": 0.0, "logits_real": None, "logits_fake": None}
        logits_real = self.discriminator(target.detach().contiguous())
        logits_fake = self.discriminator(recon.detach().contiguous())
        d_loss = factor * hinge_d_loss(logits_real, logits_fake)
        return d_loss, {"d_loss": d_loss.detach(), "logits_real": logits_real.detach().mean(),
                        "logits_fake_d": logits_fake.detach().mean()}
