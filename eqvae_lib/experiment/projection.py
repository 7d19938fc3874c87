"""This machine's throughput per stage type, and each notebook's projected wall time from a profile's configuration.

Wall-time promises must be projections: users' machines differ by 5x (the AE training step of the ``cpu`` profile ran
at 181 images/s on the reference machine and at 34 images/s on a loaded 2-core one). So

1. :func:`measure_throughput` times, on this machine, a few seconds of each stage type of a profile with the profile's
   own model sizes and batch sizes (warm-up excluded): AE pretraining step without and with the GAN, AE fine-tune step
   (plain and EQ objective), the generator training step of each method, generator sampling with the profile's sampler
   (decoding included), latent encoding / decoding, FID features and the classifier training of the fast FID
   extractor. Rates are items/s (images, or latents for generator training).
2. :func:`work_table` — the count model, in ONE function — lists per notebook the work it builds when the notebooks
   run in order from empty caches (an artefact built by an earlier notebook is reused, not counted twice): items of
   each stage type, from the typed config (step/epoch caps, replicate seeds, generator methods, checkpoints, FID
   sample counts, Fig. 5 epochs, ablation variants).
3. :func:`project` divides counts by rates: seconds per notebook. Where the count is a cap (the base AE stops at a
   validation plateau before its step/epoch cap; the matched-rFID extra epochs), the row says "at most".

Every config key the count model reads is read in :func:`knobs_of` (one place, so a renamed key changes one line).
Not modelled (said in the rows' notes): TwoNN bootstrap arithmetic, LPIPS of the reconstruction metrics, Inception
features (``inception_n``; ``fid_extractor: inception``), figure drawing and process start-up (~10 s per notebook).
Notebook 10 (VQ tokenizer + MaskGIT) is modelled with its own stage types (``vq_*``, ``maskgit_*``).

CLI: ``python -m eqvae_lib project --profile P`` prints the projection (reusing the throughput notebook 00 stored in
``runs/<profile>/throughput.json`` when that file is younger than every file of the library, else measuring, ~1 min).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from .. import autoencoders as ae
from .config import RUNS_DIR, Config, _parse_scalar, load_config
from ..data import get_dataset
from ..io import atomic_write_json, hash_obj
from ..losses import EQVAELoss
from ..metrics.extractors import ClassifierNet
from .pipeline import ablation_variants, fig5_epochs, id_sizes, loss_config, paper_eval_scales, trained_scales
from ..maskgit import build_maskgit, maskgit_loss, sample as maskgit_sample
from ..runtime import device as runtime_device
from ..training import update_ema
from ..train_gen import TrainGenConfig, build_model, make_objective, sample_latents
from ..vq import build_vq, codebook_size, decode_tokens, encode_tokens

PKG_DIR = Path(__file__).resolve().parent.parent  # eqvae_lib/: library and experiment layer
#: number of images of the full splits when ``n_train`` / ``n_test`` are None
DATASET_SIZES = {"fashion-mnist": (60000, 10000)}
#: notebooks in the order ``make reproduce`` runs them
NOTEBOOKS = ("00_design_pilot", "01_data_and_base_ae", "02_finetune", "03_equivariance_failure",
             "04_table1_reconstruction", "05_latent_pca", "06_intrinsic_dimension", "07_generative_comparison",
             "08_gfid_per_epoch", "09_ablations", "10_discrete_vq_maskgit", "99_report")
#: the rotations every equivariance evaluation adds to the scales (90°, 180°, 270°)
N_ROTATIONS = 3
#: warm-up steps of the pilot's measure_train_throughput
PILOT_WARMUP = 3


# ------------------------------------------------------------------------------------------------------ knobs
@dataclass(frozen=True)
class Knobs:
    """The config values the count model reads (see :func:`knobs_of` for their keys), resolved as the pipeline
    resolves them. Counts of images, steps, epochs. ``replicate_seeds``: replicate s = one fine-tune per arm with seed
    s and each generator on it with seed s; ``gen_methods``: the generators of notebook 07, the first the headline
    generator (notebooks 08, 09); ``fig5_epochs``: the fine-tune epochs of Fig. 5 besides epoch 0 (the base);
    ``n_equivariance_scales``: the scales of the latent equivariance (``eval_scales`` ∪ the paper's T_S ∪ the trained
    scales); ``id_points`` / ``id_sizes_points``: test images encoded for the TwoNN and the paired TwoNN at
    ``id_sizes``; ``ablations``: the variant labels of notebook 09; ``train_base``: False for a loaded base
    (``base_vae``)."""

    dataset: str
    image_size: int
    n_train: int
    n_test: int
    val_size: int
    train_base: bool
    pretrain_batch: int
    pretrain_max_epochs: float | None
    pretrain_max_steps: int | None
    pretrain_disc_start: int
    pretrain_val_every: int
    finetune_subset: int
    finetune_epochs: int
    finetune_batch: int
    replicate_seeds: tuple[int, ...]
    gen_methods: tuple[str, ...]
    gen_steps: int
    gen_batch: int
    gen_eval_steps: tuple[int, ...]
    gen_fid_n: int
    gen_fid_n_final: int
    fid_spread_draws: int
    fig5_epochs: tuple[int, ...]
    eval_n: int
    n_eval_scales: int
    n_equivariance_scales: int
    id_points: int
    id_sizes_points: int
    fid_extractor: str
    classifier_n_train: int | None
    classifier_epochs: int
    ablations: tuple[str, ...]
    ablation_epochs: int
    ablation_gfid: bool
    inception_n: int
    matched_rfid_max_extra_epochs: int
    pilot_candidate_sizes: tuple[int, ...]
    pilot_steps: int
    pilot_batch: int
    vq_pretrain_max_epochs: float | None
    vq_pretrain_max_steps: int | None
    vq_finetune_epochs: int
    maskgit_batch: int
    maskgit_epochs: float
    maskgit_eval_epochs: tuple[float, ...]


def knobs_of(P: Config) -> Knobs:
    """Every config value :func:`work_table` uses, read here and only here, from today's keys (a missing key is an
    error, not a default). Derived values come from the pipeline's own functions, so the count model resolves them as
    the notebooks do: ``fig5_epochs`` (:func:`pipeline.fig5_epochs`; None = every epoch), the scales of
    the latent equivariance (``eval_scales`` ∪ :func:`pipeline.paper_eval_scales` ∪
    :func:`pipeline.trained_scales` on the latent side ``image_size`` / f of ``ae_arch``), the paired
    TwoNN's sizes (:func:`pipeline.id_sizes`), ``gen_fid_n_final`` (None = ``gen_fid_n``), the ablation
    variants (:func:`pipeline.ablation_variants`; ``ablations`` None = all).

    Raises:
        ValueError: a dataset without known split sizes and ``n_train`` / ``n_test`` unset; an ``ae_arch`` the
        count model does not know (a loaded base is fine); what the pipeline's functions raise (e.g. no Fig. 5
        epoch left).
    """
    d, b, f, m, g, pl, v = P.data, P.base_ae, P.finetune, P.metrics, P.gen, P.pilot, P.vq
    full = DATASET_SIZES.get(d.dataset)
    if full is None and (d.n_train is None or d.n_test is None):
        raise ValueError(f"dataset {d.dataset!r}: set n_train and n_test (the projection needs the image counts)")
    n_train = min(d.n_train, full[0]) if full and d.n_train else (d.n_train or full[0])
    n_test = min(d.n_test, full[1]) if full and d.n_test else (d.n_test or full[1])
    arch = ae.CONFIGS.get(b.ae_arch)
    if arch is None:
        raise ValueError(f"ae_arch {b.ae_arch!r}: the projection knows the latent side of {sorted(ae.CONFIGS)} only")
    side = d.image_size // 2 ** (len(arch["block_out_channels"]) - 1)
    eq_scales = set(m.eval_scales) | set(paper_eval_scales(side)) | set(trained_scales(P, side))
    return Knobs(
        dataset=d.dataset, image_size=d.image_size, n_train=n_train, n_test=n_test,
        val_size=min(d.val_size, n_test), train_base=not b.base_vae,
        pretrain_batch=b.pretrain_batch, pretrain_max_epochs=b.pretrain_max_epochs,
        pretrain_max_steps=b.pretrain_max_steps, pretrain_disc_start=b.pretrain_disc_start,
        pretrain_val_every=b.pretrain_val_every, finetune_subset=f.finetune_subset,
        finetune_epochs=f.finetune_epochs, finetune_batch=f.finetune_batch,
        replicate_seeds=tuple(int(s) for s in P.run.replicate_seeds), gen_methods=tuple(g.gen_methods),
        gen_steps=g.gen_steps, gen_batch=g.gen_batch,
        gen_eval_steps=tuple(sorted({int(s) for s in g.gen_eval_steps if s <= g.gen_steps} | {g.gen_steps})),
        gen_fid_n=g.gen_fid_n, gen_fid_n_final=int(g.gen_fid_n_final or g.gen_fid_n),
        fid_spread_draws=g.fid_spread_draws, fig5_epochs=tuple(fig5_epochs(P)),
        eval_n=min(m.eval_n, n_test), n_eval_scales=len(m.eval_scales), n_equivariance_scales=len(eq_scales),
        id_points=min(m.id_n, n_test), id_sizes_points=id_sizes(P, n_test)[0],
        fid_extractor=m.fid_extractor, classifier_n_train=m.classifier_n_train,
        classifier_epochs=m.classifier_epochs, ablations=tuple(ablation_variants(P)),
        ablation_epochs=f.ablation_epochs, ablation_gfid=f.ablation_gfid, inception_n=m.inception_n,
        matched_rfid_max_extra_epochs=f.matched_rfid_max_extra_epochs,
        pilot_candidate_sizes=tuple(int(c["image_size"]) for c in pl.pilot_candidates),
        pilot_steps=pl.pilot_steps, pilot_batch=pl.pilot_batch,
        vq_pretrain_max_epochs=v.vq_pretrain_max_epochs if v.vq_pretrain_max_epochs is not None
        else b.pretrain_max_epochs,
        vq_pretrain_max_steps=v.vq_pretrain_max_steps if v.vq_pretrain_max_steps is not None else b.pretrain_max_steps,
        vq_finetune_epochs=v.vq_finetune_epochs, maskgit_batch=v.maskgit_batch, maskgit_epochs=v.maskgit_epochs,
        maskgit_eval_epochs=tuple(v.maskgit_eval_epochs))


# ------------------------------------------------------------------------------------------------ count model
#: stage type -> unit of its rate (items/s)
STAGE_UNITS = {
    "ae_pretrain": "images/s", "ae_pretrain_gan": "images/s", "ae_finetune_plain": "images/s",
    "ae_finetune_eq": "images/s", "encode": "images/s", "decode": "images/s", "features": "images/s",
    "classifier_train": "images/s", **{f"gen_train_{m}": "latents/s" for m in ("dit", "sit")},
    **{f"gen_sample_{m}": "images/s" for m in ("dit", "sit")},
    "vq_pretrain": "images/s", "vq_pretrain_gan": "images/s", "vq_finetune_plain": "images/s",
    "vq_finetune_eq": "images/s", "vq_encode": "images/s", "vq_reconstruct": "images/s",
    "maskgit_train": "token grids/s", "maskgit_sample": "images/s",
}
#: the default ablation variant: the EQ fine-tune of the first replicate seed (cached by notebook 02)
DEFAULT_ABLATION = "rotation+scale (default)"


@dataclass(frozen=True)
class Work:
    """One line of the count model: ``notebook`` builds ``count`` items of stage type ``stage`` (unit of
    :data:`STAGE_UNITS`); ``at_most``: the count is a cap; ``what``: the artefact, for the reader."""

    notebook: str
    stage: str
    count: float
    what: str
    at_most: bool = False


@dataclass(frozen=True)
class Cap:
    """A wall-clock bound of one notebook's stages: the projection of the ``stages`` of ``notebook`` is at most
    ``seconds``. (No profile has one today: the base AE's caps are in steps / epochs, counted as work.)"""

    notebook: str
    stages: tuple[str, ...]
    seconds: float


@dataclass
class CountModel:
    """:func:`work_table`'s answer: the work lines, the caps, and notes per notebook (what is not modelled)."""

    work: list[Work]
    caps: list[Cap] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    unmodelled: tuple[str, ...] = ()


def work_table(k: Knobs) -> CountModel:
    """THE count model: per notebook (in ``make reproduce`` order, from empty caches), the items of each stage type it
    builds. An artefact (AE, latent cache, generator curve, metric part, extractor, reference statistics) is counted
    in the first notebook that needs it only (``built``), as the cache makes later notebooks load it.

    Per artefact:
      * base AE pretraining (unless loaded): S = the smaller of ``pretrain_max_steps`` and
        ceil(``pretrain_max_epochs`` · floor(n_train / batch)) steps at most (the plateau rule stops it earlier);
        min(S, disc_start) steps without the GAN, the rest with it; a validation of ``val_size`` images (encode +
        decode) every ``pretrain_val_every`` steps and one at the end.
      * fine-tune (objective o, replicate seed s): floor(min(finetune_subset, n_train) / finetune_batch) steps per
        epoch, the GAN on from step 0; one validation (``val_size`` images) per epoch. Epochs a shorter run built are
        not counted again (a longer run continues the same folder).
      * latent cache of an AE: ``n_train`` encodes.
      * generator curve (method, AE, seed): ``gen_steps`` · ``gen_batch`` latents of training; at each evaluation
        step (``gen_eval_steps`` ∪ {gen_steps}) ``gen_fid_n`` samples (``gen_fid_n_final`` at the last step), each
        sampled (sampler + decode) and featurised.
      * reference statistics: ``n_test`` test-image features (all test images). Classifier extractor:
        ``classifier_epochs`` · 0.9 · (``classifier_n_train`` or ``n_train``) training images.
      * metric parts per AE (``eval_n`` images), cached per AE and extractor (a part measured without the extractor
        is a different cache entry from one measured with it): equivariance (E = equivariance scales + 3 rotations):
        (E + 1) encodes each; decoder (T = 1 identity + ``eval_scales`` + 3 rotations): encode + T decodes (+ 2T
        features with the extractor); reconstruction: encode + decode (+ 2 features with the extractor);
        intrinsic_dim: ``id_n`` encodes; intrinsic_dim_sizes: max(``id_sizes``) encodes; latent: ``eval_n`` encodes.
      * FID draw spread: ``fid_spread_draws`` × ``gen_fid_n_final`` samples + features of the headline generator on
        the base (first replicate seed).
    """
    work: list[Work] = []
    caps: list[Cap] = []
    notes: dict[str, list[str]] = {}
    built: set = set()
    E = k.n_equivariance_scales + N_ROTATIONS
    T = 1 + k.n_eval_scales + N_ROTATIONS
    last = k.finetune_epochs
    seeds = k.replicate_seeds
    s0 = seeds[0]
    head = k.gen_methods[0]

    def note(nb, text):
        notes.setdefault(nb, []).append(text)

    def add(nb, stage, count, what, at_most=False):
        if count:
            work.append(Work(nb, stage, float(count), what, at_most))

    def need(nb, art, fn):
        """Build artefact ``art`` in notebook ``nb`` by calling ``fn(nb)`` unless an earlier notebook built it."""
        if art not in built:
            built.add(art)
            fn(nb)

    def base_ae(nb):
        if not k.train_base:
            note(nb, "base AE loaded (base_vae), not trained")
            return
        spe = k.n_train // k.pretrain_batch
        caps_ = [c for c in (math.ceil(k.pretrain_max_epochs * spe) if k.pretrain_max_epochs is not None else None,
                             k.pretrain_max_steps) if c is not None]
        if not caps_:
            note(nb, "base AE: no cap in steps or epochs: only the plateau stops it, so its time is not projected")
            return
        steps = min(caps_)
        pre = min(steps, k.pretrain_disc_start)
        add(nb, "ae_pretrain", pre * k.pretrain_batch, f"base AE: {pre} steps without the GAN", True)
        add(nb, "ae_pretrain_gan", (steps - pre) * k.pretrain_batch, f"base AE: {steps - pre} steps with the GAN",
            True)
        n_val = (steps // k.pretrain_val_every if k.pretrain_val_every else 0) + 1
        add(nb, "encode", n_val * k.val_size, f"base AE: {n_val} validations", True)
        add(nb, "decode", n_val * k.val_size, f"base AE: {n_val} validations", True)
        note(nb, "base AE: at most its step/epoch cap (the plateau rule may stop it earlier)")

    def finetune(nb, objective, seed, epochs, label=""):
        steps = epochs * (min(k.finetune_subset, k.n_train) // k.finetune_batch)
        stage = "ae_finetune_plain" if objective == "plain" else "ae_finetune_eq"
        name = label or f"{objective} seed {seed}"
        add(nb, stage, steps * k.finetune_batch, f"{name} fine-tune: {steps} steps")
        add(nb, "encode", epochs * k.val_size, f"{name} fine-tune: {epochs} validations")
        add(nb, "decode", epochs * k.val_size, f"{name} fine-tune: {epochs} validations")

    def ft_all(nb, objective, seed, epochs):
        """A fine-tune run of ``epochs`` epochs; epochs already built by a shorter run are not counted again."""
        done = max([a[3] for a in built if a[0] == "ft" and a[1:3] == (objective, seed)] + [0])
        if epochs > done:
            finetune(nb, objective, seed, epochs - done)
        built.update(("ft", objective, seed, e) for e in range(1, epochs + 1))

    def extractor(nb):
        n = k.classifier_n_train or k.n_train
        if k.fid_extractor == "classifier":
            add(nb, "classifier_train", k.classifier_epochs * int(round(0.9 * n)), "FID classifier training")
        else:
            note(nb, "Inception extractor: its loading/features are not projected")

    def metric(nb, part, aid, xt):
        """Metric ``part`` of AE ``aid``, measured with the FID extractor (``xt``) or without (another cache)."""
        def build(nb_):
            n = k.eval_n
            if part == "equivariance":
                add(nb_, "encode", n * (E + 1), f"equivariance of {aid} ({E} transforms)")
            elif part == "decoder":
                add(nb_, "encode", n, f"decoder equivariance of {aid}")
                add(nb_, "decode", n * T, f"decoder equivariance of {aid} ({T} transforms)")
                add(nb_, "features", 2 * n * T if xt else 0, f"decoder equivariance of {aid}")
            elif part == "reconstruction":
                add(nb_, "encode", n, f"reconstruction of {aid}")
                add(nb_, "decode", n, f"reconstruction of {aid}")
                add(nb_, "features", 2 * n if xt else 0, f"reconstruction of {aid}")
            elif part == "intrinsic_dim":
                add(nb_, "encode", k.id_points, f"intrinsic dimension of {aid}")
            elif part == "intrinsic_dim_sizes":
                add(nb_, "encode", k.id_sizes_points, f"paired TwoNN of {aid}")
            elif part == "latent":
                add(nb_, "encode", n, f"latent statistics of {aid}")
            else:
                raise ValueError(f"unknown metric part {part!r}")
        need(nb, ("metric", part, aid, xt), build)

    def sample(nb, method, n, what):
        add(nb, f"gen_sample_{method}", n, what)
        add(nb, "features", n, what)

    def curve(nb, method, aid, seed):
        def build(nb_):
            need(nb_, ("latents", aid), lambda n_: add(n_, "encode", k.n_train, f"latent cache of {aid}"))
            need(nb_, ("reference",), lambda n_: add(n_, "features", k.n_test, "FID reference (all test images)"))
            add(nb_, f"gen_train_{method}", k.gen_steps * k.gen_batch, f"{method} on {aid} seed {seed}")
            n_eval = sum(k.gen_fid_n_final if s >= k.gen_steps else k.gen_fid_n for s in k.gen_eval_steps)
            sample(nb_, method, n_eval, f"{method} on {aid} seed {seed}: {len(k.gen_eval_steps)} evaluations")
        need(nb, ("curve", method, aid, seed), build)

    def ft(objective, seed, epoch):
        return f"{objective} s{seed} ep{epoch}"

    def arms(seed):
        return {"base": "base", "plain": ft("plain", seed, last), "eq": ft("eq", seed, last)}

    def replicate_metrics(nb, parts, xt):
        """pipeline.replicate_metrics: the base once, plain / EQ per replicate seed."""
        for aid in ["base"] + [a for s in seeds for a in (ft("plain", s, last), ft("eq", s, last))]:
            for part in parts:
                metric(nb, part, aid, xt)

    # 00 design pilot: the candidates' pilot steps (rate scaled by the pixel count), then this module's measurement
    nb = "00_design_pilot"
    for size in k.pilot_candidate_sizes:
        add(nb, "ae_finetune_eq", (k.pilot_steps + PILOT_WARMUP) * k.pilot_batch * (size / k.image_size) ** 2,
            f"pilot candidate {size} px (cost scaled by pixels)")
    note(nb, "plus the throughput measurement itself (~1 min)")
    # 01 base AE
    need("01_data_and_base_ae", ("base",), base_ae)
    # 02 fine-tunes: plain and EQ for every replicate seed, all epochs
    nb = "02_finetune"
    for s in seeds:
        for o in ("plain", "eq"):
            ft_all(nb, o, s, last)
    # 03 decoder equivariance (with the extractor) of every replicate suite
    nb = "03_equivariance_failure"
    need(nb, ("extractor",), extractor)
    replicate_metrics(nb, ("decoder",), True)
    # 04 latent equivariance + reconstruction
    replicate_metrics("04_table1_reconstruction", ("equivariance", "reconstruction"), True)
    # 05 latent statistics (the PCA pictures encode 6 images: not counted)
    replicate_metrics("05_latent_pca", ("latent",), False)
    # 06 TwoNN and paired TwoNN (without the extractor); the data's own TwoNN is arithmetic only
    replicate_metrics("06_intrinsic_dimension", ("intrinsic_dim", "intrinsic_dim_sizes"), False)
    note("06_intrinsic_dimension", "TwoNN bootstrap arithmetic and the data's own TwoNN (pixels) not modelled")
    # 07 every generator on base / plain / EQ (last epoch) x every replicate seed; rFID cached by 04
    nb = "07_generative_comparison"
    for method in k.gen_methods:
        for name in ("base", "plain", "eq"):
            for s in seeds:
                curve(nb, method, arms(s)[name], s)
                if k.gen_fid_n_final != k.gen_fid_n:  # curve_fid.on_one_n: the speed-up's curve on one n
                    sample(nb, method, k.gen_fid_n, f"{method} on {arms(s)[name]} seed {s}: the last checkpoint "
                           f"re-scored on {k.gen_fid_n} samples")
    for s in seeds:
        for aid in arms(s).values():
            metric(nb, "reconstruction", aid, True)
    if k.fid_spread_draws:
        sample(nb, head, k.fid_spread_draws * k.gen_fid_n_final,
               f"FID draw spread: {k.fid_spread_draws} draws of {k.gen_fid_n_final} ({head} on base, seed {s0})")
    if k.inception_n:
        note(nb, f"Inception FID on {k.inception_n} samples per AE not projected")
    if k.matched_rfid_max_extra_epochs:
        extra, first = k.matched_rfid_max_extra_epochs, len(work)
        ft_all(nb, "eq", s0, last + extra)
        for e in range(last + 1, last + extra + 1):
            metric(nb, "reconstruction", ft("eq", s0, e), True)
        curve(nb, head, ft("eq", s0, last + extra), s0)
        work[first:] = [Work(w.notebook, w.stage, w.count, w.what, True) for w in work[first:]]
        note(nb, f"matched rFID: at most {extra} more EQ epochs (seed {s0}) and one {head} curve (only when EQ's "
                 "rFID is not kept); counted in full")
    # 08 Fig. 5: the headline generator on EQ and plain at every fig5 epoch x every replicate seed (the base = epoch 0)
    nb = "08_gfid_per_epoch"
    for s in seeds:
        for aid in ["base"] + [ft(arm, s, e) for arm in ("eq", "plain") for e in k.fig5_epochs]:
            curve(nb, head, aid, s)
            for part in ("equivariance", "reconstruction"):
                metric(nb, part, aid, True)
    # 09 ablations (single seed s0): new variants fine-tuned ablation_epochs epochs, all four metric parts with the
    # extractor; the default variant is EQ seed s0's epoch ablation_epochs (built by 02 when within finetune_epochs)
    nb = "09_ablations"
    parts4 = ("equivariance", "decoder", "reconstruction", "intrinsic_dim")
    variants = {"base": "base"}
    for label in k.ablations:
        if label == DEFAULT_ABLATION:
            ft_all(nb, "eq", s0, k.ablation_epochs)
            variants[label] = ft("eq", s0, k.ablation_epochs)
        else:
            aid = f"ablation {label!r}"
            need(nb, ("ablation", label), lambda nb_, aid=aid: finetune(nb_, "eq", s0, k.ablation_epochs, label=aid))
            variants[label] = aid
    if any(label.startswith("explicit") for label in k.ablations):
        note(nb, "the explicit-objective variant is timed at the EQ fine-tune's rate")
    for aid in variants.values():
        for part in parts4:
            metric(nb, part, aid, True)
    if k.ablation_gfid:
        for aid in variants.values():
            curve(nb, head, aid, s0)
    else:  # the ID-gFID points: base, EQ s0 at the Fig. 5 epochs, plain s0's last epoch (ID without the extractor)
        for aid in ["base"] + [ft("eq", s0, e) for e in k.fig5_epochs] + [ft("plain", s0, last)]:
            metric(nb, "intrinsic_dim", aid, False)
            curve(nb, head, aid, s0)
    # 10 VQ + MaskGIT: the base VQ (its caps), one plain and one EQ fine-tune (seed run.seed), the three tokenizers'
    # latent equivariance + reconstruction, their token caches, and a MaskGIT curve per tokenizer x replicate seed
    nb = "10_discrete_vq_maskgit"
    spe = k.n_train // k.pretrain_batch
    vq_caps = [c for c in (math.ceil(k.vq_pretrain_max_epochs * spe) if k.vq_pretrain_max_epochs is not None
                           else None, k.vq_pretrain_max_steps) if c is not None]
    if vq_caps:
        steps = min(vq_caps)
        pre = min(steps, k.pretrain_disc_start)
        add(nb, "vq_pretrain", pre * k.pretrain_batch, f"base VQ: {pre} steps without the GAN", True)
        add(nb, "vq_pretrain_gan", (steps - pre) * k.pretrain_batch, f"base VQ: {steps - pre} steps with the GAN",
            True)
        n_val = (steps // k.pretrain_val_every if k.pretrain_val_every else 0) + 1
        add(nb, "vq_reconstruct", n_val * k.val_size, f"base VQ: {n_val} validations", True)
        note(nb, "base VQ: at most its step/epoch cap (the plateau rule may stop it earlier)")
    else:
        note(nb, "base VQ: no cap in steps or epochs: only the plateau stops it, so its time is not projected")
    for o in ("plain", "eq"):
        steps = k.vq_finetune_epochs * (min(k.finetune_subset, k.n_train) // k.finetune_batch)
        add(nb, f"vq_finetune_{o}", steps * k.finetune_batch, f"{o} fine-tune of the base VQ: {steps} steps")
        add(nb, "vq_reconstruct", k.val_size, f"{o} fine-tune of the base VQ: final validation")
    need(nb, ("extractor",), extractor)
    need(nb, ("reference",), lambda n_: add(n_, "features", k.n_test, "FID reference (all test images)"))
    n_eval = len(k.maskgit_eval_epochs) * k.gen_fid_n
    grids = int(k.maskgit_epochs * (k.n_train // k.maskgit_batch)) * k.maskgit_batch
    for tok in ("base VQ", "plain VQ", "EQ VQ"):
        add(nb, "vq_encode", k.eval_n * (E + 1), f"equivariance of the {tok} ({E} transforms)")
        add(nb, "vq_reconstruct", k.eval_n, f"reconstruction of the {tok}")
        add(nb, "features", 2 * k.eval_n, f"reconstruction of the {tok}")
        add(nb, "vq_encode", k.n_train, f"token cache of the {tok}")
        for s in seeds:
            add(nb, "maskgit_train", grids, f"MaskGIT on the {tok} seed {s}: {k.maskgit_epochs:g} epochs")
            add(nb, "maskgit_sample", n_eval, f"MaskGIT on the {tok} seed {s}: {len(k.maskgit_eval_epochs)} "
                "evaluations")
            add(nb, "features", n_eval, f"MaskGIT on the {tok} seed {s}")
    note("99_report", "report only (seconds)")
    return CountModel(work, caps, notes)


# -------------------------------------------------------------------------------------------------- projection
def project(model: CountModel, rates: dict[str, float], notebooks: tuple[str, ...] = NOTEBOOKS) -> list[dict]:
    """Seconds per notebook: Σ count / rate over its work lines, a :class:`Cap` bounding its stages.

    Args:
        rates: stage type -> items/s (:func:`measure_throughput`'s ``rate``s).
    Returns:
        one dict per notebook: ``notebook``, ``seconds`` (None when it needs a stage without a rate), ``at_most``
        (the count includes a cap), ``missing`` (stage types without a rate), ``notes``.
    Raises:
        ValueError: a rate that is not positive.
    """
    for s, r in rates.items():
        if not r > 0:
            raise ValueError(f"throughput of {s} is {r!r}; it must be positive")
    rows = []
    for nb in notebooks:
        lines = [w for w in model.work if w.notebook == nb]
        missing = sorted({w.stage for w in lines if w.stage not in rates})
        per_stage: dict[str, float] = {}
        for w in lines:
            if w.stage in rates:
                per_stage[w.stage] = per_stage.get(w.stage, 0.0) + w.count / rates[w.stage]
        for cap in model.caps:
            if cap.notebook == nb:
                capped = sum(per_stage.get(s, 0.0) for s in cap.stages)
                if capped > cap.seconds:
                    scale = cap.seconds / capped
                    for s in cap.stages:
                        if s in per_stage:
                            per_stage[s] *= scale
        rows.append({"notebook": nb, "seconds": None if missing or nb in model.unmodelled else sum(per_stage.values()),
                     "at_most": any(w.at_most for w in lines), "missing": missing,
                     "notes": list(model.notes.get(nb, [])), "per_stage_s": per_stage})
    return rows


def format_minutes(row: dict) -> str:
    """``"at most 12.3 min"`` / ``"4.0 min"`` / ``"not projected (...)"`` for a :func:`project` row."""
    if row["seconds"] is None:
        return f"not projected (no rate for {', '.join(row['missing'])})" if row["missing"] else "not projected"
    return ("at most " if row["at_most"] else "") + f"{row['seconds'] / 60:.1f} min"


# -------------------------------------------------------------------------------------------------- measuring
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(step: Callable[[int], int], seconds: float, warmup: int = 1, min_steps: int = 1,
           dev: torch.device = torch.device("cpu")) -> tuple[float, int, float]:
    """Run ``step(i)`` (returns items done) ``warmup`` times untimed, then until ``seconds`` passed and at least
    ``min_steps`` steps ran (the device synchronised before each clock read). Returns ``(items/s, timed steps,
    timed seconds)``."""
    for i in range(warmup):
        step(i)
    _sync(dev)
    n_items, n_steps, t0 = 0, 0, time.perf_counter()
    while n_steps < min_steps or time.perf_counter() - t0 < seconds:
        n_items += step(warmup + n_steps)
        n_steps += 1
        _sync(dev)
    dt = time.perf_counter() - t0
    return n_items / dt, n_steps, dt


def _images(P: Config, n: int) -> torch.Tensor:
    d = P.data
    kw = {"channels": d.channels} if d.dataset == "fashion-mnist" else {}
    if d.dataset == "imagefolder":
        return torch.rand(n, d.channels, d.image_size, d.image_size) * 2 - 1
    return get_dataset(d.dataset, "train", size=d.image_size, n=n, seed=0, **kw).tensors()[0]


def _ae_step_fn(P: Config, vae, x: torch.Tensor, objective: str, disc_start: int, batch: int) -> Callable[[int], int]:
    """One AE training step as train_ae runs it (generator loss + backward + Adam, discriminator loss + step)."""
    vae = copy.deepcopy(vae).train()
    loss_fn = EQVAELoss(loss_config(P, objective, disc_start=disc_start), in_channels=x.shape[1]).to(x.device).train()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-5, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=1e-5, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(0)

    def step(i: int) -> int:
        xb = x[(i * batch) % len(x):][:batch]
        if len(xb) < batch:
            xb = x[:batch]
        loss, _, pair = loss_fn.generator_loss(vae, xb, i, generator=g)
        opt.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        d_loss, _ = loss_fn.discriminator_loss(*pair, i)
        if d_loss.requires_grad:
            d_loss.backward()
        opt.step()
        opt_d.step()
        return len(xb)
    return step


def measure_throughput(P: Config, seconds: float = 3.0, progress: bool = True, only: tuple[str, ...] | None = None,
                       device: str | torch.device | None = None) -> dict[str, dict]:
    """Time each stage type of the profile ``P`` on this machine for about ``seconds`` each (after one untimed
    warm-up step), with the profile's architecture, image size, batch sizes, generator model, sampler and sampler
    steps (freshly initialised weights: the cost of a step does not depend on them).

    Returns:
        ``{stage: {"rate": items/s, "unit": ..., "batch": b, "steps": timed steps, "seconds": timed s}}`` for the
        stage types of :data:`STAGE_UNITS` the profile uses (``gen_*_<method>`` for each of ``gen_methods``;
        ``features``: the classifier extractor's network; Inception is not measured; ``vq_*``/``maskgit_*``: notebook
        10's, :func:`_measure_vq_maskgit`). ``only``: measure these stage types only; ``device``: where to measure
        (default: where the kit trains, :func:`eqvae_lib.runtime.device`).
    May take a minute or two (≈ 20 stage types × ``seconds``, plus warm-ups).
    """
    torch.manual_seed(0)
    k = knobs_of(P)
    b, g = P.base_ae, P.gen
    out: dict[str, dict] = {}
    dev = runtime_device(device)

    def want(stage):
        return only is None or stage in only

    def put(stage, batch, result):
        rate, steps, dt = result
        out[stage] = {"rate": rate, "unit": STAGE_UNITS[stage], "batch": batch, "steps": steps, "seconds": dt,
                      "device": str(dev)}
        if progress:
            print(f"  {stage:18s} {rate:9.1f} {STAGE_UNITS[stage]} (batch {batch}, {steps} steps in {dt:.1f} s)",
                  flush=True)

    nb = max(b.pretrain_batch, P.finetune.finetune_batch, 64)
    x = _images(P, 2 * nb).to(dev)
    ch = x.shape[1]
    vae = ae.build_autoencoder(b.ae_arch, in_channels=ch, out_channels=ch, latent_channels=b.latent_channels,
                               sample_size=P.data.image_size).to(dev)
    for stage, objective, disc_start, batch in (
            ("ae_pretrain", "plain", 10 ** 9, b.pretrain_batch), ("ae_pretrain_gan", "plain", 0, b.pretrain_batch),
            ("ae_finetune_plain", "plain", 0, P.finetune.finetune_batch),
            ("ae_finetune_eq", "eq", 0, P.finetune.finetune_batch)):
        if want(stage):
            put(stage, batch, _timed(_ae_step_fn(P, vae, x, objective, disc_start, batch), seconds, dev=dev))
    vae.eval()
    eb = 64
    with torch.no_grad():
        z = ae.encode(vae, x[:eb], "mean")
        if want("encode"):
            put("encode", eb, _timed(lambda i: len(ae.encode(vae, x[:eb], "sample")), seconds, dev=dev))
        if want("decode"):
            put("decode", eb, _timed(lambda i: len(ae.decode(vae, z)), seconds, dev=dev))
        net = ClassifierNet(ch).to(dev).eval()
        u = ((x[:eb].clamp(-1, 1) + 1) * 127.5).round()
        if want("features"):
            put("features", eb, _timed(lambda i: len(net.features(u / 127.5 - 1.0)), seconds, dev=dev))
    net = ClassifierNet(ch).train()  # the classifier trains on the CPU (metrics.extractors.train_classifier)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    yb = torch.randint(0, 10, (128,))
    xc = (x[:128] if len(x) >= 128 else x.repeat(math.ceil(128 / len(x)), 1, 1, 1)[:128]).cpu()

    def cls_step(i):
        loss = torch.nn.functional.cross_entropy(net(xc), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(xc)
    if want("classifier_train"):
        put("classifier_train", 128, _timed(cls_step, seconds))

    shape = tuple(z.shape[1:])
    for method in k.gen_methods:
        cfg = TrainGenConfig(model=g.gen_model, method=method, learn_sigma=g.learn_sigma, steps=1,
                             batch_size=g.gen_batch)
        model = build_model(cfg, shape, 10).to(dev)
        ema = copy.deepcopy(model).requires_grad_(False)
        objective = make_objective(cfg)
        gopt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        zb = torch.randn(g.gen_batch, *shape, device=dev)
        yb2 = torch.randint(0, 10, (g.gen_batch,), device=dev)

        def gen_step(i, model=model, ema=ema, objective=objective, gopt=gopt, zb=zb, yb2=yb2):
            gen = torch.Generator(dev).manual_seed(i)
            t = objective.sample_t(len(zb), gen)
            loss = objective.loss(model, zb, t, torch.randn(zb.shape, generator=gen, device=dev), {"y": yb2}).mean()
            gopt.zero_grad(set_to_none=True)
            loss.backward()
            gopt.step()
            update_ema(ema, model, 0.99)
            return len(zb)
        if want(f"gen_train_{method}"):
            put(f"gen_train_{method}", g.gen_batch, _timed(gen_step, seconds, dev=dev))
        sampler, steps = (g.dit_sampler, g.dit_sample_steps) if method == "dit" else (g.sit_sampler,
                                                                                       g.sit_sample_steps)
        ema.eval()
        sb = min(g.gen_sample_batch, 64)

        def sample_step(i, ema=ema, method=method, sampler=sampler, steps=steps, sb=sb):
            with torch.no_grad():
                zs, _ = sample_latents(ema, sb, method=method, sampler=sampler, steps=steps, batch_size=sb,
                                       generator=torch.Generator().manual_seed(i), progress=False)
                return len(ae.decode(vae, zs.to(dev)))
        if want(f"gen_sample_{method}"):
            put(f"gen_sample_{method}", sb, _timed(sample_step, seconds, dev=dev))
    if only is None or any(s.startswith(("vq_", "maskgit_")) for s in only):
        _measure_vq_maskgit(P, x, seconds, dev, want, put)
    return out


def _measure_vq_maskgit(P: Config, x: torch.Tensor, seconds: float, dev: torch.device, want, put) -> None:
    """The stage types of notebook 10: VQ training steps (``vq_pretrain``/``_gan``, ``vq_finetune_plain``/``_eq``,
    the KL path's step with the profile's VQ), ``vq_encode`` (images -> tokens), ``vq_reconstruct`` (encode +
    quantise + decode), ``maskgit_train`` (one MaskGIT step on ``maskgit_batch`` token grids) and ``maskgit_sample``
    (``maskgit_decode_steps`` parallel-decoding steps + decoding to images)."""
    b, v = P.base_ae, P.vq
    ch = x.shape[1]
    vq = build_vq(v.vq_arch, in_channels=ch, codebook_size=v.vq_codebook_size, sample_size=P.data.image_size).to(dev)
    for stage, objective, disc_start, batch in (
            ("vq_pretrain", "plain", 10 ** 9, b.pretrain_batch), ("vq_pretrain_gan", "plain", 0, b.pretrain_batch),
            ("vq_finetune_plain", "plain", 0, P.finetune.finetune_batch),
            ("vq_finetune_eq", "eq", 0, P.finetune.finetune_batch)):
        if want(stage):
            put(stage, batch, _timed(_ae_step_fn(P, vq, x, objective, disc_start, batch), seconds, dev=dev))
    vq.eval()
    eb = 64
    with torch.no_grad():
        tokens = encode_tokens(vq, x[:eb])
        if want("vq_encode"):
            put("vq_encode", eb, _timed(lambda i: len(encode_tokens(vq, x[:eb])), seconds, dev=dev))
        if want("vq_reconstruct"):
            put("vq_reconstruct", eb, _timed(lambda i: len(decode_tokens(vq, encode_tokens(vq, x[:eb]))), seconds,
                                             dev=dev))
    model = build_maskgit(v.maskgit_model, codebook_size=codebook_size(vq), grid=tuple(tokens.shape[1:]),
                          num_classes=10).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    grids = torch.randint(0, codebook_size(vq), (v.maskgit_batch, *tokens.shape[1:]), device=dev)
    labels = torch.randint(0, 10, (v.maskgit_batch,), device=dev)

    def mg_step(i):
        loss, _ = maskgit_loss(model, grids, labels, generator=torch.Generator(dev).manual_seed(i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(grids)
    if want("maskgit_train"):
        put("maskgit_train", v.maskgit_batch, _timed(mg_step, seconds, dev=dev))
    model.eval()
    sb = min(P.gen.gen_sample_batch, 64)

    def mg_sample(i):
        with torch.no_grad():
            toks = maskgit_sample(model, n=sb, labels=torch.arange(sb, device=dev) % 10, steps=v.maskgit_decode_steps,
                                  generator=torch.Generator(dev).manual_seed(i))
            return len(decode_tokens(vq, toks))
    if want("maskgit_sample"):
        put("maskgit_sample", sb, _timed(mg_sample, seconds, dev=dev))


# -------------------------------------------------------------------------------------------------- stored rates
def throughput_path(profile: str) -> Path:
    """Where notebook 00 stores this machine's throughput for ``profile``: ``runs/<profile>/throughput.json``."""
    return RUNS_DIR / profile / "throughput.json"


def _measured_config(P: Config) -> str:
    """The identity of what :func:`measure_throughput` measures for ``P`` (the profile's resolved configuration)."""
    return hash_obj(P.flat())


def save_throughput(P: Config, measured: dict[str, dict], path: Path | None = None) -> Path:
    """Write ``measured`` (:func:`measure_throughput` of ``P``) with the machine's description and the identity of
    ``P``'s configuration, atomically (default :func:`throughput_path`)."""
    path = path or throughput_path(P.profile)
    atomic_write_json(path, {"profile": P.profile, "config": _measured_config(P),
                             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
                             "stages": measured})
    return path


def machine() -> dict:
    """CPU count, torch threads, platform and torch version (beside every throughput)."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def library_mtime(pkg: Path = PKG_DIR) -> float:
    """The newest modification time of the library's ``.py`` files."""
    return max(p.stat().st_mtime for p in pkg.rglob("*.py"))


def load_throughput(P: Config, path: Path | None = None) -> dict[str, dict] | None:
    """The stored throughput of ``P`` (default :func:`throughput_path`) when the file exists, was measured for the same
    configuration and is younger than every library file; else None (a stale, foreign or unreadable file is ignored
    with a printed reason)."""
    path = path or throughput_path(P.profile)
    if not path.is_file():
        return None
    if path.stat().st_mtime < library_mtime():
        print(f"{path} is older than the library code: measuring again")
        return None
    try:
        stored = json.loads(path.read_text())
        if stored.get("config") != _measured_config(P):
            print(f"{path} was measured for another configuration: measuring again")
            return None
        return {s: v for s, v in stored["stages"].items() if s in STAGE_UNITS and v["rate"] > 0}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        print(f"{path} is unreadable ({e}): measuring again")
        return None


def projection_table(P: Config, measured: dict[str, dict], notebooks: tuple[str, ...] = NOTEBOOKS):
    """A DataFrame: notebook, projected time (text), minutes, at_most, notes — for notebook 00 and the CLI."""

    rows = project(work_table(knobs_of(P)), {s: v["rate"] for s, v in measured.items()}, notebooks)
    return pd.DataFrame([{"notebook": r["notebook"], "projected": format_minutes(r),
                          "minutes": None if r["seconds"] is None else r["seconds"] / 60, "at_most": r["at_most"],
                          "notes": "; ".join(r["notes"])} for r in rows])


def cli_project(argv: list[str]) -> int:
    """``python -m eqvae_lib project --profile P [--notebooks N1 N2 ...] [--measure] [--seconds S]``."""
    p = argparse.ArgumentParser(prog="python -m eqvae_lib project", description="Projected wall time of each notebook of a "
                                "profile on this machine (count model x measured throughput).")
    p.add_argument("--profile", default=None, help="smoke | cpu | cpu-full | paper (default $EQVAE_PROFILE or cpu)")
    p.add_argument("--notebooks", nargs="*", default=None, help="notebook names (default: all)")
    p.add_argument("--measure", action="store_true", help="measure even when a fresh stored throughput exists")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per stage type (default 3)")
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a papermill-style override of a config key (as make reproduce's PARAMS)")
    args = p.parse_args(argv)
    P = load_config(args.profile, {name: _parse_scalar(value) for name, value in args.p})
    notebooks = tuple(Path(n).stem for n in args.notebooks) if args.notebooks else NOTEBOOKS
    unknown = [n for n in notebooks if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebooks {unknown}; known: {', '.join(NOTEBOOKS)}")
    model = work_table(knobs_of(P))  # bad values fail before measuring
    stages = tuple(sorted({w.stage for w in model.work if w.notebook in notebooks}))  # only what these notebooks use
    measured = None if args.measure else load_throughput(P)
    if measured is not None and any(st not in measured for st in stages):
        measured = None  # stored by a run of other notebooks: measure again
    source = str(throughput_path(P.profile))
    if measured is None:
        print(f"measuring this machine's throughput for profile {P.profile} "
              f"(~{len(stages) * args.seconds + 30:.0f} s)")
        measured = measure_throughput(P, seconds=args.seconds, only=stages)
        source = f"measured now, stored in {save_throughput(P, measured)}"
    table = projection_table(P, measured, notebooks)
    print(f"Projected wall time per notebook, profile {P.profile}, this machine (throughput: {source}):")
    for r in table.itertuples():
        print(f"  {r.notebook:28s} {r.projected:>22s}" + (f"   ({r.notes})" if r.notes else ""))
    known = table["minutes"].dropna()
    print(f"  {'total':28s} {('at most ' if table['at_most'].any() else '') + f'{known.sum():.1f} min':>22s}"
          + ("   (notebooks not projected excluded)" if len(known) < len(table) else ""))
    return 0
