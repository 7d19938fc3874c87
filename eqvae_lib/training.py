"""The training plumbing shared by the kit's three loops: the autoencoder loop (:mod:`eqvae_lib.train_ae`), the
DiT/SiT loop (:mod:`eqvae_lib.train_gen`) and the MaskGIT loop (:mod:`eqvae_lib.train_maskgit`).

Everything here is method-free (no loss, no model): a loop keeps its own objective and step, and takes the rest
from this module.

* **Processes** — :func:`process_group` / :func:`init_distributed`: ``torch.distributed`` from torchrun's
  environment (``WORLD_SIZE`` > 1; NCCL with one GPU per process (``LOCAL_RANK``) when training on CUDA, gloo when
  training on the CPU); :func:`resolve_device` picks the training device; :func:`spawn_processes` starts local
  processes with torchrun's environment (tests, machines without torchrun).
* **Gradient synchronisation** — :func:`wrap_ddp` (``DistributedDataParallel``, the generator loops) and
  :func:`all_reduce_gradients` (the explicit mean over processes of the autoencoder loop, whose forward is not one
  ``module(x)`` call that DDP's hooks could see), :func:`broadcast_state`, :func:`mean_over_processes`.
* **EMA** — :class:`EMA` / :func:`update_ema`: ``ema ← decay·ema + (1 − decay)·θ`` after each optimizer step,
  computed as ``torch.optim.swa_utils.get_ema_multi_avg_fn`` does (one ``lerp`` per tensor); buffers are copied.
* **Checkpoints** — :class:`Checkpointer`: atomic ``torch.save`` (write beside, fsync, rename: an interrupted save
  leaves the previous checkpoint intact), one envelope for every loop (``format``, ``step``, ``world_size``,
  ``rng_rule``, ``git``), loaded with ``torch.load(weights_only=True)``; a checkpoint of another format is refused
  with a message saying what to delete.
* **Logs** — :class:`JsonlLogger`: one JSON object per line, every line ``{"kind": ..., "step": int, ...}``
  (kinds: ``train`` per-step/interval means, ``eval`` evaluation results, ``val`` validation, ``event`` start /
  resume / epoch end / end); only rank 0 writes; on resume the log is cut back (atomically) to the checkpoint.
* **Learning rate** — :func:`lr_scheduler`: a ``torch.optim.lr_scheduler.LambdaLR`` with the factor
  :func:`lr_factor` (constant, or linear warm-up then constant / cosine to 0).
* **Randomness** — the RNG rule of :mod:`eqvae_lib.rng` (documented there): every draw of a step comes from a
  fresh generator of ``(seed, stream, step[, …])``, draws are made for the global batch and each rank takes its
  slice (``rng.rank_slice``), and the data order of an epoch is ``rng.epoch_permutation(n, seed, epoch)``. Nothing
  random is carried from step to step, so checkpoints hold no generator state and a resumed run equals the
  uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import get_ema_multi_avg_fn

from . import rng as rng_rule
from .io import atomic_torch_save, atomic_write_text, git_commit


# ---------------------------------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` in ``0..world-1``, ``world`` processes, ``local_rank`` (GPU index on its
    machine, torchrun's ``LOCAL_RANK``), and whether :func:`process_group` ``created`` the process group (and will
    destroy it)."""

    rank: int
    world: int
    local_rank: int
    created: bool

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes files)."""
        return self.rank == 0


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _wants_cuda(device: str | torch.device | None) -> bool:
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def init_distributed(device: str | torch.device | None = None) -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment when ``WORLD_SIZE`` > 1 and no group exists:
    NCCL with one GPU per process (``torch.cuda.set_device(LOCAL_RANK)``) when training on CUDA, gloo when training on
    the CPU (``device="cpu"``, or no GPU visible), also on a machine with fewer GPUs than processes.

    Args:
        device: the device the loop will train on (None = CUDA when available).

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` without torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = _wants_cuda(device)
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist_info()


@contextlib.contextmanager
def process_group(device: str | torch.device | None = None) -> Iterator[DistInfo]:
    """:func:`init_distributed` for the duration of a ``with`` block: yields a :class:`DistInfo`, and destroys the
    process group on exit if this call created it (a group the caller set up is reused and left alone)."""
    existed = dist.is_available() and dist.is_initialized()
    rank, world = init_distributed(device)
    created = not existed and world > 1
    try:
        yield DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0, created)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The training device: ``device`` if given, else CUDA when available, else the CPU. A CUDA device without an
    index becomes ``cuda:LOCAL_RANK`` in a process group (torchrun's variable, also when the caller initialised the
    group itself), else the current device."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:
        in_group = dist.is_available() and dist.is_initialized() and "LOCAL_RANK" in os.environ
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]) if in_group else torch.cuda.current_device())
    return dev


def _spawned(rank: int, world: int, port: int, threads: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(threads)
    fn(*args)


def spawn_processes(fn: Callable[..., Any], world: int, *args: Any, threads_per_process: int = 1) -> None:
    """Run ``fn(*args)`` in ``world`` new local processes with torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` on a free local port) through ``torch.multiprocessing.spawn``,
    so that a training loop inside ``fn`` finds its process group as under torchrun (gloo on the CPU); for tests and
    machines without torchrun. ``fn`` must be a module-level function; returns when all processes have finished.

    Raises:
        torch.multiprocessing.ProcessRaisedException: a process failed (its traceback is in the message).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_spawned, args=(world, port, threads_per_process, fn, args), nprocs=world, join=True)


def barrier(world: int) -> None:
    """``dist.barrier()`` when ``world`` > 1 (a no-op for one process)."""
    if world > 1:
        dist.barrier()


# ------------------------------------------------------------------------------------------ gradient synchronisation
def wrap_ddp(module: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` when ``world`` > 1 (``device_ids=[device.index]`` on CUDA), else
    ``module`` itself. Call the returned module in the forward pass; step the optimizer of ``module``'s parameters.
    DDP averages the gradients over processes during ``backward`` (bucketed all-reduce) and broadcasts rank 0's
    parameters and buffers at construction."""
    if world <= 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], world: int) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ``world`` processes (one flat ``all_reduce`` of all
    gradients, then ``/ world``): the arithmetic of ``DistributedDataParallel`` for loops whose forward pass DDP's
    hooks cannot see. Parameters without a gradient are skipped (every rank must have the same ones). No-op for one
    process."""
    if world <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    o = 0
    for g in grads:
        g.copy_(flat[o: o + g.numel()].view_as(g))
        o += g.numel()


def broadcast_state(tensors: Iterable[torch.Tensor], world: int, src: int = 0) -> None:
    """Overwrite ``tensors`` (e.g. ``module.state_dict().values()`` or ``module.buffers()``) in place with process
    ``src``'s values. No-op for one process."""
    if world <= 1:
        return
    for t in tensors:
        dist.broadcast(t, src)


def mean_over_processes(value: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of ``value`` (a tensor on the process group's device) over the ``world`` processes, in place; the
    value itself for one process."""
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return value


# ---------------------------------------------------------------------------------------------------------- EMA
@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · model`` for every parameter (DiT's ``update_ema``), computed as
    ``torch.optim.swa_utils.get_ema_multi_avg_fn(decay)`` does (``lerp(ema, θ, 1 − decay)``: exactly ``ema`` at
    decay 1 and exactly ``θ`` at decay 0).

    Raises:
        ValueError: ``decay`` outside [0, 1].
    """
    ema_params, params = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError(f"update_ema: the EMA has {len(ema_params)} parameters, the model {len(params)}")
    if params:
        get_ema_multi_avg_fn(decay)(ema_params, params, None)


class EMA:
    """An exponential moving average of a model's weights (Polyak averaging; DiT: decay 0.9999).

    ``EMA(model, decay)`` starts from a copy of ``model`` (no gradients, eval mode); ``update(model)`` after each
    optimizer step applies :func:`update_ema` to the parameters and copies the buffers (running statistics are not
    averaged). ``state_dict``/``load_state_dict`` are those of :attr:`module` (a plain copy of the model, so its
    state dict loads into a fresh model). Closed form: after ``t`` updates with parameters ``θ_1..θ_t``,
    ``ema_t = decay^t θ_0 + Σ_k (1 − decay) decay^(t−k) θ_k``.

    Raises:
        ValueError: ``decay`` outside [0, 1].
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        update_ema(self.module, model, self.decay)
        for be, bm in zip(self.module.buffers(), model.buffers()):
            be.copy_(bm)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


# --------------------------------------------------------------------------------------------------- checkpoints
class CheckpointFormatError(ValueError):
    """A checkpoint file that is not of the format a loop expects (another loop's, or an older kit version's)."""


class Checkpointer:
    """Atomic checkpoints of one run, in one envelope for every loop.

    Args:
        folder: where the checkpoints go (created on the first save).
        format: the loop's format id (e.g. ``"eqvae-gen-v1"``); :meth:`load` refuses files of another format.
        name: file name; with ``{step}`` (default ``"step_{step:07d}.pt"``) one file per saved step, without it one
            file that each save replaces (the latest state only).
        rank: only rank 0 writes (:meth:`save` is a no-op elsewhere).

    Every saved object is the loop's ``state`` plus ``format``, ``step``, ``world_size``, ``rng_rule``
    (:data:`eqvae_lib.rng.RNG_RULE`) and ``git`` (the commit when the run first saved). The write is atomic (:func:`eqvae_lib.io.
    atomic_torch_save`): a run killed during a save leaves the previous checkpoint as it was. ``state`` may hold only
    what ``torch.load(weights_only=True)`` reads back (tensors, numbers, strings, lists, tuples, dicts).
    """

    def __init__(self, folder: str | os.PathLike, format: str, name: str = "step_{step:07d}.pt", rank: int = 0):
        self.folder, self.format, self.name, self.rank = Path(folder), str(format), name, int(rank)
        self._git: str | None = None  # read once per run (a git subprocess), not at every save

    @property
    def per_step(self) -> bool:
        """True when each step has its own file."""
        return "{step" in self.name

    def path(self, step: int = 0) -> Path:
        """The file of ``step`` (the one file when :attr:`per_step` is False)."""
        return self.folder / (self.name.format(step=int(step)) if self.per_step else self.name)

    def save(self, step: int, state: dict[str, Any], world: int = 1) -> Path | None:
        """Write ``state`` (plus the envelope) atomically; returns the path on rank 0, None elsewhere."""
        if self.rank != 0:
            return None
        path = self.path(step)
        if self._git is None:
            self._git = git_commit()
        obj = {**state, "format": self.format, "step": int(step), "world_size": int(world),
               "rng_rule": rng_rule.RNG_RULE, "git": self._git}
        atomic_torch_save(obj, path)
        return path

    def steps(self) -> list[int]:
        """The steps with a checkpoint file in :attr:`folder`, ascending (per-step layout only)."""
        if not self.per_step or not self.folder.is_dir():
            return []
        head, _, tail = self.name.partition("{")
        tail = tail.partition("}")[2]
        out = []
        for p in self.folder.iterdir():
            n = p.name
            if n.startswith(head) and n.endswith(tail) and not n.startswith("."):
                try:
                    out.append(int(n[len(head): len(n) - len(tail)]))
                except ValueError:
                    continue
        return sorted(out)

    def latest(self, max_step: int | None = None) -> Path | None:
        """The checkpoint of the largest step (≤ ``max_step`` if given), or None. For the single-file layout: the
        file when it exists (``max_step`` is then not checked: the step is inside the file)."""
        if not self.per_step:
            p = self.path()
            return p if p.is_file() else None
        steps = [s for s in self.steps() if max_step is None or s <= max_step]
        return self.path(steps[-1]) if steps else None

    def load(self, path: str | os.PathLike | None = None, world: int | None = None,
             map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The checkpoint at ``path`` (default: :meth:`latest`), or None when there is none.

        Args:
            world: when given, the checkpoint must have been written by that many processes.

        Raises:
            CheckpointFormatError: the file is not of this loop's format (names the file, says what to delete).
            ValueError: written by another number of processes.
        """
        path = Path(path) if path is not None else self.latest()
        if path is None:
            return None
        return load_checkpoint(path, self.format, world=world, map_location=map_location)


def load_checkpoint(path: str | os.PathLike, format: str, world: int | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by a :class:`Checkpointer` of ``format`` (``torch.load(weights_only=True)``: no
    code is unpickled).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointFormatError: the file carries another format (or none: written by an older kit version).
        ValueError: ``world`` given and the file was written by another number of processes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ck = torch.load(path, map_location=map_location, weights_only=True)
    got = ck.get("format") if isinstance(ck, dict) else None
    if got != format:
        raise CheckpointFormatError(
            f"{path} is not a {format} checkpoint (its format: {got or 'none, an older kit version'}); delete it "
            "(or its run folder) to start afresh, or point the loop at a new folder")
    if world is not None and int(ck.get("world_size", 1)) != int(world):
        raise ValueError(f"{path} was written by {ck.get('world_size')} process(es), this run has {world}; resume "
                         "with the same number of processes or start a new run folder")
    return ck


# ----------------------------------------------------------------------------------------------------------- logs
class JsonlLogger:
    """The run's ``log.jsonl``: one JSON object per line, each ``{"kind": KIND, "step": STEP, **fields}``.

    Kinds used by the kit's loops: ``"train"`` (a step's or a log interval's losses, lr, throughput),
    ``"eval"`` (an evaluation callback's results), ``"val"`` (the autoencoder's validation / plateau decision),
    ``"event"`` (start, resume, epoch end, end; the line also names the ``"event"``).

    Args:
        path: the file (None = log nothing); lines are appended and flushed one by one.
        enabled: False on ranks other than 0 (only rank 0 writes).
    """

    def __init__(self, path: str | os.PathLike | None, enabled: bool = True):
        self.path = Path(path) if path is not None else None
        self.enabled = bool(enabled) and self.path is not None
        self._f = None

    def log(self, kind: str, step: int, **fields: Any) -> dict[str, Any]:
        """Append ``{"kind": kind, "step": step, **fields}`` (flushed); returns the record (also when disabled)."""
        rec = {"kind": kind, "step": int(step), **fields}
        if self.enabled:
            if self._f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self.path, "a")
            self._f.write(json.dumps(rec) + "\n")
            self._f.flush()
        return rec

    def read(self) -> list[dict[str, Any]]:
        """Every record of the file (empty when it does not exist)."""
        if self.path is None or not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite the file (atomically) with only the records for which ``keep(record)`` is true: on resume, the
        lines written after the checkpoint go, so the resumed log equals the uninterrupted one."""
        if not self.enabled:
            return
        self.close()
        kept = [r for r in self.read() if keep(r)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def sync(self) -> None:
        """Flush and fsync the file (e.g. beside a checkpoint)."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        """Close the file (a later :meth:`log` reopens it)."""
        if self._f is not None:
            self._f.close()
            self._f = None


# -------------------------------------------------------------------------------------------------- learning rate
LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, kind: str = "constant", warmup_steps: int = 0, total_steps: int | None = None) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based: the step about to be taken).

    ``warmup_steps`` > 0: ``(step + 1) / warmup_steps`` while ``step < warmup_steps`` (linear warm-up, the first step
    already at ``1 / warmup_steps``). After it: ``"constant"``: 1; ``"cosine"``: ``0.5 · (1 + cos(π · min(1, (step −
    warmup_steps) / max(1, total_steps − warmup_steps))))``, from 1 down to 0 at ``total_steps``.

    Raises:
        ValueError: unknown ``kind``, or ``"cosine"`` without ``total_steps``.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "cosine":
        if total_steps is None:
            raise ValueError("a cosine lr schedule needs total_steps")
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))
    return 1.0


def lr_scheduler(optimizer: torch.optim.Optimizer, kind: str = "constant", warmup_steps: int = 0,
                 total_steps: int | None = None) -> LambdaLR:
    """A ``torch.optim.lr_scheduler.LambdaLR`` giving each parameter group ``initial lr × lr_factor(step, ...)``
    (:func:`lr_factor`). Call ``scheduler.step()`` after each ``optimizer.step()``; save ``scheduler.state_dict()``
    with the optimizer's and load both to resume.

    Raises:
        ValueError: as :func:`lr_factor` (checked at once).
    """
    lr_factor(0, kind, warmup_steps, total_steps)
    if kind == "cosine" and total_steps is None:
        raise ValueError("a cosine lr schedule needs total_steps")
    return LambdaLR(optimizer, lambda step: lr_factor(step, kind, warmup_steps, total_steps))
