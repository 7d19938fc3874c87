"""DiT (Peebles & Xie 2023) and its Gaussian diffusion, in one readable file.

The model follows DiT's ``models.py`` (adaLN-Zero blocks, patchify, class embedding with a null class for label
dropout / classifier-free guidance); the diffusion follows ADM's ``gaussian_diffusion.py`` / ``respace.py`` as DiT uses
them: 1000 linear-beta steps (1e-4 .. 0.02), epsilon prediction, learned sigma ("learned range") trained with the hybrid
loss L_simple + L_vlb, sampling with respaced DDPM (250 steps) or DDIM. Used for the DiT-B/2 and DiT-XL/2 results of
EQ-VAE (arXiv 2502.09509 v3, Tables 1, 2, 5-8; protocol in its Sec. 5.1 / App. B).

Conventions: latents ``x`` are normalised latents z_n ``[B, C, H, W]`` (H = W = ``input_size`` latent cells);
timesteps ``t`` are int64 ``[B]`` in ``[0, 1000)`` for the diffusion (SiT passes floats, see ``sit.py``); labels ``y``
are int64 ``[B]`` in ``[0, num_classes)`` or ``None`` (= the null class: unconditional).

Deviations from DiT's code (all documented where they happen):
* no timm dependency: ``Attention`` uses ``F.scaled_dot_product_attention`` and ``Mlp`` is written out (same weights);
* the label table always has the null row (DiT adds it only when label dropout > 0), so ``y=None`` always works;
* classifier-free guidance is applied to all latent channels of epsilon (DiT's ``forward_with_cfg`` guides only the
  first 3 channels "for exact reproducibility"; pass ``cfg_channels=3`` to get that).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm


# ================================================================================================ model (DiT models.py)
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: ``x [B, T, D] * (1 + scale [B, D]) + shift [B, D]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps ``[B]`` (any real value) -> vectors ``[B, hidden_size]`` (sinusoidal features + MLP)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """Sinusoidal embedding (GLIDE / ADM): ``[B]`` -> ``[B, dim]`` = [cos(t f_k), sin(t f_k)]."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class labels ``[B]`` -> vectors ``[B, hidden_size]``; row ``num_classes`` is the null class.

    Label dropout (DiT: p = 0.1) replaces labels by the null class, which trains the unconditional model used by
    classifier-free guidance. ``force_drop_ids`` (bool/0-1 ``[B]``) drops exactly those entries (used by
    ``train_gen`` so that dropout is drawn from its own per-step generator). ``y=None`` means all null (unconditional).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, y: torch.Tensor | None, batch: int, device: torch.device,
                force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        null = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if y is None:
            return self.embedding_table(null)
        if y.shape != (batch,):
            raise ValueError(f"labels must have shape [{batch}], got {tuple(y.shape)}")
        if self.num_classes == 0:
            raise ValueError("this model is unconditional (num_classes=0): pass y=None")
        if y.device.type == "cpu" and bool(((y < 0) | (y >= self.num_classes)).any()):  # no GPU sync
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got min {int(y.min())} max {int(y.max())}")
        if force_drop_ids is not None:
            y = torch.where(force_drop_ids.to(device).bool(), null, y)
        elif self.training and self.dropout_prob > 0:
            drop = torch.rand(batch, device=device) < self.dropout_prob
            y = torch.where(drop, null, y)
        return self.embedding_table(y)


class Attention(nn.Module):
    """Multi-head self-attention (timm's ``Attention`` with qkv bias; same parameter names and shapes)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, T, D/heads]
        return self.proj(x.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (timm ``Mlp`` as DiT configures it)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT Fig. 3)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + linear map from tokens to patches of ``out_channels``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE / DiT): ``[grid_size**2, embed_dim]`` float32."""
    if embed_dim % 4:
        raise ValueError(f"hidden size must be divisible by 4 for the 2-D sin-cos embedding, got {embed_dim}")
    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))  # w first
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))

    def emb_1d(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([emb_1d(grid[0]), emb_1d(grid[1])], axis=1)).float()


class DiT(nn.Module):
    """Diffusion Transformer with adaLN-Zero (Peebles & Xie 2023, DiT ``models.py``).

    Args:
        input_size: latent side in cells (32 for 256-px images and an f8 AE).
        patch_size: patch side in latent cells (2 = "DiT-*/2", 1 = "DiT-B/1" used for the f16 SD-VAE-16 in Table 1).
        in_channels: latent channels C.
        hidden_size, depth, num_heads, mlp_ratio: transformer width / blocks / heads / MLP expansion.
        class_dropout_prob: label dropout probability in training (DiT: 0.1).
        num_classes: number of classes; 0 = unconditional (only the null class exists; pass ``y=None``).
        learn_sigma: output 2C channels (epsilon and the variance interpolation v) instead of C.

    ``forward(x [B, C, H, W], t [B], y [B] | None, force_drop_ids=None) -> [B, C or 2C, H, W]``.
    ``t`` may be int (diffusion steps) or float (SiT's t in [0, 1], possibly scaled).
    """

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1,
                 num_classes: int = 1000, learn_sigma: bool = True):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.learn_sigma, self.num_classes = learn_sigma, num_classes
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_heads, self.hidden_size, self.depth = num_heads, hidden_size, depth
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)  # PatchEmbed
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.num_patches = (input_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, sin-cos positions, N(0, 0.02) embeddings, zeroed adaLN and output."""
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)
        if self.pos_embed.device.type != "meta":
            self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.hidden_size, int(self.num_patches ** 0.5))[None])
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, p*p*C_out]`` -> ``[B, C_out, H, W]``."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(f"DiT expects latents [B, {self.in_channels}, {self.input_size}, {self.input_size}], "
                             f"got {tuple(x.shape)}")
        B = x.shape[0]
        t = t.expand(B) if t.ndim == 0 else t
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B, T, D]
        c = self.t_embedder(t) + self.y_embedder(y, B, x.device, force_drop_ids)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, cfg_scale: float,
                         cfg_channels: int | None = None) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022): out = u + s (c - u) on the prediction channels.

        ``x`` is NOT duplicated by the caller: the conditional (``y``) and unconditional (null) passes run as one batch
        of 2B. With learned sigma the variance channels of the conditional pass are returned. ``cfg_scale = 1``
        is a plain conditional forward. ``cfg_channels`` limits guidance to the first k channels (DiT: 3).
        """
        if cfg_scale == 1.0:
            return self.forward(x, t, y)
        if y is None:
            raise ValueError("classifier-free guidance needs class labels y (cfg_scale != 1 with y=None)")
        B = x.shape[0]
        t = t.expand(B) if t.ndim == 0 else t
        drop = torch.cat([torch.zeros_like(y, dtype=torch.bool), torch.ones_like(y, dtype=torch.bool)])  # 2nd: null
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]), force_drop_ids=drop)
        cond, uncond = out[:B], out[B:]
        k = cfg_channels if cfg_channels is not None else self.in_channels
        guided = cond.clone()
        guided[:, :k] = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
        return guided


# DiT's published configurations (DiT Table 1) plus CPU-sized ones for 2 cores.
_DIT_SIZES = {  # name: (depth, hidden, heads)
    "XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6),
    "T": (6, 128, 4),  # "tiny": ~1.9M params, trains at several hundred latents/s on 2 CPU cores
    "M": (4, 64, 4),  # "micro": for unit tests and smoke runs
}
DIT_CONFIGS = {f"DiT-{s}/{p}": dict(depth=d, hidden_size=h, num_heads=n, patch_size=p)
               for s, (d, h, n) in _DIT_SIZES.items() for p in (1, 2, 4, 8)}


def dit_model(name: str, **kwargs) -> DiT:
    """Build a DiT by name, e.g. ``dit_model("DiT-B/2", input_size=32, in_channels=4, num_classes=1000)``.

    Names: ``DiT-{XL,L,B,S,T,M}/{1,2,4,8}`` (XL/L/B/S as in DiT; T = width 128, depth 6, 4 heads; M = width 64,
    depth 4, 4 heads). ``kwargs`` go to ``DiT`` (input_size, in_channels, num_classes, learn_sigma, ...).

    Raises:
        ValueError: for an unknown name (lists the known ones).
    """
    if name not in DIT_CONFIGS:
        raise ValueError(f"unknown DiT config {name!r}; known: {', '.join(DIT_CONFIGS)}")
    return DiT(**DIT_CONFIGS[name], **kwargs)


def count_params(model: nn.Module) -> int:
    """Number of parameters, including DiT's fixed position embedding (as DiT's own count)."""
    return sum(p.numel() for p in model.parameters())


# ============================================================================= Gaussian diffusion (ADM, as DiT uses it)
def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule scaled to ``num_steps`` (ADM ``get_named_beta_schedule("linear")``), float64."""
    scale = 1000 / num_steps
    return np.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int) -> list[int]:
    """ADM's ``space_timesteps``: which of the original steps a respaced process keeps (sorted).

    ``"250"`` (or 250) = 250 evenly spread steps incl. the first and last; ``"ddim50"`` = DDIM striding
    ``range(0, T, T // 50)``; ``"10,15,20"`` = sections of the range with that many steps each.
    """
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"cannot create exactly {desired} DDIM steps with an integer stride of {num_timesteps}")
    counts = [int(x) for x in str(section_counts).split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * frac_stride) for j in range(count)]
        start += size
    return sorted(set(kept))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log-likelihood of data discretised to 256 bins on [-1, 1] under N(means, e^{2 log_scales}) (ADM), in nats."""
    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv_stdv * (centered + 1.0 / 255.0)), cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.ndim)))


ModelFn = Callable[..., torch.Tensor]  # model(x_t [B, C, H, W], t [B], **model_kwargs) -> [B, C or 2C, H, W]


class GaussianDiffusion:
    """DDPM forward process, hybrid training loss and DDPM / DDIM samplers (ADM ``GaussianDiffusion`` +
    ``SpacedDiffusion`` in one class).

    Args:
        betas: float64 ``[T]`` betas of THIS process (a respaced process has its own betas, derived from the kept
            steps' alphas_cumprod, so that its alphas_cumprod equal the original ones at the kept steps).
        learn_sigma: the model outputs 2C channels; the second half v in [-1, 1] interpolates log-variance between
            the posterior variance and beta ("learned range", Nichol & Dhariwal 2021). Otherwise the variance is fixed
            to DiT's default for that case, "fixed large" (beta_t, with the posterior variance at t = 0).
        timestep_map: original step index of each step of this process (identity if None); the model is always
            called with ORIGINAL indices.

    Notation: ``alphas_cumprod[t]`` = ᾱ_t. q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I).
    """

    def __init__(self, betas: np.ndarray, learn_sigma: bool = True, timestep_map: list[int] | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or (betas <= 0).any() or (betas > 1).any():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas, self.learn_sigma = betas, learn_sigma
        self.num_timesteps = len(betas)
        self.timestep_map = np.asarray(timestep_map if timestep_map is not None else range(len(betas)), dtype=np.int64)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # posterior q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        # arrays the formulas below index (kept as attributes so that their device copies are made once)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)  # log in float64
        self.log_betas = np.log(self.betas)
        self.fixed_large_variance = np.append(self.posterior_variance[1], self.betas[1:])  # "fixed large"
        self.log_fixed_large_variance = np.log(self.fixed_large_variance)
        self._on_device: dict = {}  # (id(array), device) -> (array, tensor): each schedule array copied once

    # -------------------------------------------------------------------------------------------- helpers
    def _device_array(self, arr: np.ndarray, device: torch.device) -> torch.Tensor:
        """``torch.from_numpy(arr).to(device)``, made once per (array, device): a host-to-device copy from pageable
        memory in every step would wait for the device each time."""
        key = (id(arr), str(device))
        hit = self._on_device.get(key)
        if hit is None or hit[0] is not arr:
            hit = self._on_device[key] = (arr, torch.from_numpy(arr).to(device=device))
        return hit[1]

    def _extract(self, arr: np.ndarray, t: torch.Tensor, shape) -> torch.Tensor:
        out = self._device_array(arr, t.device)[t].float()
        return out.view(-1, *([1] * (len(shape) - 1))).expand(shape)

    def _call(self, model: ModelFn, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None) -> torch.Tensor:
        t_orig = self._device_array(self.timestep_map, t.device)[t]
        return model(x, t_orig, **(model_kwargs or {})).float()

    def sample_t(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps, uniform on ``{0, ..., T-1}``: int64 ``[n]`` (on the generator's device)."""
        dev = generator.device if generator is not None else "cpu"
        return torch.randint(0, self.num_timesteps, (n,), generator=generator, device=dev)

    # ------------------------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)."""
        mean = self._extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        var = self._extract(self.one_minus_alphas_cumprod, t, x_start.shape)
        return mean, var, self._extract(self.log_one_minus_alphas_cumprod, t, x_start.shape)  # log in float64

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε."""
        return (self._extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM Eq. 6-7)."""
        mean = (self._extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + self._extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        return (mean, self._extract(self.posterior_variance, t, x_t.shape),
                self._extract(self.posterior_log_variance_clipped, t, x_t.shape))

    # ------------------------------------------------------------------------------------ reverse process
    def p_mean_variance(self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = False) -> dict:
        """p(x_{t-1} | x_t) from the model's output: dict of ``mean``, ``variance``, ``log_variance``,
        ``pred_xstart``, ``eps`` (all ``[B, C, H, W]``). DiT samples with ``clip_denoised=False``."""
        C = x.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * C:
                raise ValueError(f"learn_sigma needs a model with {2 * C} output channels, got {model_output.shape[1]}")
            eps, v = model_output[:, :C], model_output[:, C:]
            min_log = self._extract(self.posterior_log_variance_clipped, t, x.shape)
            max_log = self._extract(self.log_betas, t, x.shape)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            eps = model_output[:, :C]
            variance = self._extract(self.fixed_large_variance, t, x.shape)  # "fixed large"
            log_variance = self._extract(self.log_fixed_large_variance, t, x.shape)
        pred_xstart = (self._extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x
                       - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape) * eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart,
                "eps": eps}

    # ------------------------------------------------------------------------------------------- training
    def training_losses(self, model: ModelFn, x_start: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor | None = None, model_kwargs: dict | None = None) -> dict:
        """Per-sample losses ``[B]``: ``loss`` = ``mse`` (L_simple, ε-prediction) + ``vb`` (L_vlb in bits/dim with the
        mean's gradient stopped, only with learned sigma; the t = 0 term is the discretised decoder NLL), as ADM's
        hybrid objective that DiT trains with."""
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise)
        out = self._call(model, x_t, t, model_kwargs)
        C = x_start.shape[1]
        terms = {"mse": _mean_flat((noise - out[:, :C]) ** 2)}
        if self.learn_sigma:
            frozen = torch.cat([out[:, :C].detach(), out[:, C:]], dim=1)
            terms["vb"] = self._vb_terms_bpd(frozen, x_start, x_t, t)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    def _vb_terms_bpd(self, model_output, x_start, x_t, t) -> torch.Tensor:
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -_mean_flat(discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"]))
        return torch.where(t == 0, nll / math.log(2.0), kl)

    def loss(self, model: ModelFn, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             model_kwargs: dict | None = None) -> torch.Tensor:
        """Per-sample training loss ``[B]`` (the common objective interface used by ``train_gen``)."""
        return self.training_losses(model, x_start, t, noise, model_kwargs)["loss"]

    # ------------------------------------------------------------------------------------------- sampling
    @staticmethod
    def _randn(shape, generator, device) -> torch.Tensor:
        """Noise from ``generator`` on its device (a CPU generator gives the same numbers for a CPU or a CUDA model),
        moved to ``device``; a CPU draw for CUDA goes through pinned memory, asynchronously (no wait for the GPU)."""
        if generator is None:
            return torch.randn(shape, device=device)
        x = torch.randn(shape, generator=generator, device=generator.device)
        if x.device.type == "cpu" and torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)

    @torch.no_grad()
    def p_sample_loop(self, model: ModelFn, shape, noise: torch.Tensor | None = None, model_kwargs: dict | None = None,
                      generator: torch.Generator | None = None, device=None, progress: bool = False,
                      clip_denoised: bool = False) -> torch.Tensor:
        """Ancestral DDPM sampling over all steps of this (possibly respaced) process; returns x_0 ``shape``.
        All noise comes from ``generator`` (drawn on its device), so a fixed seed gives identical samples."""
        device = device or (noise.device if noise is not None else "cpu")
        x = noise.to(device) if noise is not None else self._randn(shape, generator, device)
        for i in tqdm(list(range(self.num_timesteps))[::-1], desc="DDPM", disable=not progress, leave=False):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            out = self.p_mean_variance(self._call(model, x, t, model_kwargs), x, t, clip_denoised)
            x = out["mean"]
            if i > 0:
                x = x + torch.exp(0.5 * out["log_variance"]) * self._randn(shape, generator, device)
        return x

    @torch.no_grad()
    def ddim_sample_loop(self, model: ModelFn, shape, noise: torch.Tensor | None = None,
                         model_kwargs: dict | None = None, generator: torch.Generator | None = None, device=None,
                         eta: float = 0.0, progress: bool = False, clip_denoised: bool = False) -> torch.Tensor:
        """DDIM sampling (Song et al. 2021, ADM ``ddim_sample``) over all steps of this process; ``eta = 0`` is
        deterministic given the initial noise."""
        device = device or (noise.device if noise is not None else "cpu")
        x = noise.to(device) if noise is not None else self._randn(shape, generator, device)
        for i in tqdm(list(range(self.num_timesteps))[::-1], desc="DDIM", disable=not progress, leave=False):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            out = self.p_mean_variance(self._call(model, x, t, model_kwargs), x, t, clip_denoised)
            eps = (self._extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x - out["pred_xstart"]) \
                / self._extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape)
            a_bar = self._extract(self.alphas_cumprod, t, x.shape)
            a_bar_prev = self._extract(self.alphas_cumprod_prev, t, x.shape)
            sigma = eta * torch.sqrt((1 - a_bar_prev) / (1 - a_bar)) * torch.sqrt(1 - a_bar / a_bar_prev)
            x = out["pred_xstart"] * torch.sqrt(a_bar_prev) + torch.sqrt(1 - a_bar_prev - sigma ** 2) * eps
            if i > 0 and eta > 0:
                x = x + sigma * self._randn(shape, generator, device)
        return x


def create_diffusion(timestep_respacing: str | int = "", learn_sigma: bool = True,
                     diffusion_steps: int = 1000) -> GaussianDiffusion:
    """DiT's ``create_diffusion``: linear betas over ``diffusion_steps``; ``timestep_respacing`` "" = all steps
    (training), ``"250"`` = DiT's sampling, ``"ddim50"`` = DDIM striding."""
    betas = linear_betas(diffusion_steps)
    if timestep_respacing in ("", None) or str(timestep_respacing) == str(diffusion_steps):
        return GaussianDiffusion(betas, learn_sigma)
    use = space_timesteps(diffusion_steps, timestep_respacing)
    acp = np.cumprod(1.0 - betas)
    last, new_betas = 1.0, []
    for i in use:
        new_betas.append(1 - acp[i] / last)
        last = acp[i]
    return GaussianDiffusion(np.array(new_betas), learn_sigma, timestep_map=use)


@torch.no_grad()
def sample_dit(model: DiT, n: int, *, y: torch.Tensor | None = None, cfg_scale: float = 1.0, sampler: str = "ddpm",
               steps: int = 250, eta: float = 0.0, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, progress: bool = False, cfg_channels: int | None = None,
               diffusion_steps: int = 1000) -> torch.Tensor:
    """Sample ``n`` normalised latents z_n ``[n, C, H, W]`` from a DiT trained with the 1000-step linear diffusion.

    Args:
        y: labels ``[n]`` or ``None`` (null class: unconditional).
        cfg_scale: classifier-free guidance scale (1.0 = none, the EQ-VAE tables).
        sampler: ``"ddpm"`` (ancestral, DiT's default with ``steps=250``) or ``"ddim"`` (``eta`` 0 = deterministic).
        steps: number of sampling steps (respacing of the 1000 training steps).
        generator: torch.Generator for the initial noise and DDPM noise (determinism); ``noise`` overrides the start.

    Raises:
        ValueError: unknown sampler, or ``cfg_scale != 1`` without labels.
    """
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"DiT sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    device = next(model.parameters()).device
    respacing = str(steps) if sampler == "ddpm" else (f"ddim{steps}" if diffusion_steps % steps == 0 else str(steps))
    diffusion = create_diffusion(respacing, learn_sigma=model.learn_sigma, diffusion_steps=diffusion_steps)
    if y is not None:
        y = y.to(device)
    was_training = model.training
    model.eval()

    def fn(x, t):
        return model.forward_with_cfg(x, t, y, cfg_scale, cfg_channels) if cfg_scale != 1.0 else model(x, t, y)

    shape = (n, model.in_channels, model.input_size, model.input_size)
    try:
        if sampler == "ddpm":
            return diffusion.p_sample_loop(fn, shape, noise, generator=generator, device=device, progress=progress)
        return diffusion.ddim_sample_loop(fn, shape, noise, generator=generator, device=device, eta=eta,
                                          progress=progress)
    finally:
        model.train(was_training)
