"""Intrinsic dimension (ID) of latent spaces (paper Table 5 last column; Sec. 4 "lower ID, better gFID").

The paper used the TwoNN estimator (Facco et al. 2017, via DADApy) without stating the sample count or how latents
were flattened. The kit uses scikit-dimension's ``TwoNN`` (its defaults — linear fit, 10 % of the largest ratios
discarded — agree with DADApy's 2NN to four decimals; SPEC §5) on latents flattened to vectors of c·h·w values,
with the same N and the same latent (mean or sample) for every autoencoder compared.

Steps: flatten → remove exact duplicate points (they give r1 = 0 and break the ratio r2/r1) → detect near-duplicates
(a first-neighbour distance r1 at round-off level relative to the data scale: r1 ≤ tol · s, with s the RMS distance
of the points from their centroid and tol = max(1e-5, 8 · eps of the input dtype), i.e. 1e-5 for float32/float64,
~7.8e-3 for float16) and remove them greedily (one point of each near-identical group is kept; ``near_duplicates=
"keep"`` only reports them) — copies that differ in the last bit give r2/r1 ≈ 1e7 and collapse TwoNN to ~0.2 → take N
points (seeded random subset) → first/second nearest-neighbour distances (exact Euclidean, scikit-learn) → TwoNN on the N×2 distance
array (``dist=True``). Uncertainty: a bootstrap over points (the (r1, r2) pairs are resampled with replacement and
TwoNN refitted; percentile interval) — it reflects the estimator's sampling noise for fixed neighbourhoods.
Cross-check: the Levina–Bickel maximum-likelihood estimator (``skdim.id.MLE``, K neighbours) on the same points.
The result counts the exact and near duplicates and lists ``flags`` (``reliable`` is False when a flag is raised):
degenerate distances kept in the estimate, or more than 5 % of the points removed as duplicates.
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
    from sklearn.metrics import pairwise_distances_chunked  # lazy: scikit-learn takes seconds to import

    out = np.empty((len(x), 2))
    i = 0
    for d in pairwise_distances_chunked(x):
        d[np.arange(len(d)), np.arange(i, i + len(d))] = np.inf  # exclude self
        two = np.partition(d, 1, axis=1)[:, :2]
        out[i: i + len(d)] = np.sort(two, axis=1)
        i += len(d)
    return out


def near_duplicate_tolerance(x: np.ndarray, eps: float = float(np.finfo(np.float32).eps),
                             rtol: float | None = None) -> dict:
    """Tolerance below which a nearest-neighbour distance counts as degenerate (round-off of a copy).

    ``absolute = rtol · scale`` with ``scale`` the RMS distance of the points ``x`` ``[N, D]`` from their centroid and
    ``rtol = max(1e-5, 8 · eps)`` unless given (``eps``: machine epsilon of the dtype the latents came in)."""
    rtol = float(rtol) if rtol is not None else max(1e-5, 8.0 * eps)
    scale = float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))
    return {"relative": rtol, "absolute": rtol * scale, "data_scale": scale,
            "rule": "r1 <= relative * data_scale (data_scale = RMS distance of the points from their centroid)"}


def _near_duplicate_mask(x: np.ndarray, tol_abs: float) -> np.ndarray:
    """Boolean mask of points to drop: greedy in index order, a point within ``tol_abs`` of an earlier kept point."""
    r = neighbour_distances(x)
    cand = np.flatnonzero(r[:, 0] <= tol_abs)  # a near-duplicate pair has both members among these
    drop = np.zeros(len(x), dtype=bool)
    if len(cand) == 0:
        return drop
    from sklearn.metrics import pairwise_distances  # lazy: scikit-learn takes seconds to import

    d = pairwise_distances(x[cand])
    for a in range(len(cand)):
        if drop[cand[a]]:
            continue
        close = np.flatnonzero(d[a] <= tol_abs)
        drop[cand[close[close > a]]] = True
    return drop


def _twonn_from_dist(r: np.ndarray, discard_fraction: float) -> float:
    import skdim  # lazy: scikit-dimension takes seconds to import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(skdim.id.TwoNN(discard_fraction=discard_fraction, dist=True).fit(r).dimension_)


def intrinsic_dimension(latents: torch.Tensor | np.ndarray, n: int | None = None, seed: int = 0,
                        n_bootstrap: int = 200, ci: float = 0.95, discard_fraction: float = 0.1,
                        mle: bool = True, mle_k: int = 20, near_duplicates: str = "remove",
                        duplicate_rtol: float | None = None, inputs: dict | None = None) -> dict:
    """TwoNN intrinsic dimension of latents, with a bootstrap interval and an MLE cross-check.

    Args:
        latents: ``[N, c, h, w]`` (or any ``[N, ...]``) tensor/array; each row is flattened to one point.
        n: number of points used (seeded random subset after de-duplication; ``None`` = all; ``n`` equal to the
            number of input points = all distinct points). Use the same ``n`` for every autoencoder compared.
        seed: subset and bootstrap seed.
        n_bootstrap: bootstrap resamples (0 = no interval).
        ci: interval coverage (percentile bootstrap).
        discard_fraction: TwoNN's fraction of largest ratios discarded (0.1 = Facco et al. / DADApy default; must be
            > 0 with the linear fit).
        mle: also run ``skdim.id.MLE`` (Levina–Bickel, ``K = min(mle_k, n_points - 1)`` neighbours).
        near_duplicates: ``"remove"`` (default: keep one point of each group closer than the tolerance) or
            ``"keep"`` (only count them; the estimate is then flagged as resting on degenerate distances).
        duplicate_rtol: relative tolerance (see :func:`near_duplicate_tolerance`; default from the input dtype).
        inputs: description of what the points are (latent space, posterior mean/sample, image set ...; e.g.
            ``eqvae_lib.autoencoders.latent_description``), copied into the result as ``"inputs"``.

    Returns:
        ``{"twonn": ID, "twonn_ci": [low, high] or None, "twonn_bootstrap_std", "ci", "mle": ID or None, "mle_k",
        "n_points", "n_duplicates_removed" (exact + near), "n_exact_duplicates", "n_near_duplicates",
        "near_duplicates" (the mode), "near_duplicate_tolerance" (dict), "n_degenerate_distances_used",
        "flags": [str], "reliable": bool, "ambient_dim", "estimator": "...", "inputs", "seconds"}``.

    Raises:
        ValueError: if fewer than 3 distinct points remain, ``discard_fraction`` is not in (0, 1), or
            ``near_duplicates`` is not "remove"/"keep".
    """
    t0 = time.time()
    if not 0 < discard_fraction < 1:
        raise ValueError(f"discard_fraction must lie in (0, 1) (skdim's linear fit fails at 0), got "
                         f"{discard_fraction}")
    if near_duplicates not in ("remove", "keep"):
        raise ValueError(f"near_duplicates must be 'remove' or 'keep', got {near_duplicates!r}")
    if isinstance(latents, torch.Tensor):
        eps = float(torch.finfo(latents.dtype).eps) if latents.dtype.is_floating_point else 0.0
    else:
        dt = np.asarray(latents).dtype
        eps = float(np.finfo(dt).eps) if np.issubdtype(dt, np.floating) else 0.0
    x = _as_points(latents)
    n_in = len(x)
    x = np.ascontiguousarray(x)
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()  # one bytes key per point
    _, first = np.unique(rows, return_index=True)
    x = x[np.sort(first)]
    n_exact = n_in - len(x)
    if len(x) < 3:
        raise ValueError(f"need at least 3 distinct points for TwoNN, got {len(x)}")
    tol = near_duplicate_tolerance(x, eps, duplicate_rtol)
    near = _near_duplicate_mask(x, tol["absolute"])
    n_near = int(near.sum())
    if near_duplicates == "remove":
        x = x[~near]
    n_dup = n_exact + (n_near if near_duplicates == "remove" else 0)
    rng = np.random.default_rng(seed)
    if n is not None and n == n_in and len(x) < n:
        n = len(x)  # "all the points given": all distinct ones (the removed duplicates are counted in the result)
    if n is not None:
        if n > len(x):
            raise ValueError(f"n={n} exceeds the {len(x)} distinct points available ({n_exact} exact and {n_near} "
                             "near duplicates found)")
        x = x[np.sort(rng.choice(len(x), size=n, replace=False))]
    if len(x) < 3:
        raise ValueError(f"need at least 3 distinct points for TwoNN, got {len(x)}")
    r = neighbour_distances(x)
    n_degenerate = int((r[:, 0] <= tol["absolute"]).sum())
    flags = []
    if n_degenerate:
        flags.append(f"estimate rests on {n_degenerate} degenerate first-neighbour distance(s) (r1 <= "
                     f"{tol['absolute']:.3g}, round-off level): near-duplicate points were kept; TwoNN/MLE collapse "
                     "towards 0")
    if (n_exact + n_near) > 0.05 * n_in:
        flags.append(f"{n_exact} exact and {n_near} near duplicates among {n_in} points (> 5 %): the estimate "
                     "describes the distinct points only")
    if flags:
        warnings.warn("intrinsic_dimension: " + "; ".join(flags))
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
        import skdim  # lazy: scikit-dimension takes seconds to import

        mle_k = min(mle_k, len(x) - 1)  # K neighbours need K + 1 points
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d_mle = float(skdim.id.MLE(K=mle_k).fit(x).dimension_)
    return {"twonn": d, "twonn_ci": interval, "twonn_bootstrap_std": bstd, "ci": ci, "mle": d_mle,
            "mle_k": mle_k if mle else None, "n_points": int(len(x)), "n_duplicates_removed": int(n_dup),
            "n_exact_duplicates": int(n_exact), "n_near_duplicates": n_near, "near_duplicates": near_duplicates,
            "near_duplicate_tolerance": tol, "n_degenerate_distances_used": n_degenerate, "flags": flags,
            "reliable": not flags, "ambient_dim": int(x.shape[1]),
            "inputs": {**dict(inputs or {}), "points": {"n_given": int(n_in), "ambient_dim": int(x.shape[1])}},
            "estimator": f"TwoNN (scikit-dimension, linear fit, discard_fraction={discard_fraction}) on flattened "
                         "latents; bootstrap over points",
            "seconds": time.time() - t0}


def twonn_at_sizes(points: torch.Tensor | np.ndarray, sizes: list[int] | tuple[int, ...], seed: int = 0,
                   n_bootstrap: int = 0, **kwargs) -> dict[int, dict]:
    """TwoNN of nested prefixes of ``points``: for each m in ``sizes`` the estimate on the FIRST m points (all
    distinct ones, :func:`intrinsic_dimension` with ``n = m``). Called with points of the same images in the same
    order for every autoencoder (and for the images themselves), the estimates are paired: at each size every
    estimate sees the same images, so a difference between autoencoders is not a difference of image samples, and the
    change from the smaller to the larger size shows the estimator's dependence on the sample size (TwoNN is biased
    low when the points are too few for the manifold's dimension).

    Args:
        points: ``[N, ...]`` (each row flattened to one point), in a fixed image order.
        sizes: prefix lengths m (each 3 ≤ m ≤ N).
        seed, n_bootstrap, kwargs: passed to :func:`intrinsic_dimension` (``mle``, ``ci`` ...).

    Returns:
        ``{m: intrinsic_dimension result}`` in the order of ``sizes``.

    Raises:
        ValueError: a size outside [3, N].
    """
    n = len(points)
    bad = [m for m in sizes if not 3 <= int(m) <= n]
    if bad:
        raise ValueError(f"TwoNN sizes {bad} must lie in [3, {n}] (the number of points given)")
    return {int(m): intrinsic_dimension(points[: int(m)], n=int(m), seed=seed, n_bootstrap=n_bootstrap, **kwargs)
            for m in sizes}


@torch.no_grad()
def latent_points(images, encode_fn, batch_size: int = 64, device=None) -> torch.Tensor:
    """Encode all images (tensor ``[N, C, H, W]`` in [-1, 1] or Dataset) → flattened latents ``[N, c·h·w]`` (CPU)."""
    return torch.cat([encode_fn(x.float()).flatten(1).float().cpu() for x in iter_batches(images, batch_size,
                                                                                          device)])
