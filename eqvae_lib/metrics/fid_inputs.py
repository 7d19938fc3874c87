"""What goes into an FID, image by image: uint8 images the way torch-fidelity takes them, the content hash of an image
set (part of every reference-statistics key), and the class labels of a class-conditional gFID's samples.
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset

from .batching import iter_batches, to_uint8


def fidelity_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` in [-1, 1] (or uint8), C ∈ {1, 3} → uint8 ``[B, 3, H, W]`` (grayscale repeated).

    Raises:
        ValueError: for other channel counts.
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got shape {tuple(x.shape)}")
    u = to_uint8(x)
    return u.expand(-1, 3, -1, -1).contiguous() if u.shape[1] == 1 else u


class UInt8ImageDataset(Dataset):
    """Wrap images for torch-fidelity 0.4.0, which needs each item to be a **bare** uint8 tensor ``[3, H, W]``.

    Args:
        images: ``[N, C, H, W]`` float in [-1, 1] or uint8 (C = 1 or 3), or a Dataset whose items are ``x`` or
            ``(x, label)`` with ``x`` ``[C, H, W]`` in [-1, 1].
    """

    def __init__(self, images: torch.Tensor | Dataset):
        if isinstance(images, torch.Tensor) and (images.dim() != 4 or images.shape[1] not in (1, 3)):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.images[i]
        x = item[0] if isinstance(item, (tuple, list)) else item
        return fidelity_uint8(x.unsqueeze(0))[0]


def images_hash(images: torch.Tensor | Dataset, batch_size: int = 256) -> str:
    """SHA-256 (first 16 hex) of the uint8 content (``to_uint8``) and shapes of an image set."""
    h = hashlib.sha256()
    n = 0
    for x in iter_batches(images, batch_size):
        u = to_uint8(x).cpu().contiguous()
        h.update(str(tuple(u.shape[1:])).encode())
        h.update(u.numpy().tobytes())
        n += len(u)
    h.update(str(n).encode())
    return h.hexdigest()[:16]


def stratified_labels(n: int, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Class labels for the samples of a class-conditional gFID: every class ⌊n / K⌋ times, the n mod K remaining
    labels on distinct classes drawn without replacement, in a random order (issue #14: uniform i.i.d. labels add
    label-count noise to a gFID of n = 1000; the paper's 50K ImageNet samples are class-balanced too).

    Args:
        n: number of samples (≥ 0).
        num_classes: K ≥ 1.
        generator: torch RNG for the leftover classes and the order (same generator → same labels).

    Returns:
        int64 ``[n]`` with values in [0, K); per-class counts differ by at most 1.

    Raises:
        ValueError: n < 0 or K < 1.
    """
    if n < 0 or num_classes < 1:
        raise ValueError(f"need n >= 0 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    base = torch.arange(num_classes, dtype=torch.int64).repeat(n // num_classes)
    extra = torch.randperm(num_classes, generator=generator)[: n % num_classes]
    labels = torch.cat([base, extra])
    return labels[torch.randperm(n, generator=generator)]
