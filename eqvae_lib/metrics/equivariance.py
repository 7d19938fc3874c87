"""Equivariance of an autoencoder: the latent error Δ (paper App. C.3, Table 1) and decoder-side equivariance
(Fig. 3, Fig. 2/6).

* Latent equivariance error (App. C.3):
  Δ(τ) = mean over images x of ‖τ∘E(x) − E(τ∘x)‖² / ‖E(τ∘x)‖²  (squared L2 norms over all latent values of one image),
  Δ_R = mean of Δ(τ) over T_R = {90°, 180°, 270°} and Δ_S = mean over T_S = {0.25, 0.5, 0.75} (isotropic scales).
  The encoder callable decides which latent is used (posterior **mean** by default in the kit's audit: a sample adds
  encoder noise to both terms); the label is recorded in the result. Raw latents: Δ is invariant to a per-model
  scale factor but not to a shift or a per-channel scale, so the kit passes raw (unshifted) latents by default, which
  is what the paper's numbers correspond to (``eqvae_lib.autoencoders.latent_description`` explains the choice).
  Every result carries ``"inputs"``: the latent space (raw / normalised with its shift and scale), posterior mean or
  sample, the autoencoder's weights hash and the images (from ``encode_fn.inputs`` of
  ``eqvae_lib.autoencoders.make_encoder``, plus the ``inputs`` argument).
* Decoder-side equivariance (Fig. 3): the target τ∘x against the decoded transformed latent D(τ∘E(x)), measured
  with PSNR (always) and rFID (when a feature extractor is given), per scale s and averaged over the rotations.

τ is :class:`eqvae_lib.transforms.Transform` applied identically to image and latent (interpolation ``mode``: the
official code's bilinear, no antialias, by default). Scaled image and latent sizes must match the encoder's
downsampling factor exactly (e.g. 256 px / 32 cells at s = 0.25, 0.5, 0.75); otherwise a ``ValueError`` says so.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..transforms import Transform, evaluation_transforms
from .batching import iter_batches
from .fid import fid_kid
from .reconstruction import DecodeFn, EncodeFn, describe_inputs, psnr_per_image, summarize_psnr

DEFAULT_SCALES = (0.25, 0.5, 0.75)


def evaluation_set(kinds: Sequence[str] = ("rotation", "scale"), scales: Sequence[float] = DEFAULT_SCALES,
                   mode: str = "bilinear") -> list[Transform]:
    """The transforms of App. C.3: T_R (``"rotation"``: 90°, 180°, 270°) and/or T_S (``"scale"``: ``scales``)."""
    out: list[Transform] = []
    for kind in kinds:
        out += evaluation_transforms(kind, tuple(scales), mode=mode) if kind == "scale" else \
            evaluation_transforms(kind, mode=mode)
    return out


def _check_same(a: torch.Tensor, b: torch.Tensor, t: Transform, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{t.describe()}: {what} shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}; the scale "
                         "must map the image and latent grids to sizes that differ by exactly the downsampling "
                         "factor (choose scales s with latent_side·s an integer)")


@torch.no_grad()
def equivariance_error(images: torch.Tensor | Dataset, encode_fn: EncodeFn, *,
                       kinds: Sequence[str] = ("rotation", "scale"), scales: Sequence[float] = DEFAULT_SCALES,
                       mode: str = "bilinear", latent: str = "mean", batch_size: int = 64,
                       device: torch.device | str | None = None, inputs: dict | None = None) -> dict:
    """Latent equivariance error Δ of App. C.3 (Table 1's Δ_R, Δ_S).

    Args:
        images: ``[N, C, H, W]`` in [-1, 1] or a Dataset of ``(x, label)``.
        encode_fn: images ``[B, C, H, W]`` → latents ``[B, c, h, w]`` (raw).
        kinds: ``"rotation"`` (T_R) and/or ``"scale"`` (T_S).
        scales: the scale factors of T_S (fraction of the side, ≤ 1).
        mode: interpolation of the scaling, on image and latent alike.
        latent: ``"mean"`` or ``"sample"`` — the latent ``encode_fn`` returns; recorded in the result.
        batch_size: images per encoder call. device: where batches go before ``encode_fn``.

    Returns:
        ``{"delta": mean over all τ, "delta_R": mean over rotations (or None), "delta_S": mean over scales (or None),
        "per_transform": {label: Δ(τ)} with labels "rot90", "rot180", "rot270", "s0.25", ...,
        "per_transform_std": {label: std over images}, "n", "latent", "mode", "scales", "definition", "inputs"}``
        (``inputs``: latent space and normalisation, posterior, autoencoder, images; see the module docstring).

    Raises:
        ValueError: on mismatched latent shapes (scale incompatible with the grid) or no images.
    """
    transforms = evaluation_set(kinds, scales, mode)
    per: dict[str, list[torch.Tensor]] = {t.describe(): [] for t in transforms}
    n = 0
    shape = None
    for x in iter_batches(images, batch_size, device):
        x = x.float()
        shape = tuple(x.shape[1:])
        z = encode_fn(x).float()
        n += len(x)
        for t in transforms:
            a = t(z)
            b = encode_fn(t(x)).float()
            _check_same(a, b, t, "τ∘E(x) and E(τ∘x)")
            num = (a - b).pow(2).flatten(1).sum(1)
            den = b.pow(2).flatten(1).sum(1).clamp_min(1e-12)
            per[t.describe()].append((num / den).double().cpu())
    if n == 0:
        raise ValueError("no images to evaluate")
    vals = {k: torch.cat(v) for k, v in per.items()}
    means = {k: float(v.mean()) for k, v in vals.items()}
    rot = [means[t.describe()] for t in transforms if t.k and not t.scales]
    sca = [means[t.describe()] for t in transforms if t.scales]
    return {"delta": float(np.mean(list(means.values()))),
            "delta_R": float(np.mean(rot)) if rot else None,
            "delta_S": float(np.mean(sca)) if sca else None,
            "per_transform": means,
            "per_transform_std": {k: float(v.std()) if len(v) > 1 else 0.0 for k, v in vals.items()},
            "n": n, "latent": latent, "mode": mode, "scales": list(scales) if "scale" in kinds else [],
            "definition": "mean over tau and images of ||tau(E(x)) - E(tau(x))||^2 / ||E(tau(x))||^2 "
                          "(EQ-VAE App. C.3)",
            "inputs": describe_inputs(images, encode_fn, inputs, n, shape)}


def scale_label(scale: float, mode: str = "bilinear") -> str:
    """The ``per_transform`` label of the isotropic scale ``scale`` in :func:`equivariance_error`'s result
    (``"s0.25"``)."""
    return evaluation_set(("scale",), (float(scale),), mode)[0].describe()


def delta_over_scales(result: dict, scales: Sequence[float]) -> float | None:
    """Δ_S over a chosen set of scales: the mean of ``result["per_transform"]`` (an :func:`equivariance_error`
    result) over the labels of ``scales`` — e.g. the paper's T_S = {0.25, 0.5, 0.75} or the scales a fine-tune trained
    on. ``None`` for an empty ``scales``.

    Raises:
        ValueError: a scale that was not evaluated (naming it and the evaluated ones), or two scales sharing one label.
    """
    labels = [scale_label(s, result.get("mode", "bilinear")) for s in scales]
    if len(set(labels)) != len(labels):
        raise ValueError(f"scales {list(scales)} share labels {labels}: evaluate scales at least 0.01 apart")
    missing = [s for s, lab in zip(scales, labels) if lab not in result["per_transform"]]
    if missing:
        raise ValueError(f"scales {missing} were not evaluated (evaluated: {result.get('scales')}); pass them to "
                         "equivariance_error(scales=...)")
    return float(np.mean([result["per_transform"][lab] for lab in labels])) if labels else None


@torch.no_grad()
def decoder_equivariance(images: torch.Tensor | Dataset, encode_fn: EncodeFn, decode_fn: DecodeFn, *,
                         scales: Sequence[float] = DEFAULT_SCALES, rotations: bool = True,
                         include_identity: bool = True, mode: str = "bilinear", latent: str = "mean",
                         extractor=None, kid: bool | None = None, batch_size: int = 32,
                         device: torch.device | str | None = None, inputs: dict | None = None) -> dict:
    """Decoder-side equivariance (Fig. 3): τ∘x vs D(τ∘E(x)) for each scale s and each rotation.

    Args:
        images, encode_fn, decode_fn, mode, latent, batch_size, device: as in :func:`equivariance_error`.
        scales: the s of Fig. 3. rotations: also evaluate 90°, 180°, 270°.
        include_identity: also evaluate τ = identity (plain reconstruction D(E(x)), the reference point).
        extractor: :class:`eqvae_lib.metrics.extractors.FeatureExtractor` for rFID (``None``: PSNR only).
        kid: also KID per τ (``None`` = when N < 10 000; only with an extractor).

    Returns:
        ``{"per_transform": {label: {"psnr", "psnr_std", "n_identical", "rfid", "kid_mean", "kid_std",
        "kid_subset_size"}}`` with labels ``"identity"``, ``"s0.25"``, ..., ``"rot90"``, ...;
        ``"per_scale": {"0.25": {...}, ...}`` (same entries); ``"rotation_mean": {"psnr", "rfid", "kid_mean"}``
        (averages over the three rotations, Fig. 3's rotation point); ``"rfid_metric"`` (extractor metric name or
        None); ``"n"``, ``"latent"``, ``"mode"``, ``"inputs"`` (as :func:`equivariance_error`), ``"reference"`` (what
        PSNR/rFID compare with: τ∘x of the same images), ``"extractor"`` (its description or None)}``. PSNR in dB on
        uint8 values, per image then averaged.
    """
    transforms: list[Transform] = [Transform(mode=mode)] if include_identity else []
    transforms += evaluation_transforms("scale", tuple(scales), mode=mode) if scales else []
    transforms += evaluation_transforms("rotation", mode=mode) if rotations else []
    psnrs = {t.describe(): [] for t in transforms}
    feats = {t.describe(): ([], []) for t in transforms}
    n = 0
    shape = None
    for x in iter_batches(images, batch_size, device):
        x = x.float()
        shape = tuple(x.shape[1:])
        z = encode_fn(x)
        n += len(x)
        for t in transforms:
            target = t(x)
            out = decode_fn(t(z)).float()
            _check_same(target, out, t, "τ∘x and D(τ∘E(x))")
            key = t.describe()
            psnrs[key].append(psnr_per_image(target, out).cpu())
            if extractor is not None:
                feats[key][0].append(extractor.batch_features(target))
                feats[key][1].append(extractor.batch_features(out))
    if n == 0:
        raise ValueError("no images to evaluate")
    per: dict[str, dict] = {}
    for t in transforms:
        key = t.describe()
        entry = summarize_psnr(torch.cat(psnrs[key]).numpy())
        entry.update({"rfid": None, "kid_mean": None, "kid_std": None, "kid_subset_size": None})
        if extractor is not None:
            res = fid_kid(torch.cat(feats[key][1]), torch.cat(feats[key][0]), kid=kid)
            entry.update({"rfid": res["fid"], "kid_mean": res["kid_mean"], "kid_std": res["kid_std"],
                          "kid_subset_size": res["kid_subset_size"]})
        per[key] = entry
    rot_keys = [t.describe() for t in transforms if t.k]
    rotation_mean = None
    if rot_keys:
        def avg(field):
            v = [per[k][field] for k in rot_keys]
            return None if any(a is None for a in v) else float(np.mean(v))
        rotation_mean = {"psnr": avg("psnr"), "rfid": avg("rfid"), "kid_mean": avg("kid_mean")}
    per_scale = {f"{t.sx:g}": per[t.describe()] for t in transforms if t.scales}
    return {"per_transform": per, "per_scale": per_scale, "rotation_mean": rotation_mean,
            "rfid_metric": extractor.metric_name if extractor is not None else None,
            "n": n, "latent": latent, "mode": mode, "inputs": describe_inputs(images, encode_fn, inputs, n, shape),
            "reference": "paired: tau(x) of the same N images (PSNR and rFID of D(tau(E(x))) against tau(x))",
            "extractor": extractor.describe() if extractor is not None else None}


@torch.no_grad()
def transformed_decodings(x: torch.Tensor, encode_fn: EncodeFn, decode_fn: DecodeFn,
                          transform: Transform) -> dict[str, torch.Tensor]:
    """The images of Fig. 2/6 for one batch ``x`` ``[B, C, H, W]`` in [-1, 1] and one τ:
    ``{"input": x, "target": τ∘x, "decode_transformed_latent": D(τ∘E(x)),
    "decode_latent_of_transformed": D(E(τ∘x))}`` — all ``[B, C, H', W']`` in about [-1, 1]."""
    z = encode_fn(x)
    return {"input": x, "target": transform(x), "decode_transformed_latent": decode_fn(transform(z)),
            "decode_latent_of_transformed": decode_fn(encode_fn(transform(x)))}
