"""Intrinsic dimension (ID) of latent spaces (paper Table 5 last column; Sec. 4 "lower ID, better gFID").

The paper used the TwoNN estimator (Facco et al. 2017, via DADApy) without stating the sample count or how latents
were flattened. The kit uses scikit-dimension's ``TwoNN`` (its defaults — linear fit, 10 % of the largest ratios
discarded — agree with DADApy's 2NN to four decimals; SPEC §5) on latents flattened to vectors of c·h·w values,
with the same N and the same latent (mean or sample) for every autoencoder compared.

Steps: flatten → remove exact duplicate points (they give r1 = 0 and break the ratio r2/r1) → take N points (seeded
random subset) → first/second nearest-neighbour distances (exact Euclidean, scikit-learn) → TwoNN on the N×2 distance
array (``dist=True``). Uncertainty: a bootstrap over points (the (r1, r2) pairs are resampled with replacement and
TwoNN refitted; percentile interval) — it reflects the estimator's sampling noise for fixed neighbourhoods.
Cross-check: the Levina–Bickel maximum-likelihood estimator (``skdim.id.MLE``, K neighbours) on the same points.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from .batching import iter_batches


def _as_points(latents: torch.Tensor | np.ndarray) -> np.ndarray:
    x = latents.detach().cpu().double().numpy() if isinstance(latents, torch.Tensor) else np.asarray(latents,
                                                                                                     np.float64)
    if x.ndim < 2:
        raise ValueError(f"need at least 2-D input [N, ...], got shape {x.shape}")
    return x.reshape(len(x), -1)


def neighbour_distances(x: np.ndarray) -> np.ndarray:
    """First and second nearest-neighbour Euclidean distances ``[N, 2]`` of points ``x`` ``[N, D]`` (self excluded):
    scikit-learn's ``pairwise_distances_chunked``, as skdim's TwoNN does, with a partial sort per row."""
    from sklearn.metrics import pairwise_distances_chunked

    out = np.empty((len(x), 2))
    i = 0
    for d in pairwise_distances_chunked(x):
        d[np.arange(len(d)), np.arange(i, i + len(d))] = np.inf  # exclude self
        two = np.partition(d, 1, axis=1)[:, :2]
        out[i: i + len(d)] = np.sort(two, axis=1)
        i += len(d)
    return out


def _twonn_from_dist(r: np.ndarray, discard_fraction: float) -> float:
    import skdim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(skdim.id.TwoNN(discard_fraction=discard_fraction, dist=True).fit(r).dimension_)


def intrinsic_dimension(latents: torch.Tensor | np.ndarray, n: int | None = None, seed: int = 0,
                        n_bootstrap: int = 200, ci: float = 0.95, discard_fraction: float = 0.1,
                        mle: bool = True, mle_k: int = 20) -> dict:
    """TwoNN intrinsic dimension of latents, with a bootstrap interval and an MLE cross-check.

    Args:
        latents: ``[N, c, h, w]`` (or any ``[N, ...]``) tensor/array; each row is flattened to one point.
        n: number of points used (seeded random subset after de-duplication; ``None`` = all). Use the same ``n`` for
            every autoencoder compared.
        seed: subset and bootstrap seed.
        n_bootstrap: bootstrap resamples (0 = no interval).
        ci: interval coverage (percentile bootstrap).
        discard_fraction: TwoNN's fraction of largest ratios discarded (0.1 = Facco et al. / DADApy default; must be
            > 0 with the linear fit).
        mle: also run ``skdim.id.MLE`` (Levina–Bickel, ``K = min(mle_k, n_points - 1)`` neighbours).

    Returns:
        ``{"twonn": ID, "twonn_ci": [low, high] or None, "twonn_bootstrap_std", "ci", "mle": ID or None, "mle_k",
        "n_points", "n_duplicates_removed", "ambient_dim", "estimator": "...", "seconds"}``.

    Raises:
        ValueError: if fewer than 3 distinct points remain, or ``discard_fraction`` is not in (0, 1).
    """
    t0 = time.time()
    if not 0 < discard_fraction < 1:
        raise ValueError(f"discard_fraction must lie in (0, 1) (skdim's linear fit fails at 0), got "
                         f"{discard_fraction}")
    x = _as_points(latents)
    n_in = len(x)
    x = np.ascontiguousarray(x)
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()  # one bytes key per point
    _, first = np.unique(rows, return_index=True)
    x = x[np.sort(first)]
    n_dup = n_in - len(x)
    rng = np.random.default_rng(seed)
    if n is not None:
        if n > len(x):
            raise ValueError(f"n={n} exceeds the {len(x)} distinct points available ({n_dup} duplicates removed)")
        x = x[np.sort(rng.choice(len(x), size=n, replace=False))]
    if len(x) < 3:
        raise ValueError(f"need at least 3 distinct points for TwoNN, got {len(x)}")
    r = neighbour_distances(x)
    d = _twonn_from_dist(r, discard_fraction)
    interval, bstd = None, None
    if n_bootstrap > 0:
        boots = np.array([_twonn_from_dist(r[rng.integers(0, len(r), len(r))], discard_fraction)
                          for _ in range(n_bootstrap)])
        a = (1 - ci) / 2
        interval = [float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))]
        bstd = float(boots.std())
    d_mle = None
    if mle:
        import skdim

        mle_k = min(mle_k, len(x) - 1)  # K neighbours need K + 1 points
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d_mle = float(skdim.id.MLE(K=mle_k).fit(x).dimension_)
    return {"twonn": d, "twonn_ci": interval, "twonn_bootstrap_std": bstd, "ci": ci, "mle": d_mle,
            "mle_k": mle_k if mle else None, "n_points": int(len(x)), "n_duplicates_removed": int(n_dup),
            "ambient_dim": int(x.shape[1]),
            "estimator": f"TwoNN (scikit-dimension, linear fit, discard_fraction={discard_fraction}) on flattened "
                         "latents; bootstrap over points",
            "seconds": time.time() - t0}


@torch.no_grad()
def latent_points(images, encode_fn, batch_size: int = 64, device=None) -> torch.Tensor:
    """Encode all images (tensor ``[N, C, H, W]`` in [-1, 1] or Dataset) → flattened latents ``[N, c·h·w]`` (CPU)."""
    return torch.cat([encode_fn(x.float()).flatten(1).float().cpu() for x in iter_batches(images, batch_size,
                                                                                          device)])
