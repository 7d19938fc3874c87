"""FID / KID statistics through torch-fidelity: the Fréchet statistics of a feature set, the distances between two
sets, and cached reference statistics. The features come from :mod:`.extractors`.

Reference statistics (μ, Σ and the features, for KID) of a real image set are cached under a key made of the hash
of the uint8 image data, the extractor's weights hash, its layer and N — torch-fidelity's own cache key ignores
data and weights (SPEC §5). Precomputed statistics (ADM's ImageNet-256 ``.npz`` with ``mu``/``sigma``) are read by
:func:`load_reference_npz`; the Fréchet distance against them is :func:`frechet_distance` (torch-fidelity cannot
read them). Image-vs-image FID uses torch-fidelity's own statistics code; KID uses torch-fidelity's (polynomial
kernel, 100 subsets, subset size min(1000, N)).

All sample counts are parameters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from scipy import linalg
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

from ..io import atomic_torch_save, hash_obj
from .extractors import FeatureExtractor, cache_root
from .fid_inputs import UInt8ImageDataset, images_hash


@dataclass
class FeatureStats:
    """Fréchet statistics of a feature set: ``mu`` float64 ``[D]``, ``sigma`` float64 ``[D, D]``, ``n`` samples;
    ``features`` ``[n, D]`` when known (needed for KID); ``key``: cache key; ``source``: provenance."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: torch.Tensor | None = None
    key: str | None = None
    source: str = ""


def feature_stats(features: torch.Tensor, keep_features: bool = True, source: str = "") -> FeatureStats:
    """μ and Σ (unbiased, float64) of ``features`` ``[N, D]`` with torch-fidelity's ``fid_features_to_statistics``."""
    if features.dim() != 2 or len(features) < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {tuple(features.shape)}")
    st = fid_features_to_statistics(features.detach().cpu().double())
    return FeatureStats(st["mu"], st["sigma"], int(len(features)), features.float() if keep_features else None,
                        source=source)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}) between two Gaussians (Heusel et al. 2017),
    computed as the ADM / pytorch-fid evaluators do (``scipy.linalg.sqrtm``; ``eps``·I added to both Σ if the
    product is singular; imaginary parts from rounding dropped).

    Raises:
        ValueError: on mismatched shapes or a large imaginary component.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"incompatible statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm(Σ1Σ2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def load_reference_npz(path: str | os.PathLike) -> FeatureStats:
    """Read precomputed reference statistics (ADM's ``VIRTUAL_imagenet256_labeled.npz`` etc.: keys ``mu``,
    ``sigma``; Inception pool3). Usable with :func:`fid_kid` / :func:`compute_fid` (FID only, no KID).

    Raises:
        FileNotFoundError / KeyError: naming the file and the keys found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file {path} not found")
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z.files or "sigma" not in z.files:
            raise KeyError(f"{path} has keys {z.files}; expected 'mu' and 'sigma' (ADM reference batch format)")
        mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    return FeatureStats(mu, sigma, n=-1, features=None, key=f"npz:{path.name}", source=str(path))


def fid_kid(a: torch.Tensor | FeatureStats, b: torch.Tensor | FeatureStats, kid: bool | None = None,
            kid_subset_size: int = 1000, kid_subsets: int = 100, seed: int = 2020) -> dict:
    """FID (and KID) between two feature sets, or a feature set and statistics.

    Args:
        a, b: features ``[N, D]`` or :class:`FeatureStats`.
        kid: compute KID (torch-fidelity, polynomial kernel); ``None`` = when both feature sets are known and
            min(N) < 10 000. Subset size is min(``kid_subset_size``, N_a, N_b).
    Returns:
        ``{"fid", "fid_impl", "kid_mean", "kid_std", "kid_subset_size", "kid_subsets", "n1", "n2"}``; ``fid_impl`` is
        ``"torch-fidelity"`` when both sides have features, ``"frechet_distance (own, scipy sqrtm)"`` otherwise.
    """
    sa = a if isinstance(a, FeatureStats) else feature_stats(a)
    sb = b if isinstance(b, FeatureStats) else feature_stats(b)
    if sa.mu.shape != sb.mu.shape:
        raise ValueError(f"feature dimensions differ: {sa.mu.shape[0]} vs {sb.mu.shape[0]} (different extractors?)")
    both = sa.features is not None and sb.features is not None
    if both:
        fid = fid_statistics_to_metric({"mu": sa.mu, "sigma": sa.sigma}, {"mu": sb.mu, "sigma": sb.sigma},
                                       False)[KEY_METRIC_FID]
        impl = "torch-fidelity"
    else:
        fid, impl = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), "frechet_distance (own, scipy sqrtm)"
    out = {"fid": float(fid), "fid_impl": impl, "kid_mean": None, "kid_std": None, "kid_subset_size": None,
           "kid_subsets": None, "n1": sa.n, "n2": sb.n}
    if kid is None:
        kid = both and min(sa.n, sb.n) < 10_000
    if kid:
        if not both:
            raise ValueError("KID needs the features of both sets (precomputed statistics have none)")
        m = int(min(kid_subset_size, sa.n, sb.n))
        res = kid_features_to_metric(sa.features.double(), sb.features.double(), kid_subsets=kid_subsets,
                                     kid_subset_size=m, verbose=False, rng_seed=seed)
        out.update({"kid_mean": float(res[KEY_METRIC_KID_MEAN]), "kid_std": float(res[KEY_METRIC_KID_STD]),
                    "kid_subset_size": m, "kid_subsets": kid_subsets})
    return out

def reference_statistics(images: torch.Tensor | Dataset, extractor: FeatureExtractor, n: int | None = None,
                         batch_size: int = 64, cache_dir: str | os.PathLike | None = None, cache: bool = True,
                         verbose: bool = True) -> FeatureStats:
    """Statistics (and features) of a real image set, computed once and cached.

    Args:
        images: ``[N, C, H, W]`` in [-1, 1] or a Dataset; the first ``n`` are used (``None`` = all).
    The cache key hashes the uint8 data of those ``n`` images, the extractor's weights hash and layer, and ``n``;
    the file is ``cache_dir/fid_stats/<extractor>-<key>.pt`` (torch tensors, loaded with ``weights_only=True``).
    """
    if n is not None:
        if n > len(images):
            raise ValueError(f"n={n} exceeds the {len(images)} images available")
        images = images[:n] if isinstance(images, torch.Tensor) else torch.utils.data.Subset(images, range(n))
    n = len(images)
    data_hash = images_hash(images)
    key = hash_obj({"data": data_hash, "n": n, "extractor": extractor.fidelity_name,
                    "weights": extractor.weights_hash, "layer": extractor.layer})
    path = cache_root(cache_dir) / "fid_stats" / f"{extractor.fidelity_name}-{key}.pt"
    source = f"{extractor.metric_name}; data {data_hash}; n={n}"
    if cache and path.is_file():
        d = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureStats(d["mu"].numpy(), d["sigma"].numpy(), int(d["n"]), d["features"], key, source)
    feats = extractor.features(images, batch_size=batch_size, verbose=verbose)
    st = feature_stats(feats, source=source)
    st.key = key
    if cache:
        atomic_torch_save({"mu": torch.from_numpy(st.mu), "sigma": torch.from_numpy(st.sigma), "n": n,
                           "features": feats, "data_hash": data_hash, "weights_hash": extractor.weights_hash}, path)
    return st


def compute_fid(images: torch.Tensor | Dataset, reference: torch.Tensor | Dataset | FeatureStats,
                extractor: FeatureExtractor, kid: bool | None = None, batch_size: int = 64,
                cache_dir: str | os.PathLike | None = None, verbose: bool = True, inputs: dict | None = None) -> dict:
    """FID (and KID) of ``images`` against ``reference`` (images — statistics cached by
    :func:`reference_statistics` — or :class:`FeatureStats`, e.g. from :func:`load_reference_npz`).

    Args:
        inputs: description of the two sets (e.g. ``{"images": "DiT-B/2 samples, seed 0", "reference_chosen":
            "first 1000 test images"}``), merged into ``"inputs"``.

    Returns :func:`fid_kid`'s dict plus ``metric`` (the extractor's metric name), ``extractor``, ``feature_layer``,
    ``weights_hash``, ``reference_key``, ``reference`` (``{"key", "source", "n", "kind"}``: what the images were
    compared with) and ``inputs`` (the compared images' count and ``[C, H, W]`` plus ``inputs``).
    """
    ref = reference if isinstance(reference, FeatureStats) else reference_statistics(
        reference, extractor, batch_size=batch_size, cache_dir=cache_dir, verbose=verbose)
    feats = extractor.features(images, batch_size=batch_size, verbose=verbose)
    out = fid_kid(feats, ref, kid=kid)
    kind = ("precomputed statistics (FeatureStats)" if isinstance(reference, FeatureStats)
            else "reference images (statistics computed/cached by reference_statistics)")
    first = images[:1] if isinstance(images, torch.Tensor) else None
    shape = list(first.shape[1:]) if first is not None and len(first) else None
    out.update({**extractor.describe(), "reference_key": ref.key,
                "reference": {"key": ref.key, "source": ref.source, "n": ref.n, "kind": kind},
                "inputs": {**dict(inputs or {}), "images": {"n": len(images), "shape_chw": shape}}})
    return out


def torch_fidelity_metrics(input1: torch.Tensor | Dataset, input2: torch.Tensor | Dataset,
                           extractor: FeatureExtractor, fid: bool = True, kid: bool = False, prc: bool = False,
                           batch_size: int = 64, cache_input2: bool = False,
                           cache_dir: str | os.PathLike | None = None, verbose: bool = False, **kwargs) -> dict:
    """Call ``torch_fidelity.calculate_metrics`` directly on two image sets with this extractor (images wrapped by
    :class:`UInt8ImageDataset`; ``save_cpu_ram=True``, i.e. no DataLoader workers).

    ``cache_input2`` caches input2's features in torch-fidelity's cache (``cache_dir/torch-fidelity``) under a name
    holding the hashes of its data and of the extractor weights. Extra ``kwargs`` go to ``calculate_metrics``.
    Returns torch-fidelity's dict plus ``metric`` and the extractor description.
    """
    ds1, ds2 = UInt8ImageDataset(input1), UInt8ImageDataset(input2)
    args: dict[str, Any] = dict(input1=ds1, input2=ds2, fid=fid, kid=kid, prc=prc, batch_size=batch_size,
                                save_cpu_ram=True, verbose=verbose, cache=False,
                                **extractor.calculate_metrics_kwargs())
    if kid:
        args["kid_subset_size"] = min(1000, len(ds1), len(ds2))
    if cache_input2:
        name = f"ref-{images_hash(input2)}-{extractor.weights_hash}-n{len(ds2)}"
        args.update(cache=True, cache_root=str(cache_root(cache_dir) / "torch-fidelity"), input2_cache_name=name)
    args.update(kwargs)
    res = dict(torch_fidelity.calculate_metrics(**args))
    res.update(extractor.describe())
    return res
