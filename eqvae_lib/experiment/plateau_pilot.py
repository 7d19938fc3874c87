"""The base-only design pilot of protocol v2 (issue #15, item 1): where does the validation plateau rule fire?

The profile's base autoencoder (or base VQ tokenizer) is trained exactly as the pipeline trains it
(:func:`~eqvae_lib.experiment.pipeline.base_ae_train_config` / :func:`~eqvae_lib.experiment.pipeline.base_vq_train_config`: same
objective, batch, lr, GAN start, validation images, seed), except that the plateau rule does not stop it and a step
cap ``max_steps`` does. The validation trace it logs (L1, MSE, PSNR on ``val_size`` held-out test images every
``pretrain_val_every`` steps) is then read post hoc with the rule itself (:func:`plateau_fire_step`), which gives
the step at which a run with the rule on would have stopped. The profile's caps are then set above that step so that
the reference run stops at its plateau, not at a cap; where the rule does not fire within the pilot, the pilot only
says that the cap must exceed its length, not where the plateau lies. The pilot uses base metrics only (no
EQ-vs-control result is seen), as the issue requires of a design pilot.

A pilot may run on a GPU to save time; its record says on which device and with which precision (``bf16`` off by
default so the arithmetic is fp32 as on the CPU, up to TF32 matmuls and summation order: the fire step is a design
input, not a result).

Command line: ``python -m eqvae_lib plateau-pilot --profile cpu --kind ae --steps 15000 --out runs/pilot-ae``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..io import atomic_path, atomic_write_json, atomic_write_text, git_commit
from ..runtime import REPO_ROOT
from ..train_ae import load_summary, plateau_gan_on, plateau_reached, pretrain
from ..vq import pretrain_vq
from .config import load_config
from .pipeline import base_ae_train_config, base_vq_train_config, code_version, load_data, lock_hash
from .records import replace_marked_block

KINDS = ("ae", "vq")


def plateau_fire_step(trace: list[dict], gan_on: int, window: int, threshold: float) -> int | None:
    """The first validation step at which the plateau rule (:func:`~eqvae_lib.train_ae.plateau_reached`) fires on
    ``trace`` (dicts with ``step`` and ``l1``, in step order), counting only validations after the GAN start
    ``gan_on`` (as the training loop does: switching the GAN on trades L1 for sharpness). None when it never fires
    within the trace."""
    seen: list[float] = []
    for t in trace:
        if t["step"] <= gan_on:
            continue
        seen.append(float(t["l1"]))
        if plateau_reached(seen, window, threshold)[0]:
            return int(t["step"])
    return None


def record_fire_step(record: dict) -> int | None:
    """The step at which the plateau rule of this code version fires on a pilot record's trace (its ``gan_on``,
    ``window``, ``threshold``). Plots and README text use this, not the record's stored ``fire_step``, so that a
    record written under an earlier rule is never shown with that rule's answer."""
    return plateau_fire_step(record["trace"], record["gan_on"], record["window"], record["threshold"])


def validation_trace(run_dir: str | Path) -> list[dict]:
    """The validation points of a ``train_ae`` run's ``log.jsonl``: dicts ``step``, ``l1``, ``mse``, ``psnr`` in step
    order (a point written again after a resume replaces the earlier one).

    Raises:
        FileNotFoundError: ``run_dir`` has no ``log.jsonl``."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log; is {run_dir} a train_ae run folder?")
    points = {}
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if isinstance(row.get("val"), dict):
            points[int(row["step"])] = {"step": int(row["step"]), **{k: float(row["val"][k])
                                                                      for k in ("l1", "mse", "psnr")}}
    return [points[k] for k in sorted(points)]


@dataclass(frozen=True)
class PlateauPilot:
    """Result of :func:`train_plateau_pilot`: ``trace`` = validation points (``step``, ``l1``, ``mse``, ``psnr``
    (dB, images in [-1, 1])), ``fire_step`` = where the rule would have stopped (None: not within ``steps_run``),
    ``gan_on`` = the GAN start step, ``steps_per_epoch`` at the profile's batch, ``wall_s`` = training seconds of
    this process (resumes add up), ``record`` = path of the JSON record."""

    kind: str
    profile: str
    trace: list[dict]
    fire_step: int | None
    gan_on: int
    window: int
    threshold: float
    steps_run: int
    steps_per_epoch: int
    device: str
    wall_s: float
    record: Path


def train_plateau_pilot(profile: str, kind: str, max_steps: int, out: str | Path, device: str | None = None,
                        bf16: bool = False, max_time_s: float | None = None, note: str = "") -> PlateauPilot:
    """Train the profile's base ``kind`` (``"ae"``: the base autoencoder; ``"vq"``: the base VQ tokenizer) with the
    plateau rule off for ``max_steps`` optimizer steps into ``out`` (resumable: a rerun continues from its last
    checkpoint), then read where the rule would have fired. ``max_time_s`` (seconds of training) also ends the pilot —
    a pilot on a lent machine may need it; the base of a reference run is never capped in time. Writes ``out/plateau_pilot_<kind>.json`` (atomic) with
    the trace, the fire step, the resolved training config, device, precision, git commit and wall time. May train
    for an hour or more on a CPU. ``note`` (free text: where and why it ran) is stored in the record as ``run_note``;
    the record also carries the code version of the stage (``code_version``, independent of git metadata) and the hash
    of ``requirements.lock``.

    Raises:
        ValueError: ``kind`` not in ``KINDS``, or the profile loads its base (``base_vae``: nothing to pilot).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {KINDS}")
    P = load_config(profile)
    if kind == "ae" and P.base_ae.base_vae:
        raise ValueError(f"profile {profile!r} loads its base autoencoder ({P.base_ae.base_vae}); nothing to pilot")
    data = load_data(P)
    cfg, arch = (base_ae_train_config if kind == "ae" else base_vq_train_config)(P, data)
    cfg = dataclasses.replace(cfg, plateau=False, max_steps=int(max_steps), max_epochs=None, max_time_s=max_time_s,
                              device=device, bf16=bf16, progress=False, log_every=50)
    out = Path(out)
    print(f"plateau pilot ({profile}, {kind}): {arch['arch']} on {len(data.train_x)} images, batch {cfg.batch_size}, "
          f"lr {cfg.lr}, GAN from step {cfg.loss.disc_start}, validation every {cfg.val_every} steps on "
          f"{cfg.val_size} images, {max_steps} steps, device {device or 'auto'}, bf16 {bf16}", flush=True)
    t0 = time.time()
    (pretrain if kind == "ae" else pretrain_vq)(data.train_x, cfg, out, val=data.test_x, **arch)
    wall = time.time() - t0
    trace = validation_trace(out)
    steps_run = int(load_summary(out)["steps"])
    gan_on = plateau_gan_on(cfg)
    fire = plateau_fire_step(trace, gan_on, cfg.plateau_window, cfg.plateau_threshold)
    steps_per_epoch = int(load_summary(out)["steps_per_epoch"])  # as the loop counts them (drop-last batches)
    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    record = out / f"plateau_pilot_{kind}.json"
    atomic_write_json(record, {
        "claim": "plateau_pilot", "kind": kind, "profile": profile, "fire_step": fire,
        "fire_epoch": None if fire is None else fire / steps_per_epoch, "gan_on": gan_on,
        "window": cfg.plateau_window, "threshold": cfg.plateau_threshold, "steps_run": steps_run,
        "steps_per_epoch": steps_per_epoch, "trace": trace, "train_config": dataclasses.asdict(cfg),
        "model": arch, "device": dev, "gpu": torch.cuda.get_device_name() if dev.startswith("cuda") else None,
        "bf16": bf16, "max_time_s": max_time_s, "torch": torch.__version__, "git_commit": git_commit(),
        "code_version": code_version(kind), "requirements_lock": lock_hash(), "run_note": note,
        "wall_s": round(wall, 1),
        "note": "design pilot: base metrics only; the plateau rule off, read post hoc (plateau_fire_step)"})
    print(f"plateau rule fires at step {fire} ({'never' if fire is None else f'{fire / steps_per_epoch:.2f} epochs'}"
          f" within {steps_run} steps); record {record}", flush=True)
    return PlateauPilot(kind, profile, trace, fire, gan_on, cfg.plateau_window, cfg.plateau_threshold,
                        steps_run, steps_per_epoch, dev, wall, record)


def plot_plateau_pilots(records: list[str | Path], out: str | Path) -> Path:
    """Validation PSNR (dB) against optimizer step of each pilot record (``plateau_pilot_<kind>.json``), with the GAN
    start and the step at which the plateau rule fires; saved as ``out`` (``.png`` and ``.pdf``). Returns the png.

    Raises:
        FileNotFoundError: a record does not exist."""
    out = Path(out)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for path in records:
        r = json.loads(Path(path).read_text())
        steps = [t["step"] for t in r["trace"]]
        line, = ax.plot(steps, [t["psnr"] for t in r["trace"]], marker="o", ms=3,
                        label=f"base {r['kind'].upper()} ({r['model']['arch']})")
        fire = record_fire_step(r)
        if fire is not None:
            ax.axvline(fire, color=line.get_color(), ls="--", lw=1)
        ax.axvline(r["gan_on"], color="grey", ls=":", lw=1)
    ax.set_xlabel(f"optimizer step (batch {r['train_config']['batch_size']})")
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title(f"plateau pilot, profile {r['profile']} (dotted: GAN start; dashed: the plateau rule fires)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        with atomic_path(out.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, dpi=120, format=suffix[1:])
    plt.close(fig)
    return out.with_suffix(".png")


def psnr_trend(trace: list[dict], gan_on: int, end: int, skip: int = 1000) -> dict:
    """Least-squares trend of the validation PSNR of a training trace (dicts with ``step`` and ``psnr`` in dB) after
    the GAN start: over the validations with ``gan_on + skip < step <= end`` (``skip`` steps leave out the GAN's
    switch-on shock; ``end`` = the step where the plateau rule fired, or the last step). Returns ``first``/``last``
    step, ``n`` points, ``slope_db_per_1000`` (dB per 1000 steps) and ``residual_sd_db`` (dB, the swing between
    validations around the trend). Says how far from flat a base was when it stopped.

    Raises:
        ValueError: fewer than 3 validations in that range."""
    pts = [t for t in trace if gan_on + skip < t["step"] <= end]
    if len(pts) < 3:
        raise ValueError(f"{len(pts)} validations in steps ({gan_on + skip}, {end}]: too few for a trend")
    x = np.array([t["step"] for t in pts], float)
    y = np.array([t["psnr"] for t in pts], float)
    slope, icpt = np.polyfit(x, y, 1)
    return {"first": int(x[0]), "last": int(x[-1]), "n": len(pts), "slope_db_per_1000": float(slope * 1000),
            "residual_sd_db": float(np.std(y - (icpt + slope * x), ddof=2))}


def readme_paragraph(records: list[dict]) -> str:
    """The README's sentences on the plateau pilots, generated from their records (no hand-typed number)."""
    out = []
    for r in records:
        name = {"ae": "base AE", "vq": "base VQ"}[r["kind"]]
        fire = record_fire_step(r)
        tr = psnr_trend(r["trace"], r["gan_on"], fire or r["steps_run"])
        where = (f"the rule fires at step {fire} ({fire / r['steps_per_epoch']:.1f} epochs)"
                 if fire is not None else f"the rule does not fire within {r['steps_run']} steps")
        run = (f"{r['steps_run']} steps on {r.get('gpu') or r['device']}, torch {r['torch']}"
               + (f", stopped by a {r['max_time_s']:g} s time limit" if r.get("max_time_s") else ""))
        out.append(f"`{r['profile']}` {name} ({r['model']['arch']}; pilot of {run}): {where}; over steps "
                   f"{tr['first']}–{tr['last']} its validation PSNR rose {tr['slope_db_per_1000']:+.2f} dB per 1000 "
                   f"steps (least squares) with a residual SD of {tr['residual_sd_db']:.2f} dB between validations.")
    return "\n".join(f"- {line}" for line in out)


def update_readme(records: list[str | Path], readme: str | Path) -> bool:
    """Replace the block between ``<!-- plateau-pilot -->`` and ``<!-- /plateau-pilot -->`` of ``readme`` with
    :func:`readme_paragraph` of the records. Returns True when it changed.

    Raises:
        ValueError: the README has no such markers."""
    readme = Path(readme)
    text = readme.read_text()
    block = readme_paragraph([json.loads(Path(r).read_text()) for r in records])
    new = replace_marked_block(text, "plateau-pilot", f"<!-- plateau-pilot -->\n{block}\n<!-- /plateau-pilot -->",
                               readme)
    if new != text:
        atomic_write_text(readme, new)
    return new != text


def cli_plateau_pilot(argv: list[str]) -> int:
    """``python -m eqvae_lib plateau-pilot --profile cpu --kind ae --steps N --out DIR [--device cuda] [--bf16]``.
    Returns 0, or 2 on bad input (one line on stderr)."""
    p = argparse.ArgumentParser(prog="python -m eqvae_lib plateau-pilot", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--kind", choices=KINDS, default="ae")
    p.add_argument("--steps", type=int, help="step cap of the pilot (the plateau rule is off)")
    p.add_argument("--out", required=True, help="run folder (resumable); with --from-records: the plot's path")
    p.add_argument("--from-records", nargs="+", metavar="JSON", help="train nothing: plot these pilot records into "
                   "--out (.png/.pdf) and regenerate the README's plateau-pilot block from them")
    p.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA (default off: fp32 as on the CPU)")
    p.add_argument("--max-time", type=float, help="also stop after this many seconds of training (pilot only)")
    p.add_argument("--note", default="", help="free text stored in the record (where and why the pilot ran)")
    a = p.parse_args(argv)
    if a.from_records:
        print(plot_plateau_pilots(a.from_records, a.out))
        print("README changed" if update_readme(a.from_records, REPO_ROOT / "README.md") else "README unchanged")
        return 0
    if a.steps is None:
        raise ValueError("--steps is required to train a pilot (or give --from-records to plot existing records)")
    train_plateau_pilot(a.profile, a.kind, a.steps, a.out, a.device, a.bf16, a.max_time, a.note)
    return 0
