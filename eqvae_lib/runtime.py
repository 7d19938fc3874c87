"""Paths, seeding and device choice: the few environment facts the method library needs.

This module sits at the bottom of the import graph (it imports no other module of the kit), so the method library
(data, autoencoders, losses, training loops, metrics) can use it without importing the experiment layer
(``config``/profiles, ``pipeline``/caches, records, plotting, paper values).

``REPO_ROOT``  the checkout (parent of this package).
``DATA_DIR``   datasets and caches (git-ignored); override with the environment variable ``EQVAE_DATA``.
``RUNS_DIR``   executed notebooks and result records (git-ignored); ``EQVAE_RUNS``.
``FIGURES_DIR`` generated figures and tables (committed for the reference ``cpu`` run); ``EQVAE_FIGURES``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("EQVAE_DATA", REPO_ROOT / "data"))
RUNS_DIR = Path(os.environ.get("EQVAE_RUNS", REPO_ROOT / "runs"))
FIGURES_DIR = Path(os.environ.get("EQVAE_FIGURES", REPO_ROOT / "figures"))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and all CUDA devices)."""
    import torch  # lazy: keeps `import eqvae_lib.runtime` (paths, config) free of torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device(requested: "str | torch.device | None" = None) -> "torch.device":  # noqa: F821
    """The device to run on: ``requested`` when given (e.g. ``"cpu"``, ``"cuda:1"``), else ``cuda`` when a GPU is
    visible, else ``cpu``."""
    import torch  # lazy: keeps `import eqvae_lib.runtime` (paths, config) free of torch

    if requested is not None:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
