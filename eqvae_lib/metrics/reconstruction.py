"""Reconstruction quality of an autoencoder: PSNR, SSIM, LPIPS and rFID (paper Table 12, Table 1 "rFID").

Conventions (fixed, and written into every result):
  * Images are float tensors ``[B, C, H, W]`` in ``[-1, 1]``. PSNR and SSIM are computed on **uint8** values
    ``round((x + 1) · 127.5)`` clamped to ``[0, 255]``, per image, then averaged over images — as the official
    EQ-VAE / LDM evaluation does.
  * PSNR (dB) = 10·log10(255² / MSE), MSE over all C·H·W values of one image. Identical images (MSE = 0, PSNR = ∞)
    are counted in ``n_identical`` and left out of the mean (the mean is ∞ only if every image is identical).
  * SSIM: ``skimage.metrics.structural_similarity`` on the uint8 images, ``data_range=255``, channels as
    ``channel_axis``, default 7×7 uniform window (shrunk to the largest odd size ≤ the image side for tiny images).
  * LPIPS: ST-LPIPS (shift-tolerant LPIPS, AlexNet trunk) from ``stlpips-pytorch`` 0.0.2, whose weights ship in the
    package. The original LPIPS variant cannot be used offline (it needs torchvision's downloadable AlexNet/VGG and
    its linear weights are not shipped), so values are **not** directly comparable to the paper's LPIPS column.
    The network and its pre-processing are the loss's (:class:`eqvae_lib.losses.PerceptualLoss` ``"stlpips-alex"`` /
    ``"stlpips-vgg"``, one implementation): grayscale is repeated to RGB and inputs with a side below the trunk's
    minimum (AlexNet 32 px, VGG 16 px) are up-sampled (bilinear).
  * Reconstructions come from the posterior **sample** (the official evaluation) or **mean**: the encoder callable
    decides; the ``latent`` label passed in is recorded in the result.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..losses import PerceptualLoss
from .batching import iter_batches, num_images, to_uint8  # noqa: F401 (re-exported: metrics API)
from .fid import fid_kid

EncodeFn = Callable[[torch.Tensor], torch.Tensor]


def describe_inputs(images, encode_fn=None, inputs: dict | None = None, n: int | None = None,
                    shape: tuple | None = None) -> dict:
    """The ``"inputs"`` entry of a metric result: the latent description carried by ``encode_fn`` (``.inputs``, e.g.
    from ``eqvae_lib.autoencoders.make_encoder``) updated with ``inputs`` (e.g. ``{"image_set": "fashion-mnist
    test"}``), plus the image count and ``[C, H, W]``. Without any description the latent space is recorded as
    ``"unspecified"`` (never guessed)."""
    out = {"latent_space": "unspecified (encode_fn carries no .inputs and none were passed)"}
    out.update(dict(getattr(encode_fn, "inputs", None) or {}))
    out.update(dict(inputs or {}))
    out["images"] = {**dict(out.get("images") or {}), "n": n, "shape_chw": list(shape) if shape else None,
                     "value_range": "[-1, 1]"}
    return out


def inputs_summary(result: dict) -> str:
    """One line saying what a metric result (or a dict of them, e.g. ``pipeline.autoencoder_metrics``) measured:
    latent space with its normalisation, posterior, autoencoder hash, images, and the rFID reference — for records.
    """
    parts = {"": result} if "inputs" in result else {k: v for k, v in result.items()
                                                    if isinstance(v, dict) and "inputs" in v}
    out = []
    for key, r in parts.items():
        inp = r.get("inputs") or {}
        norm = inp.get("normalisation") or {}
        sh, sc = norm.get("shift"), norm.get("scale")
        ns = ""
        if sh is not None and sc is not None:
            uniq = lambda v: f"{v[0]:.5g}" if len(set(v)) == 1 else "[" + ", ".join(f"{a:.4g}" for a in v) + "]"  # noqa: E731
            ns = f" ({'applied' if norm.get('applied') else 'not applied'}: shift {uniq(sh)}, scale {uniq(sc)})"
        img = inp.get("images") or {}
        n_img = img.get("n") if img.get("n") is not None else (inp.get("points") or {}).get("n_given")
        shape = f" {img['shape_chw']}" if img.get("shape_chw") else ""
        text = (f"{inp.get('latent_space', 'unspecified')} latents{ns}, {inp.get('posterior', '?')}, "
                f"AE {inp.get('weights_hash', '?')}, {n_img} images{shape}")
        ref = r.get("rfid_reference") or r.get("reference")
        if ref and r.get("rfid_metric"):
            text += f"; rFID [{r['rfid_metric']}] {ref}"
        out.append(f"{key}: {text}" if key else text)
    return "; ".join(out) if out else "inputs not recorded"
DecodeFn = Callable[[torch.Tensor], torch.Tensor]

SSIM_IMPL = "skimage.metrics.structural_similarity on uint8, data_range=255, 7x7 uniform window"


# ------------------------------------------------------------------------------------------------------- helpers
def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair on uint8 values (see module docstring).

    Args:
        x, y: ``[B, C, H, W]`` in [-1, 1] (float) or uint8, same shape.
    Returns:
        float64 ``[B]``; ``inf`` where the uint8 images are identical.
    """
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    a, b = to_uint8(x).double(), to_uint8(y).double()
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse)  # mse = 0 → inf


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """SSIM of each image pair (``skimage.metrics.structural_similarity``, uint8, ``data_range=255``).

    Args:
        x, y: ``[B, C, H, W]`` in [-1, 1] or uint8. Returns float64 ``[B]`` in [-1, 1] (1 = identical).
    """
    from skimage.metrics import structural_similarity  # lazy: scikit-image takes seconds to import

    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    a = to_uint8(x).cpu().permute(0, 2, 3, 1).numpy()
    b = to_uint8(y).cpu().permute(0, 2, 3, 1).numpy()
    side = min(a.shape[1], a.shape[2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"images of {a.shape[1]}x{a.shape[2]} px are too small for SSIM (need at least 3 px)")
    out = np.empty(len(a))
    for i in range(len(a)):
        if a.shape[3] == 1:
            out[i] = structural_similarity(a[i, ..., 0], b[i, ..., 0], data_range=255, win_size=win)
        else:
            out[i] = structural_similarity(a[i], b[i], data_range=255, channel_axis=2, win_size=win)
    return out


class LPIPS:
    """ST-LPIPS distance (Ghildyal & Liu 2022; ``stlpips-pytorch``), shipped weights, no download: the metric face of
    the loss's perceptual network :class:`eqvae_lib.losses.PerceptualLoss` (``"stlpips-<net>"``), the one place that
    builds it and prepares its inputs.

    Args:
        net: ``"alex"`` (default) or ``"vgg"`` trunk.
        device: where the network runs (default: CPU).
    Call ``lpips(x, y)`` with ``[B, C, H, W]`` images in [-1, 1] (C = 1 or 3) → float32 ``[B]`` on CPU (0 =
    identical), without gradients. ``name`` names the network and the input up-sampling for results (the loss's
    rule: sides below 32 px for AlexNet, 16 px for VGG16, are up-sampled; before the kit had one LPIPS, the metric
    up-sampled VGG16 inputs below 32 px, so VGG16 values of 16–31 px images differ from older records).

    Raises:
        ValueError: another ``net``; a shape mismatch of ``x`` and ``y`` (at call time).
        RuntimeError: ``stlpips-pytorch`` missing (from :class:`~eqvae_lib.losses.PerceptualLoss`).
    """

    def __init__(self, net: str = "alex", device: torch.device | str | None = None):
        if net not in ("alex", "vgg"):
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.perceptual = PerceptualLoss(f"stlpips-{net}").to(self.device).eval()
        self.net = net
        self.name = (f"ST-LPIPS ({'AlexNet' if net == 'alex' else 'VGG16'}, shift-tolerant, stlpips-pytorch 0.0.2; "
                     f"inputs below {self.perceptual.min_side} px up-sampled)")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
        return self.perceptual(x.to(self.device).float(), y.to(self.device).float()).flatten().cpu()


_LPIPS_CACHE: dict = {}


def get_lpips(net: str = "alex", device: torch.device | str | None = None) -> LPIPS:
    """A shared :class:`LPIPS` instance per (net, device) — building one takes ~0.5 s."""
    key = (net, str(device or "cpu"))
    if key not in _LPIPS_CACHE:
        _LPIPS_CACHE[key] = LPIPS(net, device)
    return _LPIPS_CACHE[key]


def summarize_psnr(values: torch.Tensor | np.ndarray) -> dict:
    """Mean/std of per-image PSNR with identical images (∞) counted apart: ``{"psnr", "psnr_std", "n_identical"}``."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    n_identical = int(np.sum(np.isposinf(v)))
    if len(finite) == 0:
        return {"psnr": math.inf if len(v) else math.nan, "psnr_std": 0.0, "n_identical": n_identical}
    return {"psnr": float(finite.mean()), "psnr_std": float(finite.std()), "n_identical": n_identical}


# --------------------------------------------------------------------------------------------------- the metric
@torch.no_grad()
def reconstruction_metrics(images: torch.Tensor | Dataset, encode_fn: EncodeFn, decode_fn: DecodeFn, *,
                           latent: str = "sample", extractor=None, kid: bool | None = None,
                           lpips: bool | str = "alex", ssim: bool = True, batch_size: int = 32,
                           device: torch.device | str | None = None, return_per_image: bool = False,
                           verbose: bool = False, inputs: dict | None = None) -> dict:
    """Reconstruction quality of ``decode_fn(encode_fn(x))`` against ``x`` (paper Table 12; rFID of Tables 1, 5, 6).

    Args:
        images: ``[N, C, H, W]`` in [-1, 1], or a Dataset of ``(x, label)``.
        encode_fn: images ``[B, C, H, W]`` → latents ``[B, c, h, w]`` (posterior sample or mean — say which in
            ``latent``).
        decode_fn: latents → images ``[B, C, H, W]`` in about [-1, 1].
        latent: ``"sample"`` (official evaluation) or ``"mean"``; recorded in the result, not enforced.
        extractor: a :class:`eqvae_lib.metrics.extractors.FeatureExtractor` for rFID (and KID), or ``None`` to skip rFID.
        kid: compute KID beside rFID (``None`` = when N < 10 000).
        lpips: ``"alex"`` / ``"vgg"`` (ST-LPIPS trunk) or ``False`` to skip.
        ssim: compute SSIM.
        batch_size: images per encoder/decoder call.
        device: move each batch there before ``encode_fn`` (``None`` = leave as is).
        return_per_image: add ``"per_image": {"psnr": [...], "ssim": [...], "lpips": [...]}``.
        inputs: description of the inputs (image set, latent ...), merged into ``"inputs"`` (:func:`describe_inputs`).

    Returns:
        dict with ``n``, ``latent``, ``psnr`` (dB, mean over images), ``psnr_std``, ``n_identical``, ``ssim``,
        ``ssim_impl``, ``lpips``, ``lpips_net``, ``rfid`` (or None), ``rfid_metric`` (the extractor's metric name),
        ``kid_mean``/``kid_std``/``kid_subset_size`` (None when not computed), ``fid_details`` (see
        :func:`eqvae_lib.metrics.fid.fid_kid`), ``inputs`` (what was measured: latent space and normalisation,
        posterior mean/sample, images), ``rfid_reference`` (paired: the input images themselves).

    Raises:
        ValueError: if a reconstruction's shape differs from its input's.
    """
    lp = get_lpips(lpips, device) if lpips else None
    psnrs, ssims, lpipss, f_real, f_fake = [], [], [], [], []
    shape = None
    for x in iter_batches(images, batch_size, device):
        x = x.float()
        shape = tuple(x.shape[1:])
        x_hat = decode_fn(encode_fn(x)).float()
        if x_hat.shape != x.shape:
            raise ValueError(f"reconstruction shape {tuple(x_hat.shape)} differs from input {tuple(x.shape)}")
        psnrs.append(psnr_per_image(x, x_hat).cpu())
        if ssim:
            ssims.append(ssim_per_image(x, x_hat))
        if lp is not None:
            lpipss.append(lp(x, x_hat))
        if extractor is not None:
            f_real.append(extractor.batch_features(x))
            f_fake.append(extractor.batch_features(x_hat))
    if not psnrs:
        raise ValueError("no images to evaluate")
    psnr_all = torch.cat(psnrs).numpy()
    out = {"n": int(len(psnr_all)), "latent": latent, **summarize_psnr(psnr_all),
           "inputs": describe_inputs(images, encode_fn, inputs, int(len(psnr_all)), shape),
           "rfid_reference": None,
           "psnr_impl": "per image on uint8 values (round((x+1)*127.5)), then averaged"}
    ssim_all = np.concatenate(ssims) if ssims else None
    lpips_all = torch.cat(lpipss).numpy() if lpipss else None
    out["ssim"] = float(ssim_all.mean()) if ssim_all is not None else None
    out["ssim_impl"] = SSIM_IMPL if ssim else None
    out["lpips"] = float(lpips_all.mean()) if lpips_all is not None else None
    out["lpips_net"] = lp.name if lp is not None else None
    out.update({"rfid": None, "rfid_metric": None, "kid_mean": None, "kid_std": None, "kid_subset_size": None,
                "fid_details": None})
    if extractor is not None:
        res = fid_kid(torch.cat(f_fake), torch.cat(f_real), kid=kid)
        out.update({"rfid": res["fid"], "rfid_metric": extractor.metric_name, "kid_mean": res["kid_mean"],
                    "kid_std": res["kid_std"], "kid_subset_size": res["kid_subset_size"],
                    "fid_details": {**res, **extractor.describe()},
                    "rfid_reference": "paired: the same N input images x (FID of D(E(x)) against x), not a "
                                      "separate reference set"})
    if return_per_image:
        out["per_image"] = {"psnr": psnr_all.tolist(),
                            "ssim": ssim_all.tolist() if ssim_all is not None else None,
                            "lpips": lpips_all.tolist() if lpips_all is not None else None}
    return out
