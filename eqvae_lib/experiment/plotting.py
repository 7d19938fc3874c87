"""One figure style for the kit; every figure saved as PNG and PDF with a caption that states its scale.

Figures go to ``figures/<profile>/`` (only the reference ``cpu`` run's are committed). Each saved figure is listed
in ``figures/<profile>/index.json`` with its caption, so the report can build a figure index.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from torchvision.utils import make_grid

from ..io import atomic_path, atomic_write_json
from ..metrics import latent as latent_metrics
from .config import FIGURES_DIR

COLORS = {"base": "#7f7f7f", "plain": "#1f77b4", "eq": "#d62728", "paper": "#2ca02c"}


def setup() -> None:
    """Apply the kit's matplotlib style (readable sizes, light grid)."""
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False, "font.size": 10,
                         "legend.frameon": False})


def figures_dir(profile: str) -> Path:
    return FIGURES_DIR / profile


def save_figure(fig, name: str, caption: str, profile: str) -> Path:
    """Save ``fig`` as ``figures/<profile>/<name>.png`` and ``.pdf`` (atomically) and index its caption.

    The caption must say at what scale the figure was made (dataset, resolution, autoencoder), e.g. from
    :func:`scale_note`, so nobody mistakes a small-scale run for the paper's. Returns the PNG path.
    """
    folder = figures_dir(profile)
    folder.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        with atomic_path(folder / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight")
    index_path = folder / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[name] = caption
    atomic_write_json(index_path, dict(sorted(index.items())))
    return folder / f"{name}.png"


def scale_note(dataset: str, image_size: int, ae: str, profile: str, extra: str = "",
               paper_ae: str = "SD-VAE") -> str:
    """Caption suffix naming the scale: e.g. "Scale: Fashion-MNIST 64 px, kit-trained small-f4 AE, profile cpu
    (not the paper's ImageNet 256 px / SD-VAE)." ``paper_ae`` names the paper's autoencoder for this claim
    (``"VQ-GAN"`` for the discrete path)."""
    s = f"Scale: {dataset} {image_size} px, {ae}, profile {profile}"
    if profile != "paper":
        s += f" (not the paper's ImageNet 256 px / {paper_ae})"
    return s + (f"; {extra}" if extra else "") + "."


def image_grid(images, nrow: int = 8):
    """``[B, C, H, W]`` in [-1, 1] → a numpy ``[H', W', 3]`` (or ``[H', W']``) array in [0, 1] for ``imshow``."""
    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=1, pad_value=1.0,
                     normalize=True, value_range=(-1, 1))
    arr = grid.permute(1, 2, 0).numpy()
    return arr[..., 0] if images.shape[1] == 1 else arr


def latent_pca_rgb(z):
    """First three principal components of latents as RGB (Fig. 1 left / Fig. 7).

    Args:
        z: latents ``[B, c, h, w]`` (c ≥ 3). The PCA is fitted on all B·h·w latent cells (each a c-vector).
    Returns:
        numpy ``[B, h, w, 3]`` in [0, 1] (each component min-max scaled over the batch).
    """
    from sklearn.decomposition import PCA  # lazy: sklearn takes seconds to import; only Fig. 7 needs the PCA

    b, c, h, w = z.shape
    cells = z.detach().float().cpu().permute(0, 2, 3, 1).reshape(-1, c).numpy()
    comp = PCA(n_components=3, random_state=0).fit_transform(cells)
    comp = (comp - comp.min(0)) / np.maximum(comp.max(0) - comp.min(0), 1e-12)
    return comp.reshape(b, h, w, 3)


def latent_roughness(z) -> float:
    """Mean squared difference between neighbouring latent cells (horizontal and vertical), divided by the latent's
    variance: 0 for a constant latent, about 2 for white noise. Lower = smoother. Input ``[B, c, h, w]``."""
    return latent_metrics.latent_roughness(z)  # one definition: eqvae_lib.metrics.latent
