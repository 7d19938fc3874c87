"""Training loop for the latent generative models (DiT with DDPM, SiT with the linear interpolant) and end-to-end
image sampling.

Protocol (EQ-VAE arXiv 2502.09509 v3, Sec. 5.1 / App. B, after DiT): AdamW lr 1e-4, weight decay 0, global batch 256,
EMA 0.9999 (``lerp``, as ``torch.optim.swa_utils.get_ema_multi_avg_fn``), no learning-rate schedule, label dropout 0.1, bf16 autocast on CUDA. Multi-GPU through ``torchrun``
(DistributedDataParallel; NCCL on CUDA, gloo on CPU), or ``launch_spawn`` for processes without torchrun.

Determinism (the RNG rule of :mod:`eqvae_lib.rng`): every random draw of a step is drawn for the GLOBAL batch, on
the training device, from a generator derived from (seed, stream, step) — streams ``timesteps``, ``noise``,
``labels`` (label dropout) and ``posterior`` (REPA posterior noise); batch indices come from the ``data`` stream
(seed, epoch) — and each rank takes its slice. Hence

* a resumed run equals the uninterrupted one bit for bit on CPU (no RNG state to carry),
* N processes compute the same update as one process with the same global batch (up to float summation order),
* two runs with the same seed on different latents (EQ vs plain AE) share timesteps, noise and label dropout.

Speed (issue 17): the step reads nothing back from the device except on logging steps (the loss is accumulated on
the device in float64 and read every ``log_every`` steps); TF32 on CUDA; fused AdamW on CUDA; ``compile=True``
runs the backbone through ``torch.compile`` (opt-in).

Batches: each epoch is a permutation of the cache seeded by (seed, epoch); steps take consecutive global batches
(the last incomplete batch of an epoch is dropped, as DiT's ``drop_last=True``).

Plumbing (:mod:`eqvae_lib.training`): process group, ``DistributedDataParallel``, :class:`~eqvae_lib.training.EMA`,
the atomic :class:`~eqvae_lib.training.Checkpointer` and the :class:`~eqvae_lib.training.JsonlLogger`.

Files in ``run_dir``: ``config.json``, ``log.jsonl`` (one JSON object per line: ``{"kind": "train", "step", "loss",
"latents_per_s", "wall_s", ...}`` every ``log_every`` steps and at the last step (``"partial": true`` when off that
grid; such lines are dropped when the run is resumed), and ``{"kind": "eval", "step", "eval": {...}}`` at checkpoint
steps), ``checkpoints/step_0000100.pt`` (model, EMA, optimizer, step, config, latent normalisation; atomic; format
``eqvae-gen-v1``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .dit import DiT, GaussianDiffusion, create_diffusion, dit_model, sample_dit
from . import rng as rng_rule
from .io import atomic_write_json, git_commit
from .latents import LatentCache, LatentNorm, decode_latents, load_latent_cache
from .perf import adam_kwargs, enable_tf32, maybe_compile
from .sit import LinearInterpolant, sample_sit, sit_model
from .training import (EMA, Checkpointer, JsonlLogger, barrier, load_checkpoint, mean_over_processes, process_group,
                       resolve_device, spawn_processes, wrap_ddp)

CHECKPOINT_FORMAT = "eqvae-gen-v1"


@dataclass
class TrainGenConfig:
    """Generative training settings (defaults = the paper's DiT protocol except ``steps``).

    Attributes:
        model: ``"DiT-B/2"``, ``"DiT-XL/2"``, ``"DiT-T/2"`` (CPU), ... (``SiT-*`` names are accepted as aliases).
        method: ``"dit"`` (1000-step DDPM, ε-prediction) or ``"sit"`` (linear interpolant, velocity).
        num_classes: None = from the cache (its largest label + 1; 0 if unlabelled); 0 = unconditional (labels
            ignored, the model sees the null class).
        class_dropout_prob: label dropout (0.1).
        learn_sigma: DiT only: learned variance + hybrid loss (DiT default True; False = L_simple only).
        t_scale: SiT only: the network sees t_scale·t (SiT: 1.0).
        steps: total optimizer steps. batch_size: GLOBAL batch (split over processes).
        lr, weight_decay: AdamW (1e-4, 0). ema_decay: 0.9999 (small runs: e.g. 0.999). grad_clip: 0 = none.
        ckpt_steps: steps at which to evaluate (``eval_fn``) and save a checkpoint; the last step always is.
        log_every: steps between loss-log lines. seed: model init and all training randomness.
        bf16: autocast to bfloat16 on CUDA (ignored on CPU). progress: tqdm bar on rank 0.
        compile: ``torch.compile`` the backbone (opt-in; compile time is paid once per process).
    """
    model: str = "DiT-T/2"
    method: str = "dit"
    num_classes: int | None = None
    class_dropout_prob: float = 0.1
    learn_sigma: bool = True
    t_scale: float = 1.0
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    grad_clip: float = 0.0
    ckpt_steps: list[int] = field(default_factory=list)
    log_every: int = 100
    seed: int = 0
    bf16: bool = True
    progress: bool = True
    compile: bool = False

    def __post_init__(self):
        if self.method not in ("dit", "sit"):
            raise ValueError(f"method must be 'dit' or 'sit', got {self.method!r}")
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size and log_every must be >= 1")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1], got {self.ema_decay}")
        self.ckpt_steps = sorted({int(s) for s in self.ckpt_steps})

    @classmethod
    def from_dict(cls, d: dict) -> "TrainGenConfig":
        """Build from a dict, ignoring unknown keys (with a warning)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            warnings.warn(f"ignoring unknown TrainGenConfig keys {sorted(unknown)}", stacklevel=2)
        return cls(**{k: v for k, v in d.items() if k in names})


# fields whose change makes a checkpoint unusable for resuming
_MODEL_FIELDS = ("model", "method", "learn_sigma", "t_scale")
_SOFT_FIELDS = ("batch_size", "lr", "weight_decay", "ema_decay", "grad_clip", "seed", "class_dropout_prob", "bf16")


@dataclass
class TrainResult:
    """What ``train_gen`` returns: the raw and EMA models (on the training device), the final step, the run folder,
    the log path, checkpoint paths written by this call, and the eval records ``[{"step", "eval"}]`` of this call."""
    model: DiT
    ema: DiT
    step: int
    run_dir: Path
    log_path: Path
    checkpoints: list[Path]
    evals: list[dict]
    norm: LatentNorm


@dataclass
class GenCheckpoint:
    """A loaded generative checkpoint: ``model`` (EMA weights unless asked otherwise, eval mode), its ``norm``
    (latent normalisation + AE hash of the training latents), ``config``, ``step`` and ``num_classes``."""
    model: DiT
    norm: LatentNorm
    config: TrainGenConfig
    step: int
    num_classes: int


# ---------------------------------------------------------------------------------------------------- building
def build_model(cfg: TrainGenConfig, latent_shape: tuple[int, int, int], num_classes: int) -> DiT:
    """The DiT / SiT backbone for latents ``(c, h, w)`` (h must equal w)."""
    c, h, w = latent_shape
    if h != w:
        raise ValueError(f"DiT needs square latents, got {h}x{w}")
    name = cfg.model.replace("SiT-", "DiT-")
    if cfg.method == "dit":
        return dit_model(name, input_size=h, in_channels=c, num_classes=num_classes,
                         class_dropout_prob=cfg.class_dropout_prob, learn_sigma=cfg.learn_sigma)
    return sit_model(name.replace("DiT-", "SiT-"), input_size=h, in_channels=c, num_classes=num_classes,
                     class_dropout_prob=cfg.class_dropout_prob)


def make_objective(cfg: TrainGenConfig) -> GaussianDiffusion | LinearInterpolant:
    """DiT: ``create_diffusion("")`` (1000 linear steps); SiT: ``LinearInterpolant(t_scale)``. Both offer
    ``sample_t(n, generator)`` and ``loss(model, x0, t, noise, model_kwargs) -> [B]``."""
    if cfg.method == "dit":
        return create_diffusion("", learn_sigma=cfg.learn_sigma)
    return LinearInterpolant(t_scale=cfg.t_scale)


def _cache_batch(cache: LatentCache, idx: torch.Tensor, eps: torch.Tensor | None, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``cache.get(idx, eps)`` computed on ``device`` (the same arithmetic: z = μ + σ·ε in REPA mode, then the
    normalisation), so that device-drawn ε never travels to the host."""
    z = cache.latents[idx].to(device, non_blocking=True)
    if cache.mode == "repa":
        z = z + cache.std[idx].to(device, non_blocking=True) * eps.to(z)
    return cache.norm.normalize(z), cache.labels[idx]


class _Batches:
    """Global batch indices of step ``s``: consecutive slices of a per-epoch permutation (stream ``data`` of the RNG
    rule, index: epoch)."""

    def __init__(self, n: int, batch: int, seed: int):
        if batch > n:
            raise ValueError(f"global batch {batch} exceeds the {n} latents in the cache; lower batch_size")
        self.n, self.batch, self.seed = n, batch, seed
        self.per_epoch = n // batch
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = rng_rule.generator(self.seed, "data", epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm[k * self.batch: (k + 1) * self.batch]


def _checkpointer(run_dir: str | Path, rank: int = 0) -> Checkpointer:
    return Checkpointer(Path(run_dir) / "checkpoints", CHECKPOINT_FORMAT, rank=rank)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``run_dir/checkpoints/step_{step:07d}.pt``."""
    return _checkpointer(run_dir).path(step)


def latest_checkpoint(run_dir: str | Path, max_step: int | None = None) -> Path | None:
    """The checkpoint of the largest step (≤ ``max_step`` if given) in ``run_dir/checkpoints``, or None."""
    return _checkpointer(run_dir).latest(max_step)


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- training
def train_gen(cfg: TrainGenConfig, cache: LatentCache | str | Path, run_dir: str | Path, *,
              eval_fn: Callable[[int, DiT], dict] | None = None, device: str | torch.device | None = None
              ) -> TrainResult:
    """Train a DiT / SiT on a latent cache; resumes from the latest checkpoint in ``run_dir`` (≤ cfg.steps).

    Args:
        cfg: the settings (see ``TrainGenConfig``).
        cache: a ``LatentCache`` or the folder of one (``latents.load_latent_cache``).
        run_dir: folder for config.json, log.jsonl and checkpoints/.
        eval_fn: ``eval_fn(step, ema_model) -> dict`` of JSON-able metrics (e.g. gFID), called on rank 0 at every
            checkpoint step before the checkpoint is written; its result goes into the log as
            ``{"step": s, "eval": {...}}``. ``ema_model`` is in eval mode; do not modify it.
        device: default CUDA (``LOCAL_RANK``) when available, else CPU.

    Under torchrun (WORLD_SIZE > 1) or inside an initialised process group, trains with DDP; the global batch is
    split over the ranks. Returns a ``TrainResult`` (on every rank).

    Raises:
        ValueError: batch larger than the cache, batch not divisible by the world size, labels missing or out of
            range for a class-conditional model, or a checkpoint in ``run_dir`` from an incompatible model/cache.
    """
    with process_group(device) as pg:
        rank, world = pg.rank, pg.world
        if not isinstance(cache, LatentCache):
            cache = load_latent_cache(cache)
        device = resolve_device(device)
        if cfg.batch_size % world:
            raise ValueError(f"global batch_size {cfg.batch_size} is not divisible by the {world} processes")
        num_classes = cache.num_classes if cfg.num_classes is None else int(cfg.num_classes)
        if num_classes > 0:
            if not cache.labelled:
                raise ValueError("class-conditional training (num_classes > 0) needs a labelled cache; this one has "
                                 "label -1 entries: set num_classes=0 to train unconditionally")
            if cache.num_classes > num_classes:
                raise ValueError(f"cache labels go up to {cache.num_classes - 1} but num_classes={num_classes}")
        run_dir = Path(run_dir)
        checkpointer = _checkpointer(run_dir, rank)
        logger = JsonlLogger(run_dir / "log.jsonl", enabled=rank == 0)
        batches = _Batches(len(cache), cfg.batch_size, cfg.seed)
        objective = make_objective(cfg)

        torch.manual_seed(cfg.seed)
        model = build_model(cfg, cache.latent_shape, num_classes).to(device)
        ema = EMA(model, cfg.ema_decay)
        enable_tf32(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **adam_kwargs(device))
        start, loss_acc = 0, [0.0, 0]

        ckpt_file = checkpointer.latest(cfg.steps)
        if ckpt_file is not None:
            ck = checkpointer.load(ckpt_file)
            _check_resume(ck, cfg, cache, num_classes, ckpt_file)
            model.load_state_dict(ck["model"])
            ema.load_state_dict(ck["ema"])
            opt.load_state_dict(ck["opt"])
            start, loss_acc = int(ck["step"]), list(ck["loss_acc"])
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            # lines after the checkpoint, and a last line off the log grid, are written again by this run
            logger.truncate(lambda r: int(r.get("step", 0)) <= start and not r.get("partial"))
            atomic_write_json(run_dir / "config.json", {"config": asdict(cfg), "num_classes": num_classes,
                                                        "latent_shape": list(cache.latent_shape),
                                                        "latent_norm": cache.norm.to_dict(), "world_size": world,
                                                        "cache": str(cache.folder), "git": git_commit()})
        barrier(world)

        net = wrap_ddp(maybe_compile(model, cfg.compile), device, world)  # DDP averages the gradients
        model.train()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
        shape = cache.latent_shape
        sl = rng_rule.rank_slice(cfg.batch_size, rank, world)
        written, evals = [], []
        t_last, steps_since = time.time(), 0
        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.model} ({cfg.method})",
                   disable=not (cfg.progress and rank == 0), unit="step")
        # the loss of the log interval, summed on the device (float64: the same sums as Python floats)
        acc_sum = torch.tensor(float(loss_acc[0]), dtype=torch.float64, device=device)
        acc_n = int(loss_acc[1])

        def gen(stream: str, step: int) -> torch.Generator:
            return rng_rule.generator(cfg.seed, stream, step, device=device)

        for step in range(start, cfg.steps):
            idx = batches(step)
            t = objective.sample_t(cfg.batch_size, gen("timesteps", step))
            noise = torch.randn((cfg.batch_size, *shape), generator=gen("noise", step), device=device)
            drop = torch.rand(cfg.batch_size, generator=gen("labels", step), device=device) < cfg.class_dropout_prob
            post_eps = (torch.randn((cfg.batch_size, *shape), generator=gen("posterior", step), device=device)
                        if cache.mode == "repa" else None)
            z, y = _cache_batch(cache, idx[sl], None if post_eps is None else post_eps[sl], device)
            kwargs = ({"y": y.to(device, non_blocking=True), "force_drop_ids": drop[sl]} if num_classes > 0
                      else {"y": None})
            with autocast:
                loss = objective.loss(net, z, t[sl], noise[sl], kwargs).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(model)
            acc_sum += loss.detach().double()
            acc_n += 1
            steps_since += 1
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps:  # the loop's only host syncs
                loss_acc = [float(acc_sum), acc_n]
                mean_loss = mean_over_processes(torch.tensor([loss_acc[0] / max(loss_acc[1], 1)],
                                                             dtype=torch.float64, device=device), world)
                dt = time.time() - t_last
                partial = done % cfg.log_every != 0  # last step off the log grid: kept out of a resumed log
                rate = round(cfg.batch_size * steps_since / max(dt, 1e-9), 2)
                logger.log("train", done, loss=float(mean_loss), lr=cfg.lr, latents_per_s=rate, wall_s=round(dt, 3),
                           **({"partial": True} if partial else {}))
                if rank == 0:
                    bar.set_postfix(loss=f"{float(mean_loss):.4f}")
                if not partial:
                    loss_acc, t_last, steps_since = [0.0, 0], time.time(), 0
                    acc_sum.zero_()
                    acc_n = 0
            if done in cfg.ckpt_steps or done == cfg.steps:
                loss_acc = [float(acc_sum), acc_n]
                if rank == 0:
                    if eval_fn is not None:
                        t0 = time.time()
                        result = eval_fn(done, ema.module)
                        evals.append(logger.log("eval", done, eval=result, eval_s=round(time.time() - t0, 2)))
                        ema.module.eval()
                    written.append(checkpointer.save(done, {
                        "config": asdict(cfg), "num_classes": num_classes, "latent_shape": list(shape),
                        "latent_norm": cache.norm.to_dict(), "model": _cpu_state(model), "ema": _cpu_state(ema.module),
                        "opt": opt.state_dict(), "loss_acc": loss_acc}, world))
                    logger.sync()
                barrier(world)
                t_last = time.time()
        bar.close()
        logger.close()
        return TrainResult(model, ema.module, max(start, cfg.steps), run_dir, logger.path, written, evals,
                           cache.norm)


def _check_resume(ck: dict, cfg: TrainGenConfig, cache: LatentCache, num_classes: int, path: Path) -> None:
    old = ck["config"]
    bad = [f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in _MODEL_FIELDS if old.get(k) != getattr(cfg, k)]
    if ck["num_classes"] != num_classes:
        bad.append(f"num_classes: {ck['num_classes']} -> {num_classes}")
    if list(ck["latent_shape"]) != list(cache.latent_shape):
        bad.append(f"latent_shape: {ck['latent_shape']} -> {list(cache.latent_shape)}")
    if LatentNorm.from_dict(ck["latent_norm"]) != cache.norm:
        bad.append("latent normalisation / AE hash of the cache")
    if bad:
        raise ValueError(f"cannot resume from {path}: " + "; ".join(bad)
                         + ". Use a new run_dir (or delete its checkpoints) to start afresh.")
    soft = [k for k in _SOFT_FIELDS if old.get(k) != getattr(cfg, k)]
    if soft:
        warnings.warn(f"resuming {path} with changed {soft}: the run will not equal an uninterrupted one",
                      stacklevel=3)


def load_gen_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
                        ) -> GenCheckpoint:
    """Load a checkpoint written by ``train_gen`` (``torch.load(weights_only=True)``) into a fresh model.

    Returns a ``GenCheckpoint`` with the EMA weights (``use_ema=False``: the raw weights), in eval mode on ``device``.

    Raises:
        FileNotFoundError / ValueError: missing file or not a generative checkpoint of this kit.
    """
    ck = load_checkpoint(path, CHECKPOINT_FORMAT)
    cfg = TrainGenConfig.from_dict(ck["config"])
    model = build_model(cfg, tuple(ck["latent_shape"]), ck["num_classes"])
    model.load_state_dict(ck["ema" if use_ema else "model"])
    return GenCheckpoint(model.to(device).eval(), LatentNorm.from_dict(ck["latent_norm"]), cfg, int(ck["step"]),
                         int(ck["num_classes"]))


# ---------------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_latents(model: DiT, n: int, *, method: str = "dit", sampler: str | None = None, steps: int | None = None,
                   cfg_scale: float = 1.0, labels: torch.Tensor | str | None = "random", batch_size: int = 64,
                   generator: torch.Generator | None = None, t_scale: float = 1.0, progress: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample ``n`` normalised latents z_n with ``model`` (use the EMA model), in batches.

    Args:
        method: ``"dit"`` (samplers ``"ddpm"`` [default, 250 steps] / ``"ddim"`` [default 50 steps]) or ``"sit"``
            (``"heun"`` [default, 50 steps] / ``"euler"``). Must match how the model was trained.
        labels: ``"random"`` = uniform classes from ``generator`` (None for an unconditional model), a tensor
            ``[n]``, or None = null class (unconditional sampling).
        cfg_scale: classifier-free guidance (1.0 = none).
        generator: CPU torch.Generator: a fixed seed (and batch size) gives identical samples.

    Returns: (z_n ``[n, C, H, W]`` on CPU, labels ``[n]`` or None).

    Raises:
        ValueError: sampler not valid for the method, or labels of the wrong length.
    """
    samplers = {"dit": ("ddpm", "ddim"), "sit": ("heun", "euler")}
    if method not in samplers:
        raise ValueError(f"method must be 'dit' or 'sit', got {method!r}")
    sampler = sampler or samplers[method][0]
    if sampler not in samplers[method]:
        raise ValueError(f"sampler {sampler!r} is not one of {samplers[method]} for a {method} model (a DiT is "
                         "sampled with ddpm/ddim, a SiT with heun/euler)")
    steps = steps or {"ddpm": 250, "ddim": 50, "heun": 50, "euler": 100}[sampler]
    if isinstance(labels, str):
        if labels != "random":
            raise ValueError(f"labels must be 'random', a tensor or None, got {labels!r}")
        labels = (torch.randint(0, model.num_classes, (n,), generator=generator) if model.num_classes > 0 else None)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for n={n} samples")
    out = []
    for i in tqdm(range(0, n, batch_size), desc=f"sample ({sampler} {steps})", disable=not progress):
        m = min(batch_size, n - i)
        y = None if labels is None else labels[i: i + m]
        if method == "dit":
            z = sample_dit(model, m, y=y, cfg_scale=cfg_scale, sampler=sampler, steps=steps, generator=generator)
        else:
            z = sample_sit(model, m, y=y, cfg_scale=cfg_scale, method=sampler, steps=steps, generator=generator,
                           t_scale=t_scale)
        out.append(z.float().cpu())
    return torch.cat(out), labels


@torch.no_grad()
def sample_images(model: DiT, vae, norm: LatentNorm, n: int, *, method: str = "dit", sampler: str | None = None,
                  steps: int | None = None, cfg_scale: float = 1.0, labels: torch.Tensor | str | None = "random",
                  batch_size: int = 64, generator: torch.Generator | None = None, t_scale: float = 1.0,
                  progress: bool = True, return_labels: bool = False):
    """Sample ``n`` images end to end: latents with ``model`` (``sample_latents``), inverse normalisation, decoding.

    Args:
        model: the (EMA) generative model; vae: the AE (diffusers ``AutoencoderKL`` API: ``decode(z).sample``).
        norm: the ``LatentNorm`` the model was trained with (``GenCheckpoint.norm`` / ``LatentCache.norm``); the
            AE's weights hash must equal ``norm.ae_hash`` — checked BEFORE sampling.
        Other arguments: see ``sample_latents``.

    Returns: images float32 ``[n, C, H, W]`` in [-1, 1] on CPU (and the labels if ``return_labels``).

    Raises:
        LatentCacheMismatchError: ``vae`` is not the AE whose latents the model was trained on.
    """
    norm.check_ae(vae)
    z_n, y = sample_latents(model, n, method=method, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                            labels=labels, batch_size=batch_size, generator=generator, t_scale=t_scale,
                            progress=progress)
    images = decode_latents(vae, z_n, norm, batch_size=batch_size, check_ae=False, progress=progress)
    return (images, y) if return_labels else images


def sample_from_checkpoint(ck: GenCheckpoint, vae, n: int, **kwargs):
    """``sample_images`` with the method, t_scale and normalisation recorded in a ``GenCheckpoint``."""
    kwargs.setdefault("t_scale", ck.config.t_scale)
    return sample_images(ck.model, vae, ck.norm, n, method=ck.config.method, **kwargs)


# ---------------------------------------------------------------------------------------- processes without torchrun
def _spawn_worker(cfg_dict: dict, cache: Any, run_dir: str) -> None:
    train_gen(TrainGenConfig(**cfg_dict), cache, run_dir, device="cpu")


def launch_spawn(world_size: int, cfg: TrainGenConfig, cache: LatentCache | str | Path, run_dir: str | Path,
                 threads_per_process: int = 1) -> None:
    """Run ``train_gen`` as ``world_size`` CPU processes (gloo DDP; :func:`eqvae_lib.training.spawn_processes`); for
    tests and machines without torchrun. ``eval_fn`` is not supported here (use torchrun + your own script). Results
    are in ``run_dir`` (checkpoints, log)."""
    cache_arg = str(cache.folder) if isinstance(cache, LatentCache) and cache.folder is not None else cache
    spawn_processes(_spawn_worker, world_size, asdict(cfg), cache_arg, str(run_dir),
                    threads_per_process=threads_per_process)


def main(argv: list[str] | None = None) -> int:
    """Command line (works under torchrun):

    ``torchrun --nproc_per_node=8 -m eqvae_lib.train_gen --cache data/cache/latents/KEY --run-dir runs/dit-b2
    --config cfg.json --set steps=400000 ckpt_steps=[50000,100000]``
    """
    p = argparse.ArgumentParser(prog="python -m eqvae_lib.train_gen", description="train DiT / SiT on a latent cache")
    p.add_argument("--cache", required=True, help="latent cache folder (latents.build_latent_cache)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--config", help="JSON file of TrainGenConfig fields")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides; VALUE parsed as JSON")
    args = p.parse_args(argv)
    d = json.loads(Path(args.config).read_text()) if args.config else {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        try:
            d[k] = json.loads(v)
        except json.JSONDecodeError:
            d[k] = v
    res = train_gen(TrainGenConfig.from_dict(d), args.cache, args.run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"step": res.step, "log": str(res.log_path), "checkpoints": [str(c) for c in
                                                                                        res.checkpoints]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
