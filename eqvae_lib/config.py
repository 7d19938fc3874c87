"""Paths, profiles and seeding shared by the whole kit.

Paths
-----
``REPO_ROOT``  the checkout (parent of this package).
``DATA_DIR``   datasets and caches (git-ignored); override with the environment variable ``EQVAE_DATA``.
``RUNS_DIR``   executed notebooks and result records (git-ignored); ``EQVAE_RUNS``. Trained models, latent caches and
               metric results are caches under ``DATA_DIR / "cache"`` (see ``pipeline``).
``FIGURES_DIR`` generated figures and tables (committed for the reference ``cpu`` run); ``EQVAE_FIGURES``.

Profiles
--------
A profile is a YAML file ``profiles/NAME.yaml`` of notebook parameters (papermill injects it with ``-f``). Notebooks
fall back to the profile named by ``EQVAE_PROFILE`` (default ``cpu``) when run interactively or under nbval.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("EQVAE_DATA", REPO_ROOT / "data"))
RUNS_DIR = Path(os.environ.get("EQVAE_RUNS", REPO_ROOT / "runs"))
FIGURES_DIR = Path(os.environ.get("EQVAE_FIGURES", REPO_ROOT / "figures"))
PROFILES_DIR = REPO_ROOT / "profiles"

PROFILES = ("smoke", "cpu", "cpu-full", "paper")


def profile_name() -> str:
    """The active profile: ``$EQVAE_PROFILE`` or ``"cpu"``.

    Raises:
        ValueError: if the variable names no known profile.
    """
    name = os.environ.get("EQVAE_PROFILE", "cpu")
    if name not in PROFILES:
        raise ValueError(f"EQVAE_PROFILE={name!r} is not a profile; choose one of {', '.join(PROFILES)}")
    return name


def load_profile(name: str | None = None) -> dict[str, Any]:
    """Read ``profiles/NAME.yaml`` (all notebook parameters of that profile) as a dict.

    ``cpu-full`` and ``paper`` may name a base profile with the key ``inherit``; its values are read first.

    Raises:
        FileNotFoundError: naming the missing YAML file and the known profiles.
    """
    import yaml

    name = name or profile_name()
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"profile file {path} not found; known profiles: {', '.join(PROFILES)}")
    values = yaml.safe_load(path.read_text()) or {}
    base = values.pop("inherit", None)
    if base:
        merged = load_profile(base)
        merged.update(values)
        values = merged
    values["profile"] = name
    return values


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and all CUDA devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device(requested: "str | torch.device | None" = None) -> "torch.device":  # noqa: F821
    """The device to run on: ``requested`` when given (e.g. ``"cpu"``, ``"cuda:1"``), else ``cuda`` when a GPU is
    visible, else ``cpu``."""
    import torch

    if requested is not None:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def notebook_params(profile: str | None, namespace: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a notebook run: ``profiles/<profile>.yaml`` (``profile=None`` → ``$EQVAE_PROFILE``, default
    ``cpu``), with every key that is also a global of the notebook (papermill's injected cell or an edit of the
    parameters cell) taking that value. Keys named in the notebook's namespace but not in the profile are ignored.

    Returns:
        a new dict; ``"profile"`` holds the profile name.
    """
    import yaml

    P = load_profile(profile)
    for key in list(P):
        if key != "profile" and key in namespace:
            value = namespace[key]
            if isinstance(value, str) and isinstance(P[key], (list, dict)):
                value = yaml.safe_load(value)  # papermill -p passes lists as strings: "-p gen_seeds '[0, 1]'"
            P[key] = value
    return P
