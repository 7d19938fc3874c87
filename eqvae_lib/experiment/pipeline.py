"""Train-or-load artefacts for the notebooks: every notebook runs standalone, in any order.

Each ``train_or_load_...`` function returns an artefact (the base autoencoder, fine-tuned autoencoders, latent caches,
trained generators, metric results) and builds it — possibly for minutes, which it logs first with an estimate — only
when it is not already cached. ``P`` is the resolved :class:`config.Config` (typed stage configs).

Cache layout (``data/cache/v2/<stage>/<key hash>/``, ``key.json`` beside the artefact): the key of an artefact is
  * the full config of its stage (``dataclasses.asdict`` of the built training/metric config) minus the fields listed
    in :data:`NOT_IN_KEY` (they cannot change a result: progress bars, checkpoint cadence, log cadence; a continued
    fine-tune's key also leaves out its epoch count, ``exclude=("max_epochs",)``, so further epochs continue it),
  * the hashes of its inputs (dataset ids, the weights hash of the autoencoder it starts from or measures),
  * the code version of its stage (:func:`code_version`: a hash of the behaviour-defining modules of
    :func:`stage_modules`, normalised via ``ast`` so comments and docstrings do not count; plotting, report and records
    never count),
  * the hash of ``requirements.lock``.
A fix in ``losses.py`` therefore builds new fine-tunes, a fix in ``plotting.py`` rebuilds nothing. To clear one stage,
delete its folder, e.g. ``rm -rf data/cache/v2/ae-eq``. Caches of the old layout (``data/cache/ae-base`` ...) are
refused with a message saying what to delete (:func:`check_cache_layout`).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import autoencoders as ae
from .config import DATA_DIR, REPO_ROOT, Config
from ..data import ImageFolder, get_dataset
from ..io import atomic_write_json, hash_obj, sha256_tensor
from ..latents import build_latent_cache
from ..losses import EQVAELoss, LossConfig
from ..maskgit import build_maskgit, build_token_cache, decode_to_images, load_token_cache, sample as maskgit_sample
from ..metrics import equivariance as eqm
from ..metrics import extractors as fidx
from ..metrics import fid as fidm
from ..metrics import intrinsic_dim as idm
from ..metrics import latent as latm
from ..metrics.batching import iter_batches
from ..metrics.fid_inputs import stratified_labels
from ..metrics import reconstruction as recm
from ..train_maskgit import MaskGITTrainConfig, train_maskgit
from ..train_ae import AETrainConfig, finetune, load_discriminator, load_summary, pretrain
from ..train_gen import (TrainGenConfig, latest_checkpoint, load_gen_checkpoint, sample_from_checkpoint, sample_images,
                        train_gen)
from ..transforms import scale_range
from .verdicts import paired_t_interval, steps_to_reach  # noqa: F401 (steps_to_reach: re-export)
from ..vq import finetune_vq, pretrain_vq

log = logging.getLogger("eqvae_lib.experiment.pipeline")

CACHE = DATA_DIR / "cache"
LAYOUT = "v2"

#: the modules that build each stage's artefacts (dotted, relative to eqvae_lib). The code version hashes these and
#: every kit module they import, transitively (:func:`stage_modules`), so a new helper module counts without a list
#: to maintain; the experiment layer (:data:`EXPERIMENT_LAYER`) never counts.
STAGE_ROOTS: dict[str, tuple[str, ...]] = {
    "ae": ("train_ae",),
    "vq": ("train_ae", "vq"),
    "ae-metrics": ("autoencoders", "metrics.equivariance", "metrics.reconstruction", "metrics.intrinsic_dim",
                   "metrics.fid", "metrics.latent"),
    "fid": ("metrics.extractors", "metrics.fid"),
    "latents": ("autoencoders", "latents"),
    "gen": ("autoencoders", "train_gen", "latents", "dit", "sit", "metrics.fid"),
    "maskgit": ("train_maskgit", "maskgit", "vq", "metrics.fid"),
}
#: the experiment layer (the subpackage ``eqvae_lib.experiment``: configs, records, verdicts, report, plotting, paper
#: values) and the command line ``__main__``: they cannot change a stage's artefact (``curve_fid.py`` keys the FIDs it
#: re-scores beside a generator's run by its own source)
EXPERIMENT_LAYER = ("experiment", "__main__")
#: ...except this module: it decides how artefacts are built (posterior mean or sample, derived seeds, subsets), so
#: its code is part of every stage's code version
BUILDER = "experiment.pipeline"
#: the package folder (``eqvae_lib/``) whose modules the code version reads
PKG_DIR = Path(__file__).resolve().parent.parent
#: config fields that cannot change a result, kept out of every key
NOT_IN_KEY = ("progress", "checkpoint_every_steps", "log_every", "resume", "num_workers")
#: old-layout cache folders (keys without code version): refused. (``data/cache/classifier`` and ``fid_stats`` stay:
#: the CLIs' default cache of metrics.extractors / metrics.fid writes there, and the pipeline reads those from
#: :func:`fid_cache_dir` only.)
OLD_KINDS = ("ae-base", "ae-eq", "ae-plain", "ae-explicit", "ae-metrics", "latents", "gen-dit", "gen-sit", "vq-base",
             "vq-eq", "vq-plain", "tokens", "maskgit")
#: offsets of the seeds derived from a run seed (one place; see :func:`derive_seed`)
SEED_OFFSETS = {"dit_eval": 10_000, "final_samples": 20_000, "maskgit_eval": 30_000, "fid_spread": 40_000}


def derive_seed(seed: int, purpose: str) -> int:
    """The seed of one use of randomness outside training, derived from the run seed: ``SEED_OFFSETS[purpose] +
    seed`` (e.g. the gFID samples of DiT evaluations use ``10_000 + seed``, so they never share a stream with the
    training seed ``seed``)."""
    return SEED_OFFSETS[purpose] + int(seed)


def _normalised_source(path: Path) -> str:
    """The module's AST without docstrings (comments are gone after parsing), as ``ast.dump`` text."""
    return _normalise(path.read_text())


@lru_cache(maxsize=None)
def _normalise(source: str) -> str:
    """:func:`_normalised_source` of a source text (cached by the text: every stage hashes the shared modules)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def kit_import_graph(pkg: Path | None = None) -> dict[str, set[str]]:
    """The kit's own import graph: dotted module name (``"eqvae_lib.metrics.fid"``) -> the kit modules it imports,
    at the top of the file or inside functions (``from . import x`` resolved to ``x``). Read with ``ast``; nothing is
    imported. ``pkg`` (tests) replaces the package folder."""
    pkg = Path(pkg) if pkg else PKG_DIR
    paths = {}
    for path in pkg.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in paths.items():
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for level, module, names in _import_statements(path.read_text()):
            if level is None:  # import a.b, c
                targets = list(names)
            else:
                if level:
                    base = here.split(".")
                    mod = ".".join(base[: len(base) - (level - 1)] + ([module] if module else []))
                else:
                    mod = module or ""
                targets = [f"{mod}.{a}" if f"{mod}.{a}" in paths else mod for a in names]
            for t in targets:
                while t and t not in paths:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name and t.startswith(pkg.name):
                    deps.add(t)
        graph[name] = deps
    return graph


@lru_cache(maxsize=None)
def _import_statements(source: str) -> tuple[tuple[int | None, str | None, tuple[str, ...]], ...]:
    """Every import statement of a source text, at the top or inside functions: ``(None, None, names)`` for
    ``import names``, ``(level, module, names)`` for ``from ... import names`` (cached by the text)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.append((None, None, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module, tuple(a.name for a in node.names)))
    return tuple(out)


def stage_modules(stage: str, root: str | None = None) -> tuple[str, ...]:
    """The files (relative to the package) whose code builds ``stage``'s artefacts: :data:`STAGE_ROOTS` and every kit
    module they import transitively, less the package ``__init__`` and the experiment layer, plus this module
    (:data:`BUILDER`)."""
    pkg = Path(root) if root else PKG_DIR
    graph, name = kit_import_graph(pkg), pkg.name
    layer = tuple(f"{name}.{m}" for m in EXPERIMENT_LAYER)
    todo, seen = [f"{name}.{m}" for m in STAGE_ROOTS[stage]], {f"{name}.{BUILDER}"}
    while todo:
        m = todo.pop()
        if m not in seen and m != name and not any(m == x or m.startswith(x + ".") for x in layer):
            seen.add(m)
            todo.extend(graph[m])
    return tuple(sorted(m[len(name) + 1:].replace(".", "/") + ".py" for m in seen))


@lru_cache(maxsize=None)
def code_version(stage: str, root: str | None = None) -> str:
    """Hash of the normalised source of the stage's modules (:func:`stage_modules`); edits to comments or docstrings
    do not change it. ``root`` (tests) replaces the package folder."""
    base = Path(root) if root else PKG_DIR
    h = hashlib.sha256()
    for rel in stage_modules(stage, root):
        h.update(rel.encode() + b"\0" + _normalised_source(base / rel).encode() + b"\0")
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def lock_hash() -> str:
    """sha256 (16 hex) of ``requirements.lock`` (library versions can change results), or ``"none"``."""
    path = REPO_ROOT / "requirements.lock"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "none"


def strip_key(config: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``config`` (nested dicts) without the fields of :data:`NOT_IN_KEY` and ``extra``."""
    drop = set(NOT_IN_KEY) | set(extra)
    return {k: strip_key(v, extra) if isinstance(v, dict) else v for k, v in config.items() if k not in drop}


def artefact_key(stage: str, config: dict[str, Any], inputs: dict[str, Any], code: str | None = None,
                 exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The cache key of an artefact: its stage config (minus :data:`NOT_IN_KEY` and ``exclude``), its inputs' hashes,
    the code version of ``code`` (default: ``stage``) and the lock-file hash."""
    return {"stage": stage, "config": strip_key(config, exclude), "inputs": inputs,
            "code": code_version(code or stage), "lock": lock_hash()}


def check_cache_layout(root: Path | None = None) -> None:
    """Refuse caches of the old layout (keys without code version) instead of reusing them silently.

    Raises:
        RuntimeError: naming the folders to delete.
    """
    root = root or CACHE
    old = [root / k for k in OLD_KINDS if (root / k).is_dir()]
    if old:
        raise RuntimeError("the cache holds artefacts of the old layout, keyed without the code version, which may be "
                           "stale: " + ", ".join(map(str, old)) + ". Delete them (rm -rf " + " ".join(map(str, old))
                           + "); new caches go to " + str(root / LAYOUT) + ".")


def cache_dir(stage: str, key: dict[str, Any]) -> Path:
    """``data/cache/v2/<stage>/<hash of key>``; the key is written beside as ``key.json``."""
    check_cache_layout()
    folder = CACHE / LAYOUT / stage / hash_obj(key)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").exists():
        atomic_write_json(folder / "key.json", key)
    return folder


def fid_cache_dir() -> Path:
    """Cache root handed to :mod:`eqvae_lib.metrics.extractors` and :mod:`eqvae_lib.metrics.fid` (classifier weights,
    reference statistics): versioned by the FID code and the lock file, so a change to the extractor's code trains a
    new classifier."""
    check_cache_layout()
    return CACHE / LAYOUT / "fid" / f"{code_version('fid')}-{lock_hash()}"


def announce(what: str, estimate: str) -> None:
    """Log (and print) what is about to be built and its estimated cost."""
    msg = f"[build] {what}; estimated cost: {estimate}"
    log.info(msg)
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """The profile's images: ``train_x`` / ``test_x`` are tensors ``[N, C, H, W]`` in [-1, 1] (the offline datasets,
    held in memory) or Datasets of ``(x, label)`` (image folders, streamed from disk); ``train_y`` / ``test_y`` are
    int64 labels ``[N]`` (for photo crops the source photo — not a class; ``None`` for image folders). ``train_id`` /
    ``test_id`` identify the data (hash of the tensor, or of the file list and crop settings) for records and cache
    keys."""

    train_x: Any
    train_y: torch.Tensor | None
    test_x: Any
    test_y: torch.Tensor | None
    name: str
    image_size: int
    num_classes: int | None
    train_id: str
    test_id: str

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1]) if isinstance(self.train_x, torch.Tensor) else int(self.train_x[0][0].shape[0])

    @staticmethod
    def subset(xs, n: int | None):
        """The first ``n`` images: a tensor slice, or a ``Subset`` of a Dataset."""
        n = len(xs) if n is None else min(int(n), len(xs))
        return xs[:n] if isinstance(xs, torch.Tensor) else torch.utils.data.Subset(xs, range(n))

    @staticmethod
    def batch(xs, n: int) -> torch.Tensor:
        """The first ``n`` images as one tensor ``[n, C, H, W]`` (loads them from disk for a Dataset)."""
        n = min(int(n), len(xs))
        return xs[:n] if isinstance(xs, torch.Tensor) else torch.cat(list(iter_batches(Data.subset(xs, n), 256)))


def load_data(P: Config) -> Data:
    """Load the profile's dataset (stage ``data``; ``run.seed`` seeds the photo crops).

    ``imagefolder`` (``paper`` profile) needs ``data_root_train`` and ``data_root_test`` and streams from disk
    (training split: LDM random crops; test split: ADM centre crops).
    """
    d = P.data
    kw = dict(size=d.image_size, seed=P.run.seed)
    if d.dataset == "fashion-mnist":
        kw["channels"] = d.channels
    out = {}
    for split, n, root in (("train", d.n_train, d.data_root_train), ("test", d.n_test, d.data_root_test)):
        ds = get_dataset(d.dataset, split, n=n, root=root, **kw)
        if isinstance(ds, ImageFolder):
            files = [str(f) for f in ds.files[: n or len(ds)]]
            out[split] = (Data.subset(ds, n), None, hash_obj({"files": files, "size": d.image_size, "crop": ds.crop}))
        else:
            x, y = ds.tensors()
            out[split] = (x, y, sha256_tensor(x)[:16])
    num_classes = 10 if d.dataset == "fashion-mnist" else None
    return Data(out["train"][0], out["train"][1], out["test"][0], out["test"][1], name=d.dataset,
                image_size=d.image_size, num_classes=num_classes, train_id=out["train"][2], test_id=out["test"][2])


def dataset_label(P: Config) -> str:
    """Human-readable dataset name for captions."""
    return {"fashion-mnist": "Fashion-MNIST", "photo-crops": "photo crops (scikit-image/-learn, matplotlib)",
            "imagefolder": "ImageFolder"}.get(P.data.dataset, P.data.dataset)


# --------------------------------------------------------------------------------------------- autoencoders
@dataclass
class AEArtefact:
    """A trained or loaded autoencoder: ``model`` (diffusers AutoencoderKL / VQModel, eval mode), ``run_dir`` (its
    cache folder; None for a model loaded from ``base_vae``), ``summary`` (train_ae's summary: steps, stop reason,
    plateau trace, final validation, ``wall_time_s`` = seconds of training; None when loaded), ``hash`` (weights
    hash), ``source`` (``"kit"`` or the ``base_vae`` it was loaded from), ``epoch`` (fine-tunes: epochs done; None for
    a base), ``key`` (its cache key) and ``seed`` (fine-tunes: the replicate seed = its training seed; the base: the
    run seed; None when loaded)."""

    model: Any
    run_dir: Path | None
    summary: dict | None
    hash: str
    source: str = "kit"
    epoch: int | None = None
    key: dict | None = None
    seed: int | None = None

    @property
    def wall_s(self) -> float | None:
        """Seconds of training that built this model (validation excluded; for a fine-tune: epochs 1..epoch,
        accumulated over continuations); None for a loaded model."""
        return None if self.summary is None else float(self.summary["wall_time_s"])

    @property
    def log_dir(self) -> Path | None:
        """The folder whose ``log.jsonl``/``summary.json`` describe this model: ``run_dir/epoch_N`` for a fine-tune
        (a copy taken when epoch N ended, so a later, longer run in the same folder does not change it), else
        ``run_dir``."""
        return self.run_dir / f"epoch_{self.epoch}" if self.run_dir and self.epoch else self.run_dir


#: loss fields an objective never reads (:meth:`EQVAELoss.sample_branch` always gives "plain" for these objectives,
#: so no τ, branch or low-resolution draw uses them); :func:`loss_config` sets them to LossConfig's defaults, so that
#: e.g. ``-p p_alpha 0.3`` neither re-trains the base autoencoder nor the plain control
UNUSED_LOSS_FIELDS = {
    "plain": ("p_alpha", "p_prior_s", "family", "scale_grid", "min_scale", "min_latent_side", "explicit_lambda",
              "explicit_stopgrad"),
    "explicit": ("p_alpha", "p_prior_s"),
    "eq": ("explicit_lambda", "explicit_stopgrad"),
}


def loss_config(P: Config, objective: str, **overrides) -> LossConfig:
    """The :class:`~eqvae_lib.losses.LossConfig` of the ``loss`` stage for ``objective`` (``eq``/``plain``/
    ``explicit``); every field of the stage is passed (``kl_weight``, ``disc_weight``, ``explicit_lambda``...),
    except those the objective never reads (:data:`UNUSED_LOSS_FIELDS`), which keep LossConfig's defaults: equal
    objectives get equal configs, hence equal cache keys."""
    values = {**dataclasses.asdict(P.loss), **overrides}
    defaults = LossConfig()
    for name in UNUSED_LOSS_FIELDS[objective]:
        values[name] = getattr(defaults, name)
    return LossConfig(objective=objective, **values)


def base_ae_train_config(P: Config, data: Data) -> tuple[AETrainConfig, dict]:
    """The base autoencoder's training config and architecture (``build_autoencoder`` kwargs) under profile ``P``:
    the plain objective (Eq. 1) with the GAN from ``pretrain_disc_start``, the plateau rule on, the caps
    ``pretrain_max_steps``/``pretrain_max_epochs``, seed ``run.seed``. One definition for the cached base
    (:func:`train_or_load_base_autoencoder`) and the plateau pilot (``eqvae_lib.experiment.plateau_pilot``)."""
    b = P.base_ae
    cfg = AETrainConfig(loss=loss_config(P, "plain", disc_start=b.pretrain_disc_start), batch_size=b.pretrain_batch,
                        lr=b.pretrain_lr, max_steps=b.pretrain_max_steps, max_epochs=b.pretrain_max_epochs,
                        plateau=True, val_every=b.pretrain_val_every, val_size=P.data.val_size,
                        plateau_window=b.pretrain_plateau_window, plateau_threshold=b.pretrain_plateau_threshold,
                        seed=P.run.seed, checkpoint_every_steps=P.run.checkpoint_every_steps, export_ldm=False,
                        progress=P.run.progress)
    arch = dict(arch=b.ae_arch, in_channels=data.channels, out_channels=data.channels,
                latent_channels=b.latent_channels, sample_size=P.data.image_size)
    return cfg, arch


def train_or_load_base_autoencoder(P: Config, data: Data | None = None) -> AEArtefact:
    """The base autoencoder (the stand-in for SD-VAE): loaded from ``base_vae`` when set (paper profile: a diffusers
    folder, LDM checkpoint or hub id), else pretrained from scratch (seed ``run.seed``) on the profile's training
    images until the validation L1 on ``val_size`` test images plateaus, or a cap in steps / epochs
    (``pretrain_max_steps``, ``pretrain_max_epochs``; never minutes) is reached, and cached with its PatchGAN
    discriminator (the warm start of the fine-tunes). The summary's ``stop_reason`` says which rule stopped it
    (``plateau`` / ``max_steps`` / ``max_epochs``). May train for many minutes."""
    b = P.base_ae
    if b.base_vae:
        vae = ae.load_autoencoder(b.base_vae).eval()
        return AEArtefact(vae, None, None, ae.weights_hash(vae), source=b.base_vae)
    data = data or load_data(P)
    cfg, arch = base_ae_train_config(P, data)
    key = artefact_key("ae", {"train": dataclasses.asdict(cfg), "model": arch},
                       {"train": data.train_id, "val": data.test_id})
    run_dir = cache_dir("ae-base", key)
    if not (run_dir / "summary.json").exists():
        announce(f"base autoencoder {b.ae_arch} pretrained on {len(data.train_x)} images until the plateau",
                 f"at most {b.pretrain_max_steps} steps or {b.pretrain_max_epochs} epochs (None = no cap)")
        pretrain(data.train_x, cfg, run_dir, val=data.test_x, **arch)
    vae = ae.load_autoencoder(run_dir / "model").eval()
    return AEArtefact(vae, run_dir, load_summary(run_dir), ae.weights_hash(vae), key=key, seed=cfg.seed)


def base_final_lr(base: AEArtefact) -> float:
    """The learning rate of the base's last optimizer step, read from its ``log.jsonl`` (the kit's bases use a
    constant lr, so this is the pretraining lr — read, not assumed).

    Raises:
        ValueError: the base was loaded (``base_vae``), so no training log exists: set ``finetune_lr`` explicitly.
    """
    if base.run_dir is None or not (base.run_dir / "log.jsonl").is_file():
        raise ValueError(f"finetune_lr None means 'continue at the base's final lr', but the base ({base.source}) has "
                         "no training log; set finetune_lr (e.g. the official 4.5e-6 x batch, as the paper profile "
                         "does)")
    df = read_train_log(base.run_dir)
    if df.empty or "lr" not in df:
        raise ValueError(f"{base.run_dir / 'log.jsonl'} has no per-step lr; set finetune_lr explicitly")
    return float(df["lr"].iloc[-1])


def finetune_lr(P: Config, base: AEArtefact) -> tuple[float, str]:
    """The fine-tunes' lr and where it comes from: ``finetune_lr`` when set (``"finetune_lr (profile/override)"``),
    else the base's final lr (:func:`base_final_lr`; ``"the base's final lr (log.jsonl)"``)."""
    if P.finetune.finetune_lr is not None:
        return float(P.finetune.finetune_lr), "finetune_lr (profile / override)"
    return base_final_lr(base), f"the base's final lr (base {base.hash}, read from its log.jsonl)"


def finetune_discriminator(P: Config, base: AEArtefact) -> tuple[Path | None, str]:
    """``(disc_init, label)`` of the fine-tunes' PatchGAN per ``finetune_disc``: ``"warm"`` = the base's saved
    discriminator (``disc_init`` = the base's run folder; label ``"warm (base <hash>)"``), ``"fresh"`` = a new one
    (``None``, ``"fresh"``).

    Raises:
        ValueError: warm requested but the base has no saved discriminator (loaded from ``base_vae``, or a run folder
            without ``discriminator.safetensors``) — never a silent fallback to a fresh one.
    """
    if P.finetune.finetune_disc == "fresh":
        return None, "fresh"
    if base.run_dir is None:
        raise ValueError(f"finetune_disc is 'warm' but the base autoencoder was loaded from {base.source}, which ships "
                         "no discriminator; set finetune_disc: fresh (and say so: the protocols differ)")
    load_discriminator(base.run_dir)  # raises ValueError naming the folder when the weights are missing
    return base.run_dir, f"warm (base {base.hash})"


def train_or_load_finetuned_autoencoders(P: Config, objective: str, data: Data | None = None,
                                         base: AEArtefact | None = None, tag: str = "", epochs: int | None = None,
                                         seed: int | None = None, **loss_overrides) -> list[AEArtefact]:
    """Fine-tune the base autoencoder for ``epochs`` (default ``finetune_epochs``) epochs over the first
    ``finetune_subset`` training images with ``objective`` (``"eq"`` = EQ-VAE Eq. 7, ``"plain"`` = the Table 6
    control with the same budget, ``"explicit"`` = Table 7), keeping the model after every epoch. May train for
    minutes (logged with an estimate first).

    ``seed`` is the replicate seed (None = the first of ``replicate_seeds``): the fine-tune's training seed, hence
    its data order, posterior noise and objective draws (:mod:`eqvae_lib.rng`) and a fresh PatchGAN's
    initialisation; the arms of one seed share data order and posterior noise (common random numbers). The lr is
    ``finetune_lr`` or, when None, the base's final lr (:func:`finetune_lr`); the PatchGAN starts warm from the
    base's or fresh (``finetune_disc``, :func:`finetune_discriminator`). The summary of each epoch carries
    ``discriminator`` (``"warm (base <hash>)"`` / ``"fresh"``), ``lr_source`` and ``replicate_seed``.

    Returns:
        one :class:`AEArtefact` per epoch 1..N (``epoch`` and ``seed`` set). Epoch 0 is the base model itself.

    Raises:
        ValueError: warm discriminator requested but the base has none saved; ``finetune_lr`` None for a loaded base.
    """
    data = data or load_data(P)
    base = base if base is not None else train_or_load_base_autoencoder(P, data)
    f = P.finetune
    seed = int(P.run.replicate_seeds[0] if seed is None else seed)
    loss = loss_config(P, objective, disc_start=0, **loss_overrides)
    n_sub = min(f.finetune_subset, len(data.train_x))
    n_epochs = int(epochs or f.finetune_epochs)
    lr, lr_source = finetune_lr(P, base)
    disc_init, disc_label = finetune_discriminator(P, base)
    notes = {"discriminator": disc_label, "lr_source": lr_source, "replicate_seed": seed}
    cfg = AETrainConfig(loss=loss, batch_size=f.finetune_batch, lr=lr, max_epochs=n_epochs,
                        seed=seed, val_every=0, val_size=P.data.val_size, export_ldm=False, measure_norm=None,
                        checkpoint_every_steps=P.run.checkpoint_every_steps, progress=P.run.progress)
    # max_epochs is not part of the key: the model after epoch e does not depend on how many epochs follow (constant
    # lr, no schedule), so a longer run continues the same folder.
    key = artefact_key("ae", {"train": dataclasses.asdict(cfg), "subset": n_sub, "tag": tag,
                              "finetune_disc": f.finetune_disc},
                       {"base": base.hash, "train": data.train_id, "val": data.test_id}, exclude=("max_epochs",))
    run_dir = cache_dir(f"ae-{objective}", key)
    out = []
    for epoch in range(1, n_epochs + 1):
        epoch_dir = run_dir / f"epoch_{epoch}"
        if not (epoch_dir / "config.json").exists():
            announce(f"{objective} fine-tune of the base AE (seed {seed}, discriminator {disc_label}, lr {lr:.3g}), "
                     f"epoch {epoch} of {n_epochs} over {n_sub} images", f"{n_sub // f.finetune_batch} steps")
            # a fresh copy: training changes the model in place, and the base must stay the base
            vae = ae.load_autoencoder(base.run_dir / "model") if base.run_dir else copy.deepcopy(base.model)
            finetune(vae, Data.subset(data.train_x, n_sub), dataclasses.replace(cfg, max_epochs=epoch), run_dir,
                     val=data.test_x, disc_init=disc_init, notes=notes)
            tmp = run_dir / f".epoch_{epoch}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(run_dir / "model", tmp)
            for name in ("summary.json", "log.jsonl"):  # this epoch's account, kept from later continuations
                shutil.copy2(run_dir / name, tmp / name)
            tmp.rename(epoch_dir)
        vae = ae.load_autoencoder(epoch_dir).eval()
        out.append(AEArtefact(vae, run_dir, load_summary(epoch_dir), ae.weights_hash(vae), epoch=epoch, key=key,
                              seed=seed))
    return out


def train_or_load_autoencoder_suite(P: Config, data: Data | None = None, seed: int | None = None
                                    ) -> dict[str, AEArtefact]:
    """The three autoencoders of replicate ``seed`` (None = the first of ``replicate_seeds``) that every comparison
    uses: ``{"base", "plain", "eq"}`` (the fine-tuned ones of that seed after the last epoch; the base is the same
    for every seed). Trains what notebooks 01/02 would build when it is not cached."""
    data = data or load_data(P)
    base = train_or_load_base_autoencoder(P, data)
    return {"base": base, "plain": train_or_load_finetuned_autoencoders(P, "plain", data, base, seed=seed)[-1],
            "eq": train_or_load_finetuned_autoencoders(P, "eq", data, base, seed=seed)[-1]}


# ---------------------------------------------------------------------------------------------------- metrics
def encoder(vae, latent: str = "mean", seed: int = 0):
    """``encode_fn`` for the metrics: images → raw latents (posterior ``mean`` or ``sample`` with a seeded RNG)."""
    g = torch.Generator().manual_seed(seed) if latent == "sample" else None

    @torch.no_grad()
    def encode_fn(x: torch.Tensor) -> torch.Tensor:
        return ae.encode(vae, x, latent=latent, generator=g)

    encode_fn.inputs = ae.latent_description(vae, latent)  # recorded by the metrics (raw latents, issue #16)
    return encode_fn


def decoder(vae):
    """``decode_fn`` for the metrics: raw latents → images in about [-1, 1]."""

    @torch.no_grad()
    def decode_fn(z: torch.Tensor) -> torch.Tensor:
        return ae.decode(vae, z)

    return decode_fn


def feature_extractor(P: Config, data: Data | None = None, kind: str | None = None):
    """The FID feature extractor: ``kind`` or ``fid_extractor`` = ``"classifier"`` (fast; trained by the kit on the
    dataset's training split with ``classifier_n_train`` / ``classifier_epochs``, cached by config and FID code
    version; may train for a minute) or ``"inception"``."""
    kind = kind or P.metrics.fid_extractor
    channels = data.channels if data is not None else P.data.channels
    if kind == "classifier":
        cfg = fidx.ClassifierConfig(dataset=P.data.dataset, size=P.data.image_size, channels=channels,
                                    n_train=P.metrics.classifier_n_train, epochs=P.metrics.classifier_epochs)
        return fidx.classifier_extractor(cfg, cache_dir=fid_cache_dir(), verbose=P.run.progress)
    return fidx.get_extractor(kind, dataset=P.data.dataset, size=P.data.image_size, channels=channels,
                              cache_dir=fid_cache_dir())


def paper_eval_scales(latent_side: int) -> list[float]:
    """The paper's T_S = {0.25, 0.5, 0.75} (App. C.3) restricted to the scales the latent grid admits (latent side ·
    s an integer ≥ 1; all three for the kit's 8×8 and 16×16 latents and SD-VAE's 32×32)."""
    return [s for s in eqm.DEFAULT_SCALES if abs(latent_side * s - round(latent_side * s)) < 1e-9
            and round(latent_side * s) >= 1]


def trained_scales(P: Config, latent_side: int) -> list[float]:
    """The isotropic scales s = m / n the EQ fine-tune draws (the ``loss`` stage's grid: m from
    :func:`eqvae_lib.transforms.scale_range` with ``min_scale`` and ``min_latent_side``; the continuous grid is
    rounded to the same m); ``[]`` when the family has no scales (``rotation``)."""
    if "scale" not in P.loss.family and "anisotropic" not in P.loss.family:
        return []
    lo, hi = scale_range(latent_side, P.loss.min_scale, P.loss.min_latent_side)
    return [m / latent_side for m in range(lo, hi + 1)]


def id_sizes(P: Config, n_available: int) -> list[int]:
    """The sample sizes of the paired TwoNN (``id_sizes``, default ``[id_n, id_n // 2]``), each capped at the
    ``n_available`` test images, duplicates dropped, largest first."""
    m = P.metrics
    sizes = m.id_sizes or [m.id_n, m.id_n // 2]
    return sorted({min(int(k), n_available) for k in sizes if k >= 3}, reverse=True)


def autoencoder_metrics(P: Config, data: Data, vae, extractor=None, which: tuple[str, ...] = (
        "equivariance", "decoder", "reconstruction", "intrinsic_dim")) -> dict:
    """Every autoencoder-side number of the paper for one AE on the profile's test images, cached as JSON (keyed by
    the ``metrics`` stage, the interpolation mode, the trained scale grid, the AE's weights, the data, the extractor
    and the metric code).

    Evaluation noise is common to every autoencoder and replicate (common random numbers, issue #14): the same first
    test images, the posterior samples of the reconstructions drawn with ``run.seed`` (never a replicate seed), the
    same bootstrap seed.

    Parts (each a dict from :mod:`eqvae_lib.metrics`):
      * ``equivariance``: Δ_R, Δ_S and per-τ values (App. C.3) on ``eval_n`` images, posterior mean; evaluated on
        ``eval_scales`` ∪ the paper's T_S (:func:`paper_eval_scales`) ∪ the EQ fine-tune's trained scales
        (:func:`trained_scales`, also for the base and the plain control, so all are compared on one set). ``delta_S``
        stays the mean over ``eval_scales``; added: ``delta_S_paper`` (over T_S, with s = 0.25), ``delta_S_trained``
        (over the trained scales; None for a family without scales), ``paper_scales``, ``trained_scales``.
      * ``decoder``: PSNR (and rFID with ``extractor``) of D(τ∘E(x)) against τ∘x per scale / rotation (Fig. 3).
      * ``reconstruction``: rFID, PSNR, SSIM, LPIPS of D(E(x)) (Table 12) from the latent ``recon_latent``.
      * ``intrinsic_dim``: TwoNN (+ bootstrap interval, MLE cross-check) on ``id_n`` flattened latents (Table 5).
      * ``intrinsic_dim_sizes``: ``[{"size": m, **TwoNN result}]``, paired TwoNN on the first m test images for
        each m of :func:`id_sizes` (:func:`eqvae_lib.metrics.intrinsic_dim.twonn_at_sizes`, posterior mean).
      * ``latent``: on ``eval_n`` images, ``roughness`` and ``roughness_interior`` (border ring removed) of the
        normalised posterior mean, and ``posterior_noise_fraction`` (raw posterior; None for a VQ model) —
        :mod:`eqvae_lib.metrics.latent`.

    Raises:
        ValueError: an unknown part.
    """
    m = P.metrics
    n = min(m.eval_n, len(data.test_x))
    x = Data.subset(data.test_x, n)
    side = P.data.image_size // ae.downsample_factor(vae)
    paper_s, trained_s = paper_eval_scales(side), trained_scales(P, side)
    scales = tuple(m.eval_scales)
    mode = P.loss.interpolation
    key = artefact_key("ae-metrics", {"metrics": dataclasses.asdict(m), "interpolation": mode, "seed": P.run.seed,
                                      "trained_scales": trained_s},
                       {"ae": ae.weights_hash(vae), "test": data.test_id,
                        "extractor": getattr(extractor, "weights_hash", None)})
    path = cache_dir("ae-metrics", key) / "metrics.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for part in [w for w in which if w not in results]:
        if part == "equivariance":
            all_s = sorted(set(scales) | set(paper_s) | set(trained_s))
            r = eqm.equivariance_error(x, encoder(vae), scales=all_s, mode=mode)
            r.update(delta_S=eqm.delta_over_scales(r, scales), delta_S_paper=eqm.delta_over_scales(r, paper_s),
                     delta_S_trained=eqm.delta_over_scales(r, trained_s), paper_scales=paper_s,
                     trained_scales=trained_s, eval_scales=list(scales))
            results[part] = r
        elif part == "decoder":
            results[part] = eqm.decoder_equivariance(x, encoder(vae), decoder(vae), scales=scales, mode=mode,
                                                     extractor=extractor)
        elif part == "reconstruction":
            results[part] = recm.reconstruction_metrics(x, encoder(vae, m.recon_latent, P.run.seed), decoder(vae),
                                                        latent=m.recon_latent, extractor=extractor)
        elif part == "intrinsic_dim":
            k = min(m.id_n, len(data.test_x))
            enc = encoder(vae)
            z = idm.latent_points(Data.subset(data.test_x, k), enc)
            results[part] = idm.intrinsic_dimension(z, n=k, seed=P.run.seed, n_bootstrap=m.id_bootstrap,
                                                    inputs=enc.inputs)
        elif part == "intrinsic_dim_sizes":
            sizes = id_sizes(P, len(data.test_x))
            enc = encoder(vae)
            z = idm.latent_points(Data.subset(data.test_x, sizes[0]), enc)
            results[part] = [{"size": k, **r} for k, r in idm.twonn_at_sizes(
                z, sizes, seed=P.run.seed, n_bootstrap=m.id_bootstrap, inputs=enc.inputs).items()]
        elif part == "latent":
            results[part] = latent_statistics(vae, x)
        else:
            raise ValueError(f"unknown metric part {part!r}")
        atomic_write_json(path, results)
    return {k: v for k, v in results.items() if k in which}


@torch.no_grad()
def latent_statistics(vae, images, batch_size: int = 250) -> dict:
    """Roughness (all cells and interior cells) of the normalised posterior mean and the posterior-noise fraction of
    the raw posterior of ``vae`` on ``images`` (``[N, C, H, W]`` in [-1, 1] or a Dataset; N ≥ 2), see
    :mod:`eqvae_lib.metrics.latent`. Returns ``{"roughness", "roughness_interior", "posterior_noise_fraction"
    (None for VQ), "mean_posterior_var", "mean_signal_var", "n", "latent", "definition"}``."""
    means, stds = [], []
    for xb in iter_batches(images, batch_size):
        post = ae.encode_posterior(vae, xb.float())
        if isinstance(post, torch.Tensor):
            means.append(post)
        else:
            means.append(post.mean)
            stds.append(post.std)
    mu = torch.cat(means)
    z = ae.latent_norm(vae).normalize(mu)
    out = {"roughness": latm.latent_roughness(z), "roughness_interior": latm.latent_roughness(z, interior=True),
           "posterior_noise_fraction": None, "n": int(len(mu)), "latent": "normalised posterior mean (roughness); "
           "raw posterior (noise fraction)"}
    if stds:
        f = latm.posterior_noise_fraction(mu, torch.cat(stds))
        out.update(posterior_noise_fraction=f["fraction"], mean_posterior_var=f["mean_posterior_var"],
                   mean_signal_var=f["mean_signal_var"], definition=f["definition"])
    return out


def data_intrinsic_dimension(P: Config, data: Data) -> dict:
    """TwoNN of the test images themselves, on the same first images and sizes as the autoencoders'
    ``intrinsic_dim_sizes`` (:func:`id_sizes`): ``{"pixels": [{"size", **result}], "pooled 2x2": [...]}`` — raw
    pixels (C·H·W values) and 2×2 average-pooled images (C·H/2·W/2), the reference a latent's ID is read against.
    Cached as JSON by the metrics stage and the data."""
    m = P.metrics
    sizes = id_sizes(P, len(data.test_x))
    key = artefact_key("ae-metrics", {"metrics": dataclasses.asdict(m), "seed": P.run.seed, "what": "data TwoNN"},
                       {"test": data.test_id})
    path = cache_dir("ae-metrics", key) / "data_id.json"
    if path.exists():
        return json.loads(path.read_text())
    x = Data.batch(data.test_x, sizes[0]).float()
    out = {}
    for name, pts in (("pixels", x), ("pooled 2x2", torch.nn.functional.avg_pool2d(x, 2))):
        out[name] = [{"size": k, **r} for k, r in idm.twonn_at_sizes(
            pts, sizes, seed=P.run.seed, n_bootstrap=m.id_bootstrap,
            inputs={"points": f"test images, {name}", "data": data.test_id}).items()]
    atomic_write_json(path, out)
    return out


def replicate_suites(P: Config, data: Data) -> dict[int, dict[str, AEArtefact]]:
    """``{s: {"base", "plain", "eq"}}`` for every replicate seed s of ``run.replicate_seeds`` (issue #14: a replicate
    of an arm is one fine-tune of the one base with seed s; the base is the same artefact in every entry). May train
    the missing fine-tunes (minutes each, logged)."""
    return {int(s): train_or_load_autoencoder_suite(P, data, seed=int(s)) for s in P.run.replicate_seeds}


def replicate_metrics(P: Config, data: Data, suites: dict[int, dict[str, AEArtefact]], extractor=None,
                      which: tuple[str, ...] = ("equivariance",)) -> list[tuple[str, int | None, dict]]:
    """:func:`autoencoder_metrics` of every arm and replicate: ``[(name, seed, result)]`` with the base measured
    ONCE (``seed`` None: one fixed comparator, which :mod:`claims` pairs with every replicate seed) and
    ``plain`` / ``eq`` once per replicate seed (``seed`` = s). Evaluation noise is the same for all
    (:func:`autoencoder_metrics`)."""
    first = next(iter(suites.values()))
    out = [("base", None, autoencoder_metrics(P, data, first["base"].model, extractor, which=which))]
    for s, suite in suites.items():
        for name in ("plain", "eq"):
            out.append((name, s, autoencoder_metrics(P, data, suite[name].model, extractor, which=which)))
    return out


def replicate_values(reps: list[tuple[str, int | None, dict]], get) -> dict[str, list[float]]:
    """``{arm: [get(result) for each replicate]}`` of :func:`replicate_metrics`' list, arms in its order (the base:
    one value), e.g. ``replicate_values(reps, lambda r: r["equivariance"]["delta_R"])`` for bar plots with replicate
    dots."""
    out: dict[str, list[float]] = {}
    for name, _, r in reps:
        out.setdefault(name, []).append(get(r))
    return out


# -------------------------------------------------------------------------------------------------- generative
def train_or_load_latent_cache(P: Config, data: Data, vae):
    """Encode the profile's training images with ``vae`` once (mode ``latent_mode``: ``official`` = one posterior
    sample + one random flip per image, or ``repa``), normalised with the AE's stored (shift, scale), cached under a
    key that includes the AE's weights hash and the latent code version."""
    norm = ae.latent_norm(vae)
    shift, scale = norm.shift, norm.scale
    mode = P.gen.latent_mode
    # the normalisation is config, not weights: an AE loaded with another scaling/shift factor gets its own cache
    key = artefact_key("latents", {"mode": mode, "seed": P.run.seed},
                       {"ae": norm.ae_hash, "data": data.train_id,
                        "norm": [shift.tolist(), scale.tolist()]})
    labels = None
    if isinstance(data.train_x, torch.Tensor):
        labels = data.train_y if data.num_classes else torch.full_like(data.train_y, -1)
    return build_latent_cache(vae, data.train_x, cache_dir("latents", key), shift=shift, scale=scale, mode=mode,
                              labels=labels, data_id=f"{data.name}/train/{data.train_id}", seed=P.run.seed,
                              progress=P.run.progress)


def headline_method(P: Config) -> str:
    """The headline generator of Tables 2/6 and Fig. 5: the first of ``gen_methods`` (``"sit"`` or ``"dit"``).

    Raises:
        ValueError: ``gen_methods`` is empty."""
    if not P.gen.gen_methods:
        raise ValueError("gen_methods is empty: name at least one generator (e.g. gen_methods: [\"sit\"]); the first "
                         "is the headline generator")
    return P.gen.gen_methods[0]


def generator_name(P: Config, method: str) -> str:
    """The generator's name for ``method`` at the size of ``gen_model``: ``SiT-T/2`` / ``DiT-T/2`` (the two share the
    backbone, :mod:`eqvae_lib.sit`)."""
    size = P.gen.gen_model.split("-", 1)[-1]
    return f"{'SiT' if method == 'sit' else 'DiT'}-{size}"


def fig5_epochs(P: Config) -> list[int]:
    """The fine-tune epochs at which Fig. 5 trains a generator (besides epoch 0 = the base): ``fig5_epochs`` (None =
    every epoch 1..``finetune_epochs``), sorted, those beyond ``finetune_epochs`` dropped.

    Raises:
        ValueError: no epoch left."""
    n = P.finetune.finetune_epochs
    keep = sorted({int(e) for e in (P.gen.fig5_epochs or range(1, n + 1)) if 1 <= int(e) <= n})
    if not keep:
        raise ValueError(f"fig5_epochs = {P.gen.fig5_epochs} names no epoch in 1..finetune_epochs ({n})")
    return keep


def gen_fid_n_at(P: Config, step: int) -> int:
    """Samples of the gFID at ``step``: ``gen_fid_n_final`` (None = ``gen_fid_n``) at the last step (``gen_steps``),
    ``gen_fid_n`` at intermediate checkpoints (issue #14 item 4)."""
    g = P.gen
    return int(g.gen_fid_n_final or g.gen_fid_n) if step >= g.gen_steps else int(g.gen_fid_n)


def fid_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor | None:
    """Class labels of ``n`` gFID samples of a class-conditional generator: class-stratified
    (:func:`eqvae_lib.metrics.fid_inputs.stratified_labels`, drawn first from ``generator``, so arms with the same seed get
    the same labels); None for an unconditional one (``num_classes`` 0)."""
    return stratified_labels(n, num_classes, generator) if num_classes > 0 else None


def gen_config(P: Config, method: str, seed: int, labelled: bool) -> TrainGenConfig:
    """The :class:`~eqvae_lib.train_gen.TrainGenConfig` of the ``gen`` stage for ``method`` and ``seed``."""
    g = P.gen
    return TrainGenConfig(model=generator_name(P, method), method=method, learn_sigma=g.learn_sigma, steps=g.gen_steps,
                          batch_size=g.gen_batch, lr=g.gen_lr, ema_decay=g.gen_ema, ckpt_steps=list(g.gen_eval_steps),
                          log_every=g.gen_log_every, seed=seed, num_classes=None if labelled else 0,
                          progress=P.run.progress)


def sampler_of(P: Config, method: str) -> tuple[str, int]:
    """``(sampler, steps)`` of ``method`` (``dit``/``sit``)."""
    return ((P.gen.dit_sampler, P.gen.dit_sample_steps) if method == "dit" else
            (P.gen.sit_sampler, P.gen.sit_sample_steps))


@dataclass(frozen=True)
class GenCurve:
    """The gFID curve of one DiT/SiT run (:func:`train_or_load_generative_curve`).

    Attributes:
        steps: training steps at which gFID was measured (ascending, the last = ``gen_steps``).
        fid: gFID at each step (the profile's extractor, named by ``metric``; lower = better).
        kid: KID mean at each step (same extractor; None where not computed).
        n_fid: samples scored at each step (``gen_fid_n`` at intermediate checkpoints, ``gen_fid_n_final`` at the last).
        loss: ``(step, training loss)`` pairs of the training log.
        run_dir: the run's cache folder (``log.jsonl``, checkpoints).
        metric: the extractor's metric name (None when no evaluation was logged).
        sampler: sampler and its number of steps, e.g. ``"ddpm 250"``.
        generator: the model name, e.g. ``"SiT-T/2"``.
        latents_per_s: median training throughput (latents per second; None when not logged).
        key: the run's cache key (:func:`artefact_key`).
    """

    steps: tuple[int, ...]
    fid: tuple[float, ...]
    kid: tuple[float | None, ...]
    n_fid: tuple[int, ...]
    loss: tuple[tuple[int, float], ...]
    run_dir: Path
    metric: str | None
    sampler: str
    generator: str
    latents_per_s: float | None
    key: dict

    @property
    def eval_points(self) -> tuple[int, ...]:
        """Where the curve was evaluated (training steps): the x axis :func:`curve_stats` aligns curves on."""
        return self.steps


@dataclass(frozen=True)
class CurveStats:
    """Replicate statistics of gFID curves evaluated at the same points (:func:`curve_stats`).

    Attributes:
        steps: the common evaluation points (training steps of a DiT/SiT, epochs of a MaskGIT).
        mean, lo, hi: mean, minimum and maximum gFID over the k curves at each point.
        ci_low, ci_high: the 95% Student t interval of the mean at each point (equal to the mean when k = 1).
        k: the number of curves (replicate seeds).
    """

    steps: tuple[float, ...]
    mean: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    k: int


@dataclass(frozen=True)
class FidSpread:
    """The draw-to-draw spread of the gFID of one checkpoint (:func:`measure_fid_draw_spread`): sampling noise inside
    one replicate, never a verdict's interval.

    Attributes:
        fids: gFID of each sampling draw.
        mean: their mean; sd: their standard deviation (ddof 1; None for one draw); range: max − min.
        n: samples per draw; draws: the number of draws; step: the checkpoint's training step.
        metric: the extractor's metric name.
    """

    fids: tuple[float, ...]
    mean: float
    sd: float | None
    range: float
    n: int
    draws: int
    step: int
    metric: str | None


def train_or_load_generative_curve(P: Config, data: Data, vae, seed: int, method: str = "dit", extractor=None,
                                   reference=None) -> GenCurve:
    """Train a DiT (``method="dit"``) or SiT (``"sit"``) on ``vae``'s latents for ``gen_steps`` steps and measure
    gFID/KID (``extractor`` features against the test set's reference statistics) at every ``gen_eval_steps`` step:
    ``gen_fid_n`` samples at intermediate checkpoints, ``gen_fid_n_final`` at the last step (:func:`gen_fid_n_at`),
    class-stratified labels (:func:`fid_labels`). Within a seed every autoencoder's generator shares its
    initialisation, batches, training noise, sampling noise and labels (common random numbers, issue #14).
    Cached and resumable; may train for many minutes (logged with an estimate first).

    Returns:
        a :class:`GenCurve` (steps, gFID/KID and samples per step, training losses, run folder, metric, sampler,
        generator, median throughput, cache key).
    """
    extractor = extractor or feature_extractor(P, data)
    n_fid, n_final = P.gen.gen_fid_n, gen_fid_n_at(P, P.gen.gen_steps)
    reference = reference or reference_stats(P, data, extractor)
    cache = train_or_load_latent_cache(P, data, vae)
    cfg = gen_config(P, method, seed, labelled=bool(data.num_classes))
    sampler, sample_steps = sampler_of(P, method)
    key = artefact_key("gen", {"train": dataclasses.asdict(cfg), "n_fid": n_fid, "n_fid_final": n_final,
                               "fid_labels": "stratified", "sampler": sampler,
                               "sample_steps": sample_steps, "sample_batch": P.gen.gen_sample_batch},
                       {"ae": ae.weights_hash(vae), "latents": cache.folder.name,
                        "extractor": extractor.weights_hash, "reference": reference.key})
    run_dir = cache_dir(f"gen-{method}", key)

    def eval_fn(step: int, ema) -> dict:
        g = torch.Generator().manual_seed(derive_seed(seed, "dit_eval"))
        n = gen_fid_n_at(P, step)
        labels = fid_labels(n, ema.num_classes, g)
        imgs = sample_images(ema, vae, cache.norm, n, method=method, sampler=sampler, steps=sample_steps,
                             labels=labels, generator=g, batch_size=P.gen.gen_sample_batch, progress=P.run.progress)
        r = fidm.compute_fid(imgs, reference, extractor, kid=True, verbose=False)
        return {"fid": r["fid"], "kid": r.get("kid_mean"), "kid_std": r.get("kid_std"), "metric": r["metric"],
                "n": n, "labels": "stratified" if labels is not None else "none (unconditional)"}

    if not (run_dir / "log.jsonl").exists():
        announce(f"{cfg.model} ({method}) seed {seed}, {cfg.steps} steps at batch {cfg.batch_size}, gFID at steps "
                 f"{list(cfg.ckpt_steps)}", f"{cfg.steps} training steps + {len(cfg.ckpt_steps) - 1} x {n_fid} + "
                 f"{n_final} samples")
    train_gen(cfg, cache, run_dir, eval_fn=eval_fn)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    evals = sorted((r for r in rows if "eval" in r), key=lambda r: r["step"])
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    speeds = sorted(r["latents_per_s"] for r in rows if "latents_per_s" in r)
    return GenCurve(steps=tuple(r["step"] for r in evals), fid=tuple(r["eval"]["fid"] for r in evals),
                    kid=tuple(r["eval"]["kid"] for r in evals), n_fid=tuple(r["eval"]["n"] for r in evals),
                    loss=tuple(losses), run_dir=run_dir, metric=evals[-1]["eval"]["metric"] if evals else None,
                    sampler=f"{sampler} {sample_steps}", generator=cfg.model,
                    latents_per_s=speeds[len(speeds) // 2] if speeds else None, key=key)


# -------------------------------------------------------------------------------------------------- design pilot
def measure_train_throughput(P: Config, dataset: str, image_size: int, arch: str, steps: int = 12, batch: int = 32,
                             warmup: int = 3) -> dict:
    """Images/s of full EQ-VAE training steps (generator + discriminator, forward + backward + Adam) for a freshly
    built ``arch`` on ``batch`` real images of ``dataset`` at ``image_size`` px, timed after ``warmup`` steps."""
    channels = 3 if dataset == "photo-crops" else P.data.channels
    kw = {"channels": channels} if dataset == "fashion-mnist" else {}
    x = get_dataset(dataset, "train", size=image_size, n=batch * 4, seed=0, **kw).tensors()[0]
    vae = ae.build_autoencoder(arch, in_channels=channels, out_channels=channels, sample_size=image_size).train()
    loss_fn = EQVAELoss(loss_config(P, "eq", disc_start=0), in_channels=channels).train()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(0)
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        xb = x[(i * batch) % len(x):][:batch]
        loss, _, pair = loss_fn.generator_loss(vae, xb, i, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        d_loss, _ = loss_fn.discriminator_loss(*pair, i)
        opt_d.zero_grad()
        if d_loss.requires_grad:
            d_loss.backward()
        opt_d.step()
    dt = time.perf_counter() - t0
    f = ae.downsample_factor(vae)
    n = image_size // f
    try:
        lo, hi = scale_range(n, P.loss.min_scale, 4)
        n_scales = hi - lo + 1
    except ValueError:
        n_scales = 0
    return dict(config=f"{dataset} {image_size}px {arch}", dataset=dataset, image_size=image_size, arch=arch,
                latent=f"{vae.config.latent_channels}x{n}x{n}", latent_side=n, n_scales_floor4=n_scales,
                img_per_s=steps * batch / dt, params_M=sum(p.numel() for p in vae.parameters()) / 1e6)


def design_pilot(P: Config) -> pd.DataFrame:
    """Measure every candidate of ``pilot_candidates`` (dicts with dataset, image_size, arch) and project the
    minutes the profile's pretraining image budget (``pilot_pretrain_images``) would take. Returns a DataFrame."""
    pl = P.pilot
    announce(f"design pilot: {len(pl.pilot_candidates)} candidates x {pl.pilot_steps} training steps",
             "seconds to a few minutes")
    rows = [measure_train_throughput(P, c["dataset"], int(c["image_size"]), c["arch"], steps=pl.pilot_steps,
                                     batch=pl.pilot_batch) for c in pl.pilot_candidates]
    df = pd.DataFrame(rows)
    df["pretrain_min_projected"] = pl.pilot_pretrain_images / df["img_per_s"] / 60
    return df


def design_choice(df, P: Config) -> dict:
    """Apply the design rule to :func:`design_pilot`'s table: keep candidates with ≥ 4 admissible scales (4-cell
    floor) whose projected pretraining time fits ``pilot_budget_minutes``; prefer labelled data (the paper's
    generators are class-conditional, and a classifier gives the fast FID its class structure), then the largest
    latent grid, then the fastest. Returns ``{"chosen", "matches_profile", "text"}``."""
    df = df.assign(labelled=df["config"].str.startswith("fashion-mnist"))
    ok = df[(df["n_scales_floor4"] >= 4) & (df["pretrain_min_projected"] <= P.pilot.pilot_budget_minutes)]
    profile_cfg = f"{P.data.dataset} {P.data.image_size}px {P.base_ae.ae_arch}"
    if ok.empty:
        return {"chosen": None, "matches_profile": False,
                "text": "No candidate fits the pretraining budget on this machine: lower pilot_pretrain_images or "
                        "raise pilot_budget_minutes."}
    best = ok.sort_values(["labelled", "latent_side", "img_per_s"], ascending=[False, False, False]).iloc[0]
    match = best["config"] == profile_cfg
    text = (f"Chosen by the rule: {best['config']} (latent {best['latent']}, {best['img_per_s']:.0f} img/s, "
            f"{best['pretrain_min_projected']:.1f} min projected for {P.pilot.pilot_pretrain_images} pretraining "
            "images). " + ("It matches the profile." if match else
                           f"The profile uses {profile_cfg} instead: check the profile."))
    return {"chosen": best["config"], "matches_profile": bool(match), "text": text}


def read_train_log(run_dir: str | Path) -> pd.DataFrame:
    """The per-step lines of a ``train_ae`` run's ``log.jsonl`` as a DataFrame (validation / event lines dropped;
    later lines for a step, written after a resume, replace earlier ones)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "event" not in r]
    df = pd.DataFrame(rows).drop_duplicates("step", keep="last").sort_values("step")
    for col in ("logits_real", "logits_fake", "d_weight", "nll"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df.reset_index(drop=True)


def expected_branch_fractions(p_alpha: float, p_prior_s: float) -> dict[str, float]:
    """Branch probabilities of Eq. 7 with the official low-resolution branch: ``eq`` = 1 − p_α,
    ``plain`` = p_α·(1 − p_prior_s), ``lowres`` = p_α·p_prior_s (p_α in the paper's meaning)."""
    pa, ps = float(p_alpha), float(p_prior_s)
    return {"plain": pa * (1 - ps), "lowres": pa * ps, "eq": 1 - pa}


def final_samples(P: Config, data: Data, vae, seed: int, n: int, method: str = "dit", curve: GenCurve | None = None,
                  draw: int = 0) -> torch.Tensor:
    """``n`` images ``[n, C, H, W]`` in [-1, 1] from the last checkpoint (EMA weights) of the generator that
    :func:`train_or_load_generative_curve` trained for ``(vae, seed, method)`` (trained first if missing), with
    class-stratified labels; ``draw`` selects an independent sampling draw (labels order and noise)."""
    curve = curve or train_or_load_generative_curve(P, data, vae, seed, method)
    ck = load_gen_checkpoint(latest_checkpoint(curve.run_dir))
    sampler, steps = sampler_of(P, method)
    # draw d >= 1 (the FID spread): 40_000 + 1000 (d - 1) + seed, apart from every other stream for seeds < 1000
    g = torch.Generator().manual_seed(derive_seed(seed, "final_samples") if draw == 0 else
                                      derive_seed(seed, "fid_spread") + 1000 * (draw - 1))
    labels = fid_labels(n, ck.num_classes, g)
    return sample_from_checkpoint(ck, vae, n, sampler=sampler, steps=steps, labels=labels, generator=g,
                                  batch_size=P.gen.gen_sample_batch, progress=P.run.progress)


def measure_fid_draw_spread(P: Config, data: Data, vae, seed: int, method: str, curve: GenCurve, extractor,
                            reference, draws: int | None = None) -> FidSpread:
    """The draw-to-draw spread of the gFID of ONE checkpoint (the last of ``curve``): ``draws`` (default
    ``fid_spread_draws``) independent sampling draws of ``gen_fid_n_final`` samples each (class-stratified labels),
    each scored against ``reference`` (issue #14 item 4). It describes sampling noise inside one replicate, never a
    verdict's interval. Cached as ``fid_spread.json`` in the generator's run folder; samples ``draws`` x n images.

    Returns:
        a :class:`FidSpread` (the draws' gFIDs, mean, sd (ddof 1; None for one draw), range, samples per draw, number
        of draws, step, metric).

    Raises:
        ValueError: ``draws`` < 1."""
    draws = int(P.gen.fid_spread_draws if draws is None else draws)
    if draws < 1:
        raise ValueError(f"fid_spread_draws = {draws}: the spread needs at least one draw (5 or more to be useful)")
    n = gen_fid_n_at(P, P.gen.gen_steps)
    path = Path(curve.run_dir) / "fid_spread.json"
    key = {"draws": draws, "n": n, "reference": reference.key, "extractor": extractor.weights_hash}
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return _fid_spread(cached["result"])
    announce(f"FID draw-to-draw spread: {draws} draws of {n} samples from one final checkpoint", f"{draws * n} samples")
    fids, metric = [], None
    for d in range(draws):
        imgs = final_samples(P, data, vae, seed, n, method, curve, draw=d + 1)
        r = fidm.compute_fid(imgs, reference, extractor, kid=False, verbose=False)
        fids.append(float(r["fid"]))
        metric = r["metric"]
    a = np.asarray(fids)
    result = FidSpread(fids=tuple(fids), mean=float(a.mean()), sd=float(a.std(ddof=1)) if draws > 1 else None,
                       range=float(a.max() - a.min()), n=n, draws=draws, step=curve.steps[-1], metric=metric)
    atomic_write_json(path, {"key": key, "result": dataclasses.asdict(result)})
    return result


def _fid_spread(d: dict) -> FidSpread:
    """A :class:`FidSpread` from its JSON form (``fid_spread.json``'s ``result``)."""
    return FidSpread(**{**d, "fids": tuple(d["fids"])})


def curve_stats(curves: "list[GenCurve] | list[MaskGITCurve]") -> CurveStats:
    """Mean, min and max over replicate seeds of gFID curves evaluated at the same points (``eval_points``: steps of
    a :class:`GenCurve`, epochs of a :class:`MaskGITCurve`), and the 95% t interval of the mean at each point
    (``ci_low``/``ci_high``; equal to the mean for one seed, which has no interval).

    Raises:
        ValueError: no curves, or curves evaluated at different points."""
    if not curves:
        raise ValueError("curve_stats needs at least one curve")
    steps = tuple(curves[0].eval_points)
    if any(tuple(c.eval_points) != steps for c in curves):
        raise ValueError("curves were evaluated at different steps; use the same gen_eval_steps for every seed")
    a = np.array([c.fid for c in curves], dtype=float)
    if len(curves) >= 2:
        ts = [paired_t_interval(a[:, j]) for j in range(a.shape[1])]
        ci_low, ci_high = [t.low for t in ts], [t.high for t in ts]
    else:
        ci_low, ci_high = a[0].tolist(), a[0].tolist()
    return CurveStats(steps=steps, mean=tuple(a.mean(0).tolist()), lo=tuple(a.min(0).tolist()),
                      hi=tuple(a.max(0).tolist()), ci_low=tuple(ci_low), ci_high=tuple(ci_high), k=len(curves))


ABLATIONS = {
    "rotation+scale (default)": ("eq", {}, "rotation+scale", "Table 5"),
    "rotation": ("eq", {"family": "rotation"}, "rotation", "Table 5"),
    "scale": ("eq", {"family": "scale"}, "scale", "Table 5"),
    "rotation+anisotropic": ("eq", {"family": "rotation+anisotropic"}, "rotation+anisotropic", "Table 5"),
    "explicit (λ=0.1)": ("explicit", {}, "explicit", "Table 7"),
    "p_alpha=0.3": ("eq", {"p_alpha": 0.3}, 0.3, "Table 8"),
    "p_alpha=0.7": ("eq", {"p_alpha": 0.7}, 0.7, "Table 8"),
}


def ablation_variants(P: Config) -> dict[str, tuple[str, dict, Any, str]]:
    """The fine-tuning variants of Tables 5, 7 and 8: ``{label: (objective, loss overrides, paper key, table)}``.
    ``ablations`` (a list of labels; None = all) restricts them.

    Raises:
        ValueError: a label that is not a variant (naming the valid ones)."""
    keep = P.finetune.ablations
    unknown = [k for k in keep or () if k not in ABLATIONS]
    if unknown:
        raise ValueError(f"ablations {unknown} are not variants; choose among {list(ABLATIONS)}")
    return {k: v for k, v in ABLATIONS.items() if keep is None or k in keep}


def reference_stats(P: Config, data: Data, extractor, n: int | None = None):
    """FID reference statistics of the first ``n`` test images for ``extractor`` — by default ALL the profile's test
    images (``n_test``; issue #14: a reference of the first 1000 images had class counts 87–115) —, cached under a key
    of the data, the extractor's weights and n (:func:`eqvae_lib.metrics.fid.reference_statistics`)."""
    return fidm.reference_statistics(Data.subset(data.test_x, n), extractor,
                                     cache_dir=fid_cache_dir(), verbose=P.run.progress)


# ---------------------------------------------------------------------------------------------- discrete path
def base_vq_train_config(P: Config, data: Data) -> tuple[AETrainConfig, dict]:
    """The base VQ tokenizer's training config and architecture (``build_autoencoder`` kwargs) under profile ``P``:
    the base AE's recipe (:func:`base_ae_train_config`) with ``vq_pretrain_max_steps``/``_epochs`` replacing its caps
    when set. One definition for :func:`train_or_load_base_vq` and the plateau pilot."""
    b, v = P.base_ae, P.vq
    max_steps = v.vq_pretrain_max_steps if v.vq_pretrain_max_steps is not None else b.pretrain_max_steps
    max_epochs = v.vq_pretrain_max_epochs if v.vq_pretrain_max_epochs is not None else b.pretrain_max_epochs
    cfg = AETrainConfig(loss=loss_config(P, "plain", disc_start=b.pretrain_disc_start), batch_size=b.pretrain_batch,
                        lr=b.pretrain_lr, max_steps=max_steps, max_epochs=max_epochs, plateau=True,
                        val_every=b.pretrain_val_every, val_size=P.data.val_size,
                        plateau_window=b.pretrain_plateau_window, plateau_threshold=b.pretrain_plateau_threshold,
                        seed=P.run.seed, export_ldm=False, checkpoint_every_steps=P.run.checkpoint_every_steps,
                        progress=P.run.progress)
    arch = dict(arch=v.vq_arch, in_channels=data.channels, codebook_size=v.vq_codebook_size,
                sample_size=P.data.image_size)
    return cfg, arch


def train_or_load_base_vq(P: Config, data: Data) -> AEArtefact:
    """The base VQ autoencoder (stand-in for the paper's VQ-GAN): ``vq_arch`` with ``vq_codebook_size`` codes,
    pretrained with the plain objective (VQ loss in place of KL) and dead-code restarts until the validation plateau
    (the base AE's rule; ``vq_pretrain_max_steps``/``_epochs`` replace its caps when set; caps in steps/epochs only).
    May train for minutes."""
    v = P.vq
    cfg, arch = base_vq_train_config(P, data)
    max_steps, max_epochs = cfg.max_steps, cfg.max_epochs
    key = artefact_key("vq", {"train": dataclasses.asdict(cfg), "model": arch},
                       {"train": data.train_id, "val": data.test_id})
    run_dir = cache_dir("vq-base", key)
    if not (run_dir / "summary.json").exists():
        announce(f"base VQ {v.vq_arch} ({v.vq_codebook_size} codes) pretrained until the plateau",
                 f"at most {max_steps} steps or {max_epochs} epochs (None = no cap)")
        pretrain_vq(data.train_x, cfg, run_dir, val=data.test_x, **arch)
    vq = ae.load_autoencoder(run_dir / "model").eval()
    return AEArtefact(vq, run_dir, load_summary(run_dir), ae.weights_hash(vq), key=key)


def train_or_load_finetuned_vq(P: Config, data: Data, objective: str, base: AEArtefact) -> AEArtefact:
    """EQ-VAE (τ on the continuous latent before quantisation) or plain fine-tuning of the base VQ autoencoder for
    ``vq_finetune_epochs`` epochs over the first ``finetune_subset`` training images (same budget for both), at
    ``finetune_lr`` (None = the base VQ's final lr) with the base VQ's PatchGAN (``finetune_disc: warm``) or a fresh
    one; the summary says which (``discriminator``, ``lr_source``).

    Raises:
        ValueError: warm discriminator requested but the base VQ has none saved."""
    f = P.finetune
    n_sub = min(f.finetune_subset, len(data.train_x))
    lr, lr_source = finetune_lr(P, base)
    disc_init, disc_label = finetune_discriminator(P, base)
    cfg = AETrainConfig(loss=loss_config(P, objective, disc_start=0), batch_size=f.finetune_batch,
                        lr=lr, max_epochs=P.vq.vq_finetune_epochs, seed=P.run.seed, val_every=0,
                        val_size=P.data.val_size, export_ldm=False,
                        checkpoint_every_steps=P.run.checkpoint_every_steps, progress=P.run.progress)
    key = artefact_key("vq", {"train": dataclasses.asdict(cfg), "subset": n_sub, "finetune_disc": f.finetune_disc},
                       {"base": base.hash, "train": data.train_id, "val": data.test_id})
    run_dir = cache_dir(f"vq-{objective}", key)
    if not (run_dir / "summary.json").exists():
        announce(f"{objective} fine-tune of the base VQ, {cfg.max_epochs} epochs over {n_sub} images",
                 f"{int(cfg.max_epochs * n_sub // f.finetune_batch)} steps")
        finetune_vq(ae.load_autoencoder(base.run_dir / "model"), Data.subset(data.train_x, n_sub), cfg, run_dir,
                    val=data.test_x, disc_init=disc_init, notes={"discriminator": disc_label, "lr_source": lr_source})
    vq = ae.load_autoencoder(run_dir / "model").eval()
    return AEArtefact(vq, run_dir, load_summary(run_dir), ae.weights_hash(vq), epoch=cfg.max_epochs, key=key)


@dataclass(frozen=True)
class MaskGITCurve:
    """The gFID curve of one MaskGIT run (:func:`train_or_load_maskgit_curve`).

    Attributes:
        epochs: training epochs (over the token grids) at which gFID was measured, ascending.
        fid: gFID at each epoch (lower = better); kid: KID mean at each epoch.
        metric: the extractor's metric name.
        run_dir: the run's cache folder (``curve.json``, ``log.jsonl``, checkpoints).
    """

    epochs: tuple[float, ...]
    fid: tuple[float, ...]
    kid: tuple[float | None, ...]
    metric: str
    run_dir: Path

    @property
    def eval_points(self) -> tuple[float, ...]:
        """Where the curve was evaluated (epochs): the x axis :func:`curve_stats` aligns curves on."""
        return self.epochs


def train_or_load_maskgit_curve(P: Config, data: Data, vq, seed: int, extractor=None, reference=None
                                ) -> MaskGITCurve:
    """Train a MaskGIT (``maskgit_model``) on ``vq``'s tokens of the training images for ``maskgit_epochs`` epochs and
    measure gFID/KID (``gen_fid_n`` samples, ``maskgit_decode_steps`` parallel-decoding steps) after every epoch in
    ``maskgit_eval_epochs``. Cached by the tokenizer's weights hash, the settings, the seed and the code version; may
    train for many minutes.

    Returns a :class:`MaskGITCurve` (epochs, gFID and KID per epoch, metric, run folder); ``curve.json`` in the run
    folder holds the same fields.
    """
    v = P.vq
    extractor = extractor or feature_extractor(P, data)
    reference = reference or reference_stats(P, data, extractor)
    vq_hash = ae.weights_hash(vq)
    tok_path = cache_dir("tokens", artefact_key("maskgit", {}, {"vq": vq_hash, "data": data.train_id})
                         ) / "tokens.safetensors"
    labels = data.train_y if data.num_classes else None
    cache = (load_token_cache(tok_path, vq=vq) if tok_path.exists() else
             build_token_cache(vq, data.train_x, labels=labels, path=tok_path))
    n = len(cache.tokens)
    steps_per_epoch = max(1, n // v.maskgit_batch)
    eval_steps = tuple(int(e * steps_per_epoch) for e in v.maskgit_eval_epochs)
    cfg = MaskGITTrainConfig(steps=int(v.maskgit_epochs * steps_per_epoch), batch_size=v.maskgit_batch,
                             lr=v.maskgit_lr, ema_decay=v.maskgit_ema, checkpoint_steps=eval_steps,
                             eval_steps=eval_steps, seed=seed)
    n_fid = P.gen.gen_fid_n
    key = artefact_key("maskgit", {"train": dataclasses.asdict(cfg), "model": v.maskgit_model, "n_fid": n_fid,
                                   "decode_steps": v.maskgit_decode_steps},
                       {"vq": vq_hash, "tokens": tok_path.parent.name, "extractor": extractor.weights_hash,
                        "reference": reference.key})
    run_dir = cache_dir("maskgit", key)
    done = run_dir / "curve.json"
    if not done.exists():
        announce(f"{v.maskgit_model} seed {seed}, {cfg.steps} steps ({v.maskgit_epochs} epochs of {n} grids)",
                 f"{cfg.steps} training steps + {len(eval_steps)} x {n_fid} samples")
        grid = tuple(cache.tokens.shape[1:])
        torch.manual_seed(seed)
        model = build_maskgit(v.maskgit_model, codebook_size=cache.codebook_size, grid=grid,
                              num_classes=data.num_classes or 0, tokenizer_hash=vq_hash)
        ckpts = sorted(run_dir.glob("step_*.pt"))
        done_evals = {}
        if ckpts:  # resume: keep the evaluations already logged
            for line in (run_dir / "log.jsonl").read_text().splitlines():
                r = json.loads(line)
                if r.get("kind") == "eval" and r["step"] <= int(ckpts[-1].stem.split("_")[1]):
                    done_evals[r["step"]] = r

        def eval_fn(step: int, m) -> dict:
            g = torch.Generator().manual_seed(derive_seed(seed, "maskgit_eval"))
            y = torch.randint(0, data.num_classes, (n_fid,), generator=g) if data.num_classes else None
            toks = maskgit_sample(m, n=n_fid, labels=y, steps=v.maskgit_decode_steps, generator=g)
            r = fidm.compute_fid(decode_to_images(vq, toks, vq_hash), reference, extractor, kid=True, verbose=False)
            return {"fid": r["fid"], "kid": r["kid_mean"], "metric": r["metric"]}

        train_maskgit(model, cache.tokens, cache.labels if data.num_classes else None, cfg, out_dir=run_dir,
                      eval_fn=eval_fn, resume=ckpts[-1] if ckpts else None, progress=P.run.progress)
        evals = {**done_evals}
        for line in (run_dir / "log.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == "eval":
                evals[r["step"]] = r
        curve = {"epochs": [evals[s]["step"] / steps_per_epoch for s in sorted(evals)],
                 "fid": [evals[s]["fid"] for s in sorted(evals)], "kid": [evals[s]["kid"] for s in sorted(evals)],
                 "metric": extractor.metric_name, "run_dir": str(run_dir)}
        atomic_write_json(done, curve)
    d = json.loads(done.read_text())
    return MaskGITCurve(epochs=tuple(d["epochs"]), fid=tuple(d["fid"]), kid=tuple(d["kid"]), metric=d["metric"],
                        run_dir=Path(d["run_dir"]))


@dataclass
class MatchedRFID:
    """The matched-reconstruction EQ-VAE (:func:`train_or_load_matched_rfid_autoencoder`): the autoencoder
    ``artefact``, its ``rfid``, the plain control's ``target_rfid``, ``extra_epochs`` beyond ``finetune_epochs`` and
    whether the target was ``matched``."""

    artefact: AEArtefact
    rfid: float
    target_rfid: float
    extra_epochs: int
    matched: bool


def train_or_load_matched_rfid_autoencoder(P: Config, data: Data, extractor, base: AEArtefact | None = None
                                           ) -> MatchedRFID:
    """EQ-VAE fine-tuned further, one epoch at a time and at most ``matched_rfid_max_extra_epochs`` epochs beyond
    ``finetune_epochs``, until its rFID is no worse than the plain control's: the "matched reconstruction"
    comparison that removes decoder quality as a confound (FEASIBILITY.md point 8). May train for minutes."""
    base = base or train_or_load_base_autoencoder(P, data)
    plain = train_or_load_finetuned_autoencoders(P, "plain", data, base)[-1]
    target = autoencoder_metrics(P, data, plain.model, extractor, which=("reconstruction",))["reconstruction"]["rfid"]
    n0, cap = P.finetune.finetune_epochs, P.finetune.matched_rfid_max_extra_epochs
    for extra in range(cap + 1):
        art = train_or_load_finetuned_autoencoders(P, "eq", data, base, epochs=n0 + extra)[-1]
        r = autoencoder_metrics(P, data, art.model, extractor, which=("reconstruction",))["reconstruction"]["rfid"]
        if r <= target:
            break
    return MatchedRFID(art, r, target, extra, r <= target)


def metric_inputs(result: dict) -> str:
    """One line saying what an :func:`autoencoder_metrics` result (or one part of it) measured — latent space and
    normalisation, posterior, autoencoder, images, rFID reference — for ``RunRecord.add_input`` (issue #16)."""
    return recm.inputs_summary(result)
