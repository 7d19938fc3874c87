"""The spatial transformations τ of EQ-VAE (paper Eq. 6, Table 5), applied identically to images and latents.

τ = S·R: ``R`` rotates by k quarter-turns (k ∈ {1, 2, 3}, i.e. 90°, 180°, 270°; exact ``torch.rot90``, no
interpolation), ``S`` scales by a factor s ≤ 1 (isotropic, or s_x, s_y independently for the anisotropic ablation).
A :class:`Transform` is applied as ``rot90(resize(x))`` — scale first, then rotate; the two commute for isotropic
scales.

Scale grid (``scale_grid``):
  * ``"discrete"`` (official code, default): s = m/n with n the latent side and m uniform in
    ``{ceil(n·min_scale), …, n−1}``. Both the latent side n·s = m and the image side f·n·s = f·m are integers, so the
    decoded image has exactly the size of the resized target.
  * ``"continuous"`` (paper text): s ~ U(min_scale, 1), then **rounded to the latent grid** (m = round(n·s), clamped
    to the same range) — without the rounding, image and latent sizes cannot both be integral with image = f × latent.
    The two grids differ only in how m is distributed.
A floor ``min_latent_side`` keeps the scaled latent from becoming degenerate on small grids (the kit's small profiles
use 4, a documented deviation; the official code has no floor: 1).

Interpolation (``mode``): ``"bilinear"``, ``align_corners=False``, no antialias — the official code, default — or
``"bicubic"`` as the paper's text says. The same mode is used on the image and on the latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Transformation families of Table 5.
FAMILIES = ("rotation", "scale", "rotation+scale", "rotation+anisotropic")
MODES = ("bilinear", "bicubic", "nearest", "area")


@dataclass(frozen=True)
class Transform:
    """One sampled τ: ``k`` quarter-turns counter-clockwise (``torch.rot90(x, k, dims=(-2, -1))``; k = 0…3, units:
    quarter-turns, k·90 degrees) after scaling the width by ``sx`` and the height by ``sy`` (factors in (0, 1]).

    Output size for an input of ``H × W``: ``round(H·sy) × round(W·sx)``, then swapped if k is odd.
    """

    k: int = 0
    sx: float = 1.0
    sy: float = 1.0
    mode: str = "bilinear"
    antialias: bool = False

    def __post_init__(self):
        if self.k not in (0, 1, 2, 3):
            raise ValueError(f"k (quarter-turns) must be 0, 1, 2 or 3, got {self.k}")
        if not (0 < self.sx <= 1 and 0 < self.sy <= 1):
            raise ValueError(f"scale factors must lie in (0, 1], got sx={self.sx}, sy={self.sy}")
        if self.mode not in MODES:
            raise ValueError(f"interpolation mode must be one of {MODES}, got {self.mode!r}")

    @property
    def degrees(self) -> int:
        """Rotation angle in degrees (counter-clockwise)."""
        return 90 * self.k

    @property
    def is_identity(self) -> bool:
        return self.k == 0 and self.sx == 1 and self.sy == 1

    @property
    def scales(self) -> bool:
        return self.sx != 1 or self.sy != 1

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size ``(h', w')`` of ``apply`` on an ``h × w`` input (pixels or latent cells).

        Raises:
            ValueError: if a scaled side would be 0.
        """
        sh, sw = int(round(h * self.sy)), int(round(w * self.sx))
        if sh < 1 or sw < 1:
            raise ValueError(f"scale ({self.sx}, {self.sy}) maps a {h}×{w} grid to {sh}×{sw}")
        return (sw, sh) if self.k % 2 else (sh, sw)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Apply τ to ``x`` ``[B, C, H, W]`` (image in [-1, 1] or latent; any float dtype) → ``[B, C, H', W']``."""
        if x.dim() != 4:
            raise ValueError(f"expected a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        if self.scales:
            h, w = x.shape[-2:]
            size = (int(round(h * self.sy)), int(round(w * self.sx)))
            if min(size) < 1:
                raise ValueError(f"scale ({self.sx}, {self.sy}) maps a {h}×{w} grid to {size}")
            kwargs = {} if self.mode in ("nearest", "area") else {"align_corners": False, "antialias": self.antialias}
            x = F.interpolate(x, size=size, mode=self.mode, **kwargs)
        if self.k:
            x = torch.rot90(x, self.k, dims=(-2, -1))
        return x

    __call__ = apply

    def describe(self) -> str:
        """Short label, e.g. ``"rot180"``, ``"s0.50"``, ``"rot90·s0.75x0.50"``."""
        parts = []
        if self.k:
            parts.append(f"rot{self.degrees}")
        if self.scales:
            parts.append(f"s{self.sx:.2f}" if self.sx == self.sy else f"s{self.sx:.2f}x{self.sy:.2f}")
        return "·".join(parts) or "identity"


IDENTITY = Transform()


def scale_range(latent_side: int, min_scale: float = 0.25, min_latent_side: int = 1) -> tuple[int, int]:
    """Admissible numerators ``(m_lo, m_hi)`` of s = m / n on a latent side ``n`` (inclusive; s < 1 always).

    Raises:
        ValueError: if the grid admits no scale (n too small for ``min_scale`` / ``min_latent_side``).
    """
    n = latent_side
    lo = max(int(math.ceil(n * min_scale - 1e-9)), min_latent_side, 1)
    hi = n - 1
    if lo > hi:
        raise ValueError(f"latent side {n} admits no scale s = m/{n} with m in [{lo}, {hi}] "
                         f"(min_scale={min_scale}, min_latent_side={min_latent_side}); use larger images or a "
                         "lower floor")
    return lo, hi


def sample_transform(latent_side: int, family: str = "rotation+scale", scale_grid: str = "discrete",
                     min_scale: float = 0.25, min_latent_side: int = 1, mode: str = "bilinear",
                     generator: torch.Generator | None = None) -> Transform:
    """Draw one τ for the EQ-VAE branch (paper Eq. 6; official code for the grid).

    Args:
        latent_side: n, the side of the (square) latent in cells; scales are multiples of 1/n.
        family: ``"rotation"`` (k ∈ {1,2,3}), ``"scale"`` (isotropic s < 1), ``"rotation+scale"`` (both; the
            default, Table 5 "R·S"), ``"rotation+anisotropic"`` (k ∈ {1,2,3}, s_x and s_y drawn independently).
        scale_grid: ``"discrete"`` or ``"continuous"`` (see the module docstring).
        min_scale: lower end of the scale range (0.25 in the paper and code).
        min_latent_side: floor on the scaled latent side in cells.
        mode: interpolation mode for the scaling.
        generator: torch RNG for reproducible draws.

    Raises:
        ValueError: unknown family / grid, or a latent side that admits no scale.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if scale_grid not in ("discrete", "continuous"):
        raise ValueError(f"scale_grid must be 'discrete' or 'continuous', got {scale_grid!r}")

    def draw_int(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=generator))

    def draw_scale() -> float:
        lo, hi = scale_range(latent_side, min_scale, min_latent_side)
        if scale_grid == "discrete":
            m = draw_int(lo, hi)
        else:
            s = min_scale + (1 - min_scale) * float(torch.rand((), generator=generator))
            m = min(max(int(round(s * latent_side)), lo), hi)
        return m / latent_side

    k = draw_int(1, 3) if family != "scale" else 0
    if family == "rotation":
        return Transform(k=k, mode=mode)
    if family == "rotation+anisotropic":
        return Transform(k=k, sx=draw_scale(), sy=draw_scale(), mode=mode)
    s = draw_scale()
    return Transform(k=k, sx=s, sy=s, mode=mode)


def evaluation_transforms(kind: str, scales: tuple[float, ...] = (0.25, 0.5, 0.75),
                          mode: str = "bilinear") -> list[Transform]:
    """The fixed sets of the equivariance metrics (App. C.3): ``"rotation"`` → T_R = {90°, 180°, 270°};
    ``"scale"`` → T_S = {0.25, 0.5, 0.75} (isotropic)."""
    if kind == "rotation":
        return [Transform(k=k, mode=mode) for k in (1, 2, 3)]
    if kind == "scale":
        return [Transform(sx=s, sy=s, mode=mode) for s in scales]
    raise ValueError(f"kind must be 'rotation' or 'scale', got {kind!r}")
