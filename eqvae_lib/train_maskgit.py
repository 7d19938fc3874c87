"""Training loop of the MaskGIT transformer (:mod:`eqvae_lib.maskgit`: model, masked-token loss, sampler) on a token
cache: masked-token prediction, AdamW with linear warm-up (then constant or cosine; ``torch.optim.lr_scheduler``),
gradient clipping, optional EMA, JSONL log, atomic checkpoints, evaluation callback.

Plumbing from :mod:`eqvae_lib.training`: process group (torchrun / ``launch_spawn``; NCCL on CUDA, gloo on CPU),
``DistributedDataParallel``, :class:`~eqvae_lib.training.EMA`, :class:`~eqvae_lib.training.Checkpointer`
(``out_dir/step_{S:07d}.pt``, format ``eqvae-maskgit-v1``), :class:`~eqvae_lib.training.JsonlLogger`,
:func:`~eqvae_lib.training.lr_scheduler`.

Randomness (the RNG rule of :mod:`eqvae_lib.rng`): the data order is a permutation per epoch (stream ``data``,
index: epoch; steps take consecutive slices of the concatenated permutations), the masks (stream ``mask``) and the
label dropout (stream ``labels``) are drawn per (seed, step) on the training device for the GLOBAL batch, and each
process takes its rows. With several processes the summed cross-entropy of each is divided by the global batch's
number of masked positions, so that their losses add up to the global batch's mean: N processes compute the update
of one process with the same global batch (up to float summation order). The transformer's dropout draws from torch's
global generator, per process: resume equality and the N-process equality hold for ``dropout = 0``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import rng as rng_rule
from .maskgit import CHECKPOINT_FORMAT, MaskGIT, MaskGITConfig, maskgit_loss, maskgit_state, random_mask
from .perf import adam_kwargs, enable_tf32, maybe_compile
from .training import (EMA, Checkpointer, JsonlLogger, barrier, load_checkpoint, lr_scheduler, mean_over_processes,
                       process_group, spawn_processes, wrap_ddp)


@dataclass
class MaskGITTrainConfig:
    """Training hyper-parameters (AdamW; MaskGIT used lr 1e-4, betas (0.9, 0.96), wd 0.045, batch 256).

    Attributes:
        steps: optimiser steps. batch_size: grids per step (global: split over the processes). lr, betas,
            weight_decay: AdamW.
        warmup_steps: linear warm-up; lr_schedule: ``"constant"`` or ``"cosine"`` (to 0 at ``steps``) after it
            (:func:`eqvae_lib.training.lr_factor`).
        grad_clip: max gradient norm (None = off). ema_decay: EMA of the weights (None = off).
        checkpoint_steps: steps after which a checkpoint ``step_{S:07d}.pt`` is written into ``out_dir``.
        eval_steps: steps after which ``eval_fn`` runs (default: ``checkpoint_steps``).
        log_every: steps between JSONL log lines (the loop's only host syncs). seed: data order, masks and label
            dropout (RNG rule of eqvae_lib.rng: streams ``data`` (seed, epoch), ``mask`` and ``labels`` (seed, step),
            drawn on the model's device for the whole batch).
        compile: ``torch.compile`` the transformer (opt-in).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.96)
    weight_decay: float = 0.045
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    checkpoint_steps: tuple[int, ...] = ()
    eval_steps: tuple[int, ...] | None = None
    log_every: int = 50
    seed: int = 0
    compile: bool = False


def _batch_indices(step: int, batch: int, n: int, seed: int, perms: dict[int, torch.Tensor]) -> torch.Tensor:
    """The global batch of ``step``: positions ``step·batch …`` of the concatenated per-epoch permutations
    (``rng.epoch_permutation``); ``perms`` caches the epochs' permutations."""
    pos, idx = step * batch, []
    while len(idx) < batch:
        e, off = divmod(pos + len(idx), n)
        if e not in perms:
            perms.clear()
            perms[e] = rng_rule.epoch_permutation(n, seed, e)
        take = min(batch - len(idx), n - off)
        idx.extend(perms[e][off: off + take].tolist())
    return torch.tensor(idx)


def train_maskgit(model: MaskGIT, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                  cfg: MaskGITTrainConfig | None = None, out_dir: str | os.PathLike | None = None,
                  eval_fn: Callable[[int, MaskGIT], dict] | None = None, log_path: str | os.PathLike | None = None,
                  resume: str | os.PathLike | None = None, progress: bool = False) -> dict[str, Any]:
    """Train a MaskGIT on a token cache (masked-token prediction; AdamW, optional EMA, JSONL log, checkpoints).

    Args:
        model: the MaskGIT (on the device to train on; bf16 autocast is used on CUDA).
        tokens: int64 ``[N, h, w]`` in ``0..K-1`` (moved to the model's device batch by batch).
        labels: int64 ``[N]`` in ``0..num_classes-1``, or None for unlabelled data (null class throughout).
        cfg: ``MaskGITTrainConfig``. Data order: a fresh random permutation each epoch (epoch = N grids).
        out_dir: folder for checkpoints ``step_{S:07d}.pt`` (needed when ``cfg.checkpoint_steps`` is not empty).
        eval_fn: ``eval_fn(step, model) -> dict`` called (on rank 0) at ``cfg.eval_steps`` with the EMA model when
            EMA is on (else the trained model), in eval mode; its dict goes into the log line
            ``{"kind": "eval", ...}``.
        log_path: JSONL file; one line ``{"kind": "train", "step", "epoch", "loss", "acc", "lr", "grids_per_s"}``
            every ``cfg.log_every`` steps (appended, flushed). Default ``out_dir/log.jsonl`` when out_dir is given.
            On resume, the lines after the checkpoint's step are cut.
        resume: a checkpoint written by this function; training continues from its step (weights, EMA, optimizer,
            lr schedule; masks and label dropout are functions of (seed, step)): without dropout, resuming
            reproduces the uninterrupted run exactly.
        progress: show a tqdm bar.

    Under torchrun (``WORLD_SIZE`` > 1) or inside an initialised process group, trains with
    ``DistributedDataParallel``; ``cfg.batch_size`` is the global batch, split over the processes; only rank 0 logs,
    evaluates and writes checkpoints.

    Returns:
        ``{"model", "ema" (or None), "step", "evals": {step: dict}, "checkpoints": [paths], "last": last log dict}``.

    Raises:
        ValueError: for mismatched tokens/labels, a token grid of the wrong size, checkpoints without out_dir, a
            batch not divisible by the number of processes, or an unknown lr schedule.
        CheckpointFormatError: ``resume`` is not a MaskGIT checkpoint of this kit.
    """
    cfg = cfg or MaskGITTrainConfig()
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != model.config.grid:
        raise ValueError(f"train_maskgit: tokens must be [N, h, w] with the model's grid (h, w) = "
                         f"{model.config.grid}, got {tuple(tokens.shape)}")
    if labels is not None and len(labels) != len(tokens):
        raise ValueError(f"train_maskgit: {len(labels)} labels for {len(tokens)} token grids")
    if labels is not None and model.config.num_classes == 0:
        raise ValueError("train_maskgit: labels given but the model is unconditional (num_classes=0)")
    if cfg.checkpoint_steps and out_dir is None:
        raise ValueError("train_maskgit: checkpoint_steps given but no out_dir")
    k = model.config.codebook_size
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= k):  # once, not per step
        raise ValueError(f"train_maskgit: token ids must lie in 0..{k - 1}, got [{int(tokens.min())}, "
                         f"{int(tokens.max())}]; were the tokens made by a tokenizer with another codebook size?")
    if labels is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) > model.null_class):
        raise ValueError(f"train_maskgit: labels must lie in 0..{model.null_class} (null class included), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    device = next(model.parameters()).device
    with process_group(device) as pg:
        return _train(model, tokens, labels, cfg, out_dir, eval_fn, log_path, resume, progress, device, pg.rank,
                      pg.world)


def _train(model, tokens, labels, cfg, out_dir, eval_fn, log_path, resume, progress, device, rank, world):
    if cfg.batch_size % world:
        raise ValueError(f"train_maskgit: batch_size {cfg.batch_size} is not divisible by the {world} processes")
    enable_tf32(device)
    out_dir = Path(out_dir) if out_dir is not None else None
    if log_path is None and out_dir is not None:
        log_path = out_dir / "log.jsonl"
    logger = JsonlLogger(log_path, enabled=rank == 0)
    checkpointer = Checkpointer(out_dir if out_dir is not None else ".", CHECKPOINT_FORMAT, rank=rank)
    ckpt_steps = set(int(s) for s in cfg.checkpoint_steps)
    eval_steps = set(int(s) for s in (cfg.eval_steps if cfg.eval_steps is not None else cfg.checkpoint_steps))

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "emb" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas),
                            **adam_kwargs(device))
    sched = lr_scheduler(opt, cfg.lr_schedule, cfg.warmup_steps, cfg.steps)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    step = 0
    if resume is not None:
        ck = load_checkpoint(resume, CHECKPOINT_FORMAT, map_location=device)
        model.load_state_dict(ck["model"])
        if ck.get("optimizer") is not None:
            opt.load_state_dict(ck["optimizer"])
        if ck.get("scheduler") is not None:
            sched.load_state_dict(ck["scheduler"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        step = int(ck["step"])
        logger.truncate(lambda r: int(r.get("step", 0)) <= step)

    n_data = len(tokens)
    perms: dict[int, torch.Tensor] = {}
    use_amp = device.type == "cuda"
    sl = rng_rule.rank_slice(cfg.batch_size, rank, world)
    grid = model.config.grid
    p_drop = model.config.label_dropout
    evals: dict[int, dict] = {}
    ckpts: list[str] = []
    last: dict = {}
    acc_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device, read at log steps
    acc_acc = torch.zeros((), dtype=torch.float64, device=device)
    acc_n, t0 = 0, time.perf_counter()

    def run_eval(s: int) -> None:
        target = ema.module if ema is not None else model
        was = target.training
        target.eval()
        res = dict(eval_fn(s, target) or {})
        target.train(was)
        evals[s] = res
        logger.log("eval", s, **{"epoch": s * cfg.batch_size / n_data, **res})

    bar = None
    if progress and rank == 0:
        bar = tqdm(total=cfg.steps, initial=step, desc="maskgit")
    model.train()
    was_checking, model.check_inputs = model.check_inputs, False  # tokens and labels validated once above
    net = wrap_ddp(maybe_compile(model, cfg.compile), device, world)  # DDP averages the gradients
    try:
        while step < cfg.steps:
            idx = _batch_indices(step, cfg.batch_size, n_data, cfg.seed, perms)[sl]
            x = tokens[idx].to(device, non_blocking=True).long()
            y = labels[idx].to(device, non_blocking=True).long() if labels is not None else None
            # the step's draws, for the global batch (RNG rule): masks, then label dropout; each rank its rows
            mask = random_mask(torch.empty((cfg.batch_size, *grid), device=device), model.config.schedule,
                               rng_rule.generator(cfg.seed, "mask", step, device=device))
            if y is not None and p_drop > 0:
                drop = torch.rand(cfg.batch_size, device=device,
                                  generator=rng_rule.generator(cfg.seed, "labels", step, device=device)) < p_drop
                y = y.masked_fill(drop[sl], model.null_class)
            lr = opt.param_groups[0]["lr"]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if world == 1:
                    loss, st = maskgit_loss(model, x, y, mask=mask, label_dropout=0.0, check=False, net=net)
                else:  # this rank's share of the global batch's mean: the ranks' losses add up to it
                    loss, st = maskgit_loss(model, x, y, mask=mask[sl], label_dropout=0.0, check=False, net=net,
                                            num_masked=mask.sum())
                    loss = loss * world  # DDP averages the gradients over the processes
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            step += 1
            acc_loss += st["loss"].double()
            acc_acc += st["acc"].double()
            acc_n += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:  # the loop's only host syncs
                if world > 1:  # the ranks' shares add up to the global batch's values
                    acc_loss = mean_over_processes(acc_loss, world) * world
                    acc_acc = mean_over_processes(acc_acc, world) * world
                dt = time.perf_counter() - t0
                last = logger.log("train", step, epoch=step * cfg.batch_size / n_data,
                                  loss=float(acc_loss) / acc_n, acc=float(acc_acc) / acc_n, lr=lr,
                                  grids_per_s=acc_n * cfg.batch_size / max(dt, 1e-9))
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.3f}")
                acc_loss.zero_()
                acc_acc.zero_()
                acc_n, t0 = 0, time.perf_counter()
            if step in ckpt_steps:
                path = checkpointer.save(step, maskgit_state(model, ema.module if ema is not None else None, opt,
                                                             sched), world)
                if path is not None:
                    ckpts.append(str(path))
                    logger.sync()
            if eval_fn is not None and step in eval_steps and rank == 0:
                run_eval(step)
            if step in ckpt_steps or step in eval_steps:
                barrier(world)
    finally:
        model.check_inputs = was_checking
        logger.close()
    if bar is not None:
        bar.close()
    return {"model": model, "ema": ema.module if ema is not None else None, "step": step, "evals": evals,
            "checkpoints": ckpts, "last": last}


# ---------------------------------------------------------------------------------------- processes without torchrun
def _spawn_worker(config: dict, state: dict, tokens: torch.Tensor, labels: torch.Tensor | None, cfg: dict,
                  out_dir: str) -> None:
    model = MaskGIT(MaskGITConfig(**config))
    model.load_state_dict(state)
    train_maskgit(model, tokens, labels, MaskGITTrainConfig(**cfg), out_dir=out_dir)


def launch_spawn(world_size: int, model: MaskGIT, tokens: torch.Tensor, labels: torch.Tensor | None,
                 cfg: MaskGITTrainConfig, out_dir: str | os.PathLike, threads_per_process: int = 1) -> None:
    """Run :func:`train_maskgit` as ``world_size`` CPU processes (gloo DDP; :func:`eqvae_lib.training.
    spawn_processes`), every process starting from ``model``'s weights; for tests and machines without torchrun.
    ``eval_fn`` is not supported here. Results (checkpoints at ``cfg.checkpoint_steps``, the log) are in
    ``out_dir``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    spawn_processes(_spawn_worker, world_size, asdict(model.config), state, tokens, labels, asdict(cfg), str(out_dir),
                    threads_per_process=threads_per_process)
