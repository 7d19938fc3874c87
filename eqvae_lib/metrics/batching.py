"""Image batches for the metrics: float [-1, 1] → uint8, and one batch iterator over tensors, Datasets and iterables.

Shared by :mod:`.reconstruction`, :mod:`.fid`, :mod:`.equivariance` and :mod:`.intrinsic_dim` (it imports none of
them, so the metrics' import graph has no cycle).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch.utils.data import Dataset


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[..]`` float in [-1, 1] → uint8 ``round((x + 1) · 127.5)`` clamped to [0, 255]. uint8 input is returned."""
    if x.dtype == torch.uint8:
        return x
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def num_images(images: torch.Tensor | Dataset) -> int:
    return len(images)


def iter_batches(images: torch.Tensor | Dataset | Iterable, batch_size: int = 64,
                 device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """Yield float batches ``[B, C, H, W]`` from a tensor ``[N, C, H, W]``, a Dataset whose items are ``x`` or
    ``(x, label)``, or an iterable of batches (tensors or ``(x, labels)`` tuples), moved to ``device`` if given.

    Raises:
        ValueError: for a tensor that is not 4-D.
    """
    def _move(b):
        return b.to(device) if device is not None else b

    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be a [N, C, H, W] tensor, got shape {tuple(images.shape)}")
        for i in range(0, len(images), batch_size):
            yield _move(images[i: i + batch_size])
    elif isinstance(images, Dataset):
        for i in range(0, len(images), batch_size):
            items = [images[j] for j in range(i, min(i + batch_size, len(images)))]
            xs = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
            yield _move(torch.stack(xs))
    else:
        for b in images:
            yield _move(b[0] if isinstance(b, (tuple, list)) else b)
