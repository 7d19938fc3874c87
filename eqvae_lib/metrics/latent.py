"""Statistics of the latent grid itself: roughness (Fig. 1/7 in numbers) and the posterior-noise fraction.

* Roughness (the paper shows smoothness only as PCA pictures, Fig. 1/7): the mean squared difference between
  neighbouring latent cells (horizontal and vertical pairs), divided by the latent's variance:
  ``R = (mean (z[.., i, j+1] − z[.., i, j])² + mean (z[.., i+1, j] − z[.., i, j])²) / 2 / Var(z)``
  (means and the unbiased variance over all images, channels and the cells used). 0 for a constant latent, about 2
  for white noise (independent cells: E(a − b)² = 2 Var); lower = smoother. ``interior=True`` uses only the interior
  cells (the border ring of width ``border`` removed before differences and variance are taken), so that an artefact
  of the encoder's padding at the border does not count as roughness of the latent's content.
* Posterior-noise fraction of a KL autoencoder with posterior q(z|x) = N(μ(x), diag σ²(x)): the share of the latent's
  total variance that is posterior noise,
  ``f = Σ_j E_x[σ_j²(x)] / Σ_j (Var_x[μ_j(x)] + E_x[σ_j²(x)])``,
  j over every latent element (channel × cell), E_x and Var_x over the images (population variance). By the law of
  total variance the denominator is Σ_j Var(z_j) of a sampled latent z = μ + σ·ε, so f ∈ [0, 1]: 0 = a
  deterministic encoder, 1 = posterior collapse (the latent carries no information about x). It tells how much of a
  sampled latent — what the generators are trained on and what the reconstruction metrics decode — is noise.
"""

from __future__ import annotations

import torch


def latent_roughness(z: torch.Tensor, interior: bool = False, border: int = 1) -> float:
    """Roughness ``R`` of latents (module docstring; lower = smoother).

    Args:
        z: latents ``[B, c, h, w]`` (any scale: R is invariant to a global shift and scale).
        interior: drop the border ring of ``border`` cells on each side first (h, w → h − 2·border,
            w − 2·border).
        border: width of the ring in cells (``interior`` only).

    Returns:
        R ≥ 0 (float); 0 for a constant latent, ≈ 2 for white noise.

    Raises:
        ValueError: ``z`` not 4-D, or fewer than 2 × 2 cells left to compare.
    """
    if z.dim() != 4:
        raise ValueError(f"expected latents [B, c, h, w], got shape {tuple(z.shape)}")
    z = z.detach().double()
    if interior:
        if border < 0:
            raise ValueError(f"border must be >= 0, got {border}")
        z = z[..., border:z.shape[-2] - border, border:z.shape[-1] - border]
    if z.shape[-1] < 2 or z.shape[-2] < 2:
        raise ValueError(f"latent grid {tuple(z.shape[-2:])} (after removing a border of {border if interior else 0}"
                         " cells) has no neighbouring cells in both directions; use a larger latent")
    dx = (z[..., :, 1:] - z[..., :, :-1]).pow(2).mean()
    dy = (z[..., 1:, :] - z[..., :-1, :]).pow(2).mean()
    return float((dx + dy) / 2 / z.var().clamp_min(1e-12))


def posterior_noise_fraction(mean: torch.Tensor, std: torch.Tensor) -> dict:
    """Posterior-noise fraction ``f`` of a diagonal-Gaussian posterior (module docstring).

    Args:
        mean: posterior means μ(x) ``[N, c, h, w]`` (N ≥ 2 images; raw latents).
        std: posterior standard deviations σ(x), same shape, ≥ 0.

    Returns:
        ``{"fraction": f in [0, 1], "mean_posterior_var": mean_j E_x σ_j², "mean_signal_var": mean_j Var_x μ_j,
        "n": N, "definition": str}``.

    Raises:
        ValueError: shapes differ, fewer than 2 images, or a negative std.
    """
    if mean.shape != std.shape:
        raise ValueError(f"mean and std shapes differ: {tuple(mean.shape)} vs {tuple(std.shape)}")
    if mean.dim() < 2 or len(mean) < 2:
        raise ValueError(f"need at least 2 images [N, ...] to measure a variance over x, got {tuple(mean.shape)}")
    if bool((std < 0).any()):
        raise ValueError("posterior std has negative entries")
    mu = mean.detach().double().flatten(1)
    var = std.detach().double().flatten(1).pow(2)
    noise = var.mean(0)                       # E_x σ_j², per element j
    signal = mu.var(0, unbiased=False)        # Var_x μ_j, per element j
    total = float((noise + signal).sum())
    return {"fraction": float(noise.sum()) / total if total > 0 else float("nan"),
            "mean_posterior_var": float(noise.mean()), "mean_signal_var": float(signal.mean()), "n": int(len(mu)),
            "definition": "sum_j E_x[sigma_j^2] / sum_j (Var_x[mu_j] + E_x[sigma_j^2]), j over latent elements "
                          "(raw latent)"}
