"""Image batches for the metrics: float [-1, 1] → uint8, and the kit's one batcher (:func:`eqvae_lib.data.iter_batches`).

Shared by :mod:`.reconstruction`, :mod:`.fid`, :mod:`.equivariance` and :mod:`.intrinsic_dim` (it imports none of
them, so the metrics' import graph has no cycle).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..data import iter_batches  # noqa: F401 (the one batcher, re-exported for the metrics)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[..]`` float in [-1, 1] → uint8 ``round((x + 1) · 127.5)`` clamped to [0, 255]. uint8 input is returned."""
    if x.dtype == torch.uint8:
        return x
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def num_images(images: torch.Tensor | Dataset) -> int:
    """Number of images in a tensor ``[N, C, H, W]`` or a Dataset."""
    return len(images)
