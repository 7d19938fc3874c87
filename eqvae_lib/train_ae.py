"""Training loops of the autoencoders: ``pretrain`` (a base AE from scratch, plateau rule) and ``finetune`` (EQ-VAE,
or the plain control of Table 6 with the same budget). One function, :func:`train_autoencoder`, does both.

Recipe (SPEC §1, official code): Adam(β = 0.5, 0.9) for the autoencoder and for the PatchGAN, lr = 4.5e-6 × effective
batch (micro-batch × accumulation × processes; 160 → 7.2e-4), no schedule, no EMA, nothing frozen. Per optimizer step:
for each micro-batch the AE loss (losses.EQVAELoss.generator_loss) is back-propagated, then the discriminator loss on
the same (detached) pair; then both optimizers step.

Plumbing (process group, gradient mean, atomic checkpoint, JSONL log) comes from :mod:`eqvae_lib.training`; the
command line (``python -m eqvae_lib pretrain / finetune``) is :mod:`eqvae_lib.cli_ae`.

Multi-process (``torchrun --nproc_per_node N``; NCCL on CUDA, gloo on CPU): every process takes a disjoint shard of
each epoch's permutation; after the backward passes the gradients of the AE and of the discriminator are averaged
with ``all_reduce`` and the discriminator's BatchNorm buffers are broadcast from rank 0 — the same arithmetic as
``DistributedDataParallel`` (whose forward hook cannot see ``vae.encode``/``vae.decode`` calls, hence the explicit
reduction). Each rank draws its own branch / τ (one per micro-batch, as the official code does per GPU). Only rank 0
writes files.

Randomness (the RNG rule of :mod:`eqvae_lib.rng`; no generator state is carried between steps):

* data order: a permutation per epoch from stream ``data`` (seed, epoch); rank r takes the r-th contiguous share;
* posterior noise: stream ``posterior`` (seed, step), drawn ON THE DEVICE for the step's global batch (world ×
  grad_accum × micro-batch images, full latent size); process r's micro-batch a uses rows
  ``(r·grad_accum + a)·micro …`` (a low-resolution latent uses the top-left corner of its rows);
* the objective's own draws (branch, τ, scale): stream ``objective`` (seed, step, rank, micro-batch), a CPU
  generator (its values steer Python control flow, so reading them never waits for the GPU).
Hence the EQ arm and the plain control of one seed share initialisation, data order and posterior noise (common
random numbers): with p_α = 1 and p_prior_s = 0 the EQ fine-tune IS the plain fine-tune, and the steps both run in the
plain branch see the same noise.

Host synchronisation: a step reads nothing back from the device except on logging steps (every ``log_every``
steps): the loss terms are accumulated on the device and their interval means are logged then. On CUDA, a
non-finite loss is therefore detected at the next logging step (the error names the interval); on the CPU every
step is checked. TF32 is enabled for CUDA matmuls/convolutions, Adam is fused on CUDA, and ``compile=True`` runs
the autoencoder and discriminator through ``torch.compile``.

Run folder (``run_dir``)::

    checkpoint.pt   latest training state (:class:`eqvae_lib.training.Checkpointer`, format ``eqvae-ae-v1``; atomic;
                    after every epoch, optionally every K steps, and at the end): AE + discriminator weights, both
                    optimizers, torch's RNG, epoch / position / step / images seen, branch counts, plateau trace,
                    elapsed time
    log.jsonl       :class:`eqvae_lib.training.JsonlLogger`: one ``"kind": "train"`` line per ``log_every`` steps:
                    losses, branch + τ, adaptive weight, discriminator logits real / fake, lr, images seen;
                    ``"kind": "val"`` lines (``"val": {...}``) with the plateau decision; ``"kind": "event"`` lines
                    (start, resume, epoch_end, end)
    model/          final autoencoder, diffusers format (latent normalisation stored in its config)
    discriminator.safetensors, discriminator_config.json
                    the final PatchGAN (weights; class, in_channels, ndf, n_layers and weights hash beside them), so a
                    fine-tune can start from it (``disc_init``: a warm discriminator, :func:`load_discriminator`)
    model.ckpt      LDM-layout export (kl-f8-type models with mid-block attention only)
    summary.json    config, steps, images seen, epochs, wall time, stop reason, branch counts, plateau rule + trace,
                    final validation, weights hash, latent normalisation, perceptual network, discriminator start
                    (``discriminator_init``: ``fresh`` or ``warm``, its weights hash at step 0), the caller's notes

Resume: when ``checkpoint.pt`` exists (and ``cfg.resume``), training continues from it and — on CPU with
``deterministic=True`` — ends with weights bit-identical to an uninterrupted run (data order is a function of
(seed, epoch); position, optimizers, RNG states are restored). Interrupting at any time leaves the previous checkpoint
intact (atomic rename). ``log.jsonl`` is cut back to the checkpoint's step.

Plateau rule (pretraining): every ``val_every`` steps the L1 (and PSNR) of ``D(mean E(x))`` on a fixed held-out
batch is measured; training stops when the mean of the last ``plateau_window`` measurements improves on the mean of
the ``plateau_window`` measurements before them by less than ``plateau_threshold`` (relative). Means of windows, not
single values: with the GAN on, single validations swing around the trend, and the kit's former rule (the best of the
last window against the one value before it) fired on such a swing in the AE design pilot while the window means were
still improving (figures/cpu/design/plateau_pilot_ae.json, its ``annotations``). Only measurements
after the GAN switches on (``loss.disc_start``) count: the adversarial term raises L1 at first. Caps: ``max_steps``,
``max_epochs`` (and ``max_time_s``, for the command line's ``--time`` only: the kit's pipeline never sets it, so its
results do not depend on the machine's speed). The stop reason (``plateau`` / ``max_steps`` / ``max_epochs`` /
``max_time``), the rule, every measurement and the decision are logged and put in the summary.

Warm discriminator: ``disc_init`` (a run folder holding ``discriminator.safetensors``) makes the loss's PatchGAN start
from those weights instead of a fresh initialisation; its Adam state starts new (moments zero), as the autoencoder's
does in a fine-tune. The architecture beside the weights must equal the loss's (else ValueError).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors, save_file as save_safetensors
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from . import autoencoders as ae
from .data import iter_batches
from .runtime import seed_everything
from .io import atomic_path, atomic_write_json, git_commit, state_dict_hash
from . import rng as rng_rule
from .losses import BRANCHES, EQVAELoss, LossConfig
from .perf import adam_kwargs, enable_tf32, maybe_compile
from .training import (Checkpointer, JsonlLogger, all_reduce_gradients, barrier, broadcast_state, dist_info,
                       resolve_device)
from .training import init_distributed  # noqa: F401  (importable from here: torchrun scripts call it before training)

#: format id of ``checkpoint.pt`` (the envelope of :class:`eqvae_lib.training.Checkpointer`)
CHECKPOINT_FORMAT = "eqvae-ae-v1"


@dataclass
class AETrainConfig:
    """Every knob of an autoencoder training run (pretrain or finetune)."""

    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int = 32                 # micro-batch per process
    grad_accum: int = 1                  # micro-batches per optimizer step
    base_lr: float = 4.5e-6              # lr = base_lr × effective batch (official recipe)
    lr: float | None = None              # set to override the scaled lr
    betas: tuple[float, float] = (0.5, 0.9)
    max_steps: int | None = None         # optimizer steps (None = no cap)
    max_epochs: float | None = 1         # passes over the given training set (None = no cap)
    max_time_s: float | None = None      # wall-clock cap (training time, accumulated over resumes)
    seed: int = 0
    device: str | None = None            # None: cuda if available else cpu
    bf16: bool = True                    # bf16 autocast (CUDA only; ignored on CPU)
    deterministic: bool = False          # torch.use_deterministic_algorithms (bit-identical resume on CPU)
    # plateau rule / validation
    plateau: bool = False
    val_every: int = 200                 # steps between validations (0 = never)
    val_size: int = 256                  # images of the fixed held-out batch
    plateau_window: int = 5              # validations in the window
    plateau_threshold: float = 0.01      # relative improvement below which training stops
    # io
    log_every: int = 1                   # steps between log lines (means over the interval); the only host syncs
    compile: bool = False                # torch.compile the autoencoder and the discriminator (opt-in)
    checkpoint_every_steps: int | None = None
    resume: bool = True
    measure_norm: bool | None = None     # None: measure for the kit's own models (config has latents_mean or scale 1)
    norm_images: int = 2048
    export_ldm: bool | None = None       # None: when the architecture allows it (mid-block attention)
    num_workers: int = 0                 # DataLoader workers for Dataset inputs
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        self.betas = tuple(self.betas)
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"batch_size and grad_accum must be >= 1, got {self.batch_size}, {self.grad_accum}")
        if self.max_steps is None and self.max_epochs is None and self.max_time_s is None and not self.plateau:
            raise ValueError("no stopping rule: set max_steps, max_epochs, max_time_s or plateau=True")
        if self.plateau_window < 1:
            raise ValueError(f"plateau_window must be >= 1 validation, got {self.plateau_window}")
        if self.plateau and not self.val_every:
            raise ValueError("plateau=True needs validations: set val_every >= 1 (steps)")


# ------------------------------------------------------------------------------------------------------ helpers
class _Source:
    """Training images from a tensor ``[N, C, H, W]``, a pair ``(images, labels)`` or a Dataset of (x, label)."""

    def __init__(self, data):
        self.images, self.dataset = None, None
        if isinstance(data, torch.Tensor):
            self.images = data
        elif isinstance(data, (tuple, list)) and len(data) in (1, 2) and isinstance(data[0], torch.Tensor):
            self.images = data[0]
        else:
            self.dataset = data
        if self.images is not None and (self.images.dim() != 4 or not self.images.is_floating_point()):
            raise ValueError(f"training images must be a float tensor [N, C, H, W] in [-1, 1], got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.dataset)

    def item(self, i: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[i]
        it = self.dataset[i]
        return it[0] if isinstance(it, (tuple, list)) else it

    def batches(self, indices: list[int], batch_size: int, epoch: int, num_workers: int):
        if self.images is not None:
            for s in range(0, len(indices) - batch_size + 1, batch_size):
                yield self.images[indices[s: s + batch_size]]
            return
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if num_workers > 0:

            loader = DataLoader(Subset(self.dataset, indices), batch_size=batch_size, shuffle=False, drop_last=True,
                                num_workers=num_workers, collate_fn=lambda items: torch.stack(
                                    [it[0] if isinstance(it, (tuple, list)) else it for it in items]))
            yield from loader
            return
        for s in range(0, len(indices) - batch_size + 1, batch_size):
            yield torch.stack([self.item(i) for i in indices[s: s + batch_size]])

    def first(self, n: int) -> torch.Tensor:
        n = min(n, len(self))
        return self.images[:n] if self.images is not None else torch.stack([self.item(i) for i in range(n)])


def _epoch_indices(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This rank's share of epoch ``epoch``'s permutation (stream ``data`` of the RNG rule: (seed, epoch) only)."""
    order = rng_rule.epoch_permutation(n, seed, epoch)
    per_rank = n // world
    return order[rank * per_rank: (rank + 1) * per_rank].tolist()


@torch.no_grad()
def validate(vae, images: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Reconstruction of ``images`` ([-1, 1]) through the posterior MEAN: L1 (mean |x − x̂|), MSE, PSNR in dB
    (peak-to-peak 2, reconstructions clamped to [-1, 1])."""
    model = ae._unwrap(vae)
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    l1 = se = 0.0
    n = 0
    for x in iter_batches(images, batch_size, dev):
        x = x.to(torch.float32)
        r = ae.decode(model, ae.encode(model, x, "mean")).clamp(-1, 1)
        l1 += float((r - x).abs().sum())
        se += float(((r - x) ** 2).sum())
        n += x.numel()
    model.train(was)
    mse = se / n
    return {"l1": l1 / n, "mse": mse, "psnr": 10 * math.log10(4.0 / max(mse, 1e-12))}


def plateau_gan_on(cfg: AETrainConfig) -> int:
    """The step after which validations count for the plateau rule: the GAN start ``loss.disc_start`` (the
    adversarial term raises L1 at first), or 0 when the objective has no GAN (``disc_weight`` = 0)."""
    return cfg.loss.disc_start if cfg.loss.disc_weight > 0 else 0


def plateau_reached(values: list[float], window: int, threshold: float) -> tuple[bool, float | None]:
    """The plateau rule on a list of validation L1 values (lower is better), in measurement order: with
    ``ref = mean(values[-2·window:-window])`` (the previous window) and ``cur = mean(values[-window:])`` (the last
    one), stop when ``(ref − cur) / ref < threshold``. Returns ``(stop, improvement)``; ``improvement`` (a fraction;
    negative when the last window is worse) is None while fewer than ``2 · window`` values exist. Comparing window
    means makes the rule follow the trend, not the swings of single validations under adversarial training.

    Raises:
        ValueError: ``window`` < 1."""
    if window < 1:
        raise ValueError(f"plateau window must be >= 1 validation, got {window}")
    if len(values) < 2 * window:
        return False, None
    ref = sum(values[-2 * window:-window]) / window
    cur = sum(values[-window:]) / window
    imp = (ref - cur) / max(abs(ref), 1e-12)
    return imp < threshold, imp


def _is_kit_model(vae) -> bool:
    cfg = ae._unwrap(vae).config
    return getattr(cfg, "latents_mean", None) is not None or float(getattr(cfg, "scaling_factor", 1.0)) == 1.0


def _can_export_ldm(vae) -> bool:
    try:
        ae.ldm_original_config(vae)
        return True
    except ValueError:
        return False


DISC_WEIGHTS, DISC_CONFIG = "discriminator.safetensors", "discriminator_config.json"


def discriminator_config(disc: torch.nn.Module, loss_cfg: LossConfig, in_channels: int) -> dict:
    """The architecture of the loss's PatchGAN (what rebuilds it: ``NLayerDiscriminator(in_channels, ndf,
    n_layers)``) and its weights hash."""
    return {"class": type(disc).__name__, "in_channels": int(in_channels), "ndf": int(loss_cfg.disc_ndf),
            "n_layers": int(loss_cfg.disc_layers), "weights_hash": state_dict_hash(disc)}


def save_discriminator(disc: torch.nn.Module, folder: str | os.PathLike, config: dict) -> Path:
    """Write the PatchGAN's state dict to ``folder/discriminator.safetensors`` and ``config`` (see
    :func:`discriminator_config`) to ``folder/discriminator_config.json``, both atomically. Returns the weights
    path."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in disc.state_dict().items()}
    with atomic_path(folder / DISC_WEIGHTS) as tmp:
        save_safetensors(state, str(tmp))
    atomic_write_json(folder / DISC_CONFIG, config)
    return folder / DISC_WEIGHTS


def load_discriminator(folder: str | os.PathLike, expected: dict | None = None) -> tuple[dict, dict]:
    """The PatchGAN weights saved in ``folder`` by :func:`save_discriminator`: ``(state_dict, config)``.

    Args:
        folder: a run folder of :func:`train_autoencoder` (e.g. the base autoencoder's).
        expected: the architecture the weights must have (keys ``class``, ``in_channels``, ``ndf``, ``n_layers``).

    Raises:
        ValueError: ``folder`` holds no discriminator weights (a model loaded from elsewhere, or trained by an older
            kit version): use a fresh discriminator instead (``finetune_disc: fresh``); or the saved architecture
            differs from ``expected``.
    """
    folder = Path(folder)
    wpath, cpath = folder / DISC_WEIGHTS, folder / DISC_CONFIG
    if not wpath.is_file() or not cpath.is_file():
        raise ValueError(f"a warm discriminator was requested, but {folder} holds no saved discriminator "
                         f"({DISC_WEIGHTS} + {DISC_CONFIG}); retrain that base with this kit version, or start the "
                         "fine-tune from a fresh PatchGAN (finetune_disc: fresh)")
    config = json.loads(cpath.read_text())
    if expected is not None:
        diff = {k: (config.get(k), v) for k, v in expected.items() if k != "weights_hash" and config.get(k) != v}
        if diff:
            raise ValueError(f"the discriminator saved in {folder} does not match the fine-tune's loss "
                             f"(saved, wanted): {diff}; use the same disc_ndf / disc_layers, or finetune_disc: fresh")
    return load_safetensors(str(wpath)), config


# ------------------------------------------------------------------------------------------------ the loop
def train_autoencoder(vae, train, cfg: AETrainConfig, run_dir: str | os.PathLike, val=None,
                      loss_fn: EQVAELoss | None = None, disc_init: str | os.PathLike | None = None,
                      notes: dict | None = None) -> Path:
    """Train ``vae`` (``AutoencoderKL`` or ``VQModel``; modified in place) with ``cfg`` and write the run folder.

    Args:
        vae: the model to train (random for pretraining, loaded for fine-tuning).
        train: training images — tensor ``[N, C, H, W]`` in [-1, 1], ``(images, labels)``, or a Dataset of
            ``(x, label)`` (``ImageFolder``: ``set_epoch`` is called). One epoch = one pass over it.
        cfg: :class:`AETrainConfig`.
        run_dir: output folder (resumed from when it holds ``checkpoint.pt`` and ``cfg.resume``).
        val: held-out images (same forms) for validation / the plateau rule; default: the first ``val_size``
            training images (then the summary says ``val_source: "train"``).
        loss_fn: a prepared :class:`EQVAELoss` (default: built from ``cfg.loss``).
        disc_init: a run folder with a saved discriminator (:func:`save_discriminator`): the PatchGAN starts from
            it (warm; new Adam state) instead of a fresh initialisation. Ignored when resuming (the checkpoint
            holds the discriminator).
        notes: JSON-serialisable facts the caller wants in ``summary.json`` (e.g. where the lr came from).

    Returns:
        ``run_dir`` (``summary.json`` there describes the run).

    Raises:
        ValueError: too few images for one step, a checkpoint from another world size, non-square images,
            ``disc_init`` without saved discriminator weights or with another architecture.
        CheckpointFormatError: ``run_dir/checkpoint.pt`` is not of format ``eqvae-ae-v1`` (written by an older kit
            version: the message says to delete it or use a new run folder).
        FloatingPointError: a non-finite loss (names the step and branch).
    """
    run_dir = Path(run_dir)
    rank, world = dist_info()
    dev = resolve_device(cfg.device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    src = _Source(train)
    micro, accum = cfg.batch_size, cfg.grad_accum
    per_rank = len(src) // world
    steps_per_epoch = per_rank // (micro * accum)
    if steps_per_epoch < 1:
        raise ValueError(f"{len(src)} training images are too few for one step of {micro}×{accum}×{world} images")
    eff_batch = micro * accum * world
    lr = cfg.lr if cfg.lr is not None else cfg.base_lr * eff_batch

    model = ae._unwrap(vae).to(dev).train()
    in_ch = model.config.in_channels
    loss_fn = (loss_fn or EQVAELoss(cfg.loss, in_channels=in_ch)).to(dev).train()
    disc = loss_fn.discriminator
    disc_cfg = discriminator_config(disc, cfg.loss, in_ch)
    if disc_init is not None:
        state, saved = load_discriminator(disc_init, expected=disc_cfg)
        disc.load_state_dict(state)
        disc_origin = {"mode": "warm", "from": str(disc_init), "weights_hash": state_dict_hash(disc)}
    else:
        disc_origin = {"mode": "fresh", "weights_hash": disc_cfg["weights_hash"]}
    ae_params = [p for p in model.parameters() if p.requires_grad]
    enable_tf32(dev)
    opt_ae = torch.optim.Adam(ae_params, lr=lr, betas=cfg.betas, **adam_kwargs(dev))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=cfg.betas, **adam_kwargs(dev))
    for m in (model.encoder, model.decoder, disc):
        maybe_compile(m, cfg.compile)
    use_amp = dev.type == "cuda" and cfg.bf16
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext

    val_images = _Source(val).first(cfg.val_size) if val is not None else src.first(cfg.val_size)
    st: dict[str, Any] = {"step": 0, "epoch": 0, "step_in_epoch": 0, "images_seen": 0, "elapsed_s": 0.0,
                          "branch_counts": {b: 0 for b in BRANCHES}, "val_trace": [], "stop_reason": None}
    # the latest state only (one file, replaced atomically); one log, only rank 0 writes
    checkpointer = Checkpointer(run_dir, CHECKPOINT_FORMAT, name="checkpoint.pt", rank=rank)
    logger = JsonlLogger(run_dir / "log.jsonl", enabled=rank == 0)
    resumed = False
    if cfg.resume and checkpointer.latest() is not None:
        ck = checkpointer.load(world=world)
        disc_origin = ck["disc_origin"] if isinstance(ck.get("disc_origin"), dict) else disc_origin
        model.load_state_dict(ck["vae"])
        disc.load_state_dict(ck["disc"])
        opt_ae.load_state_dict(ck["opt_ae"])
        opt_d.load_state_dict(ck["opt_d"])
        torch.set_rng_state(ck["torch_rng"])  # the loop's own draws need no state (RNG rule: per step)
        st.update(json.loads(ck["state_json"]))
        st["stop_reason"] = None  # the stopping rules are re-evaluated with this run's config
        resumed = True
        logger.truncate(lambda r: r.get("step", 0) <= st["step"])  # cut the log back to the checkpoint
    broadcast_state(list(model.state_dict().values()) + list(disc.state_dict().values()), world)

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)

    def save_checkpoint() -> None:
        checkpointer.save(st["step"], {"vae": model.state_dict(), "disc": disc.state_dict(),
                                       "opt_ae": opt_ae.state_dict(), "opt_d": opt_d.state_dict(),
                                       "torch_rng": torch.get_rng_state(), "state_json": json.dumps(st),
                                       "disc_origin": disc_origin}, world)
        logger.sync()

    if not resumed:
        logger.log("event", 0, event="start", lr=lr, effective_batch=eff_batch, world_size=world,
                   steps_per_epoch=steps_per_epoch, perceptual=cfg.loss.perceptual, objective=cfg.loss.objective,
                   discriminator_init=disc_origin, notes=notes or {},
                   plateau_rule=_plateau_rule_text(cfg) if cfg.plateau else None)
    else:
        logger.log("event", st["step"], event="resume", epoch=st["epoch"], step_in_epoch=st["step_in_epoch"])

    def should_stop() -> str | None:
        if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
            return "max_steps"
        if cfg.max_epochs is not None and st["step"] >= math.ceil(cfg.max_epochs * steps_per_epoch):
            return "max_epochs"
        if cfg.max_time_s is not None and st["elapsed_s"] >= cfg.max_time_s:
            return "max_time"
        return st["stop_reason"]

    total = None
    if cfg.max_steps is not None or cfg.max_epochs is not None:
        caps = [c for c in (cfg.max_steps, math.ceil(cfg.max_epochs * steps_per_epoch) if cfg.max_epochs else None)
                if c is not None]
        total = min(caps)
    pbar = None
    if rank == 0 and cfg.progress:

        pbar = tqdm(total=total, initial=st["step"], desc=f"AE {cfg.loss.objective}", dynamic_ncols=True)

    check_every_step = dev.type == "cpu"  # a CPU step waits for nothing: check each loss at once there
    acc: dict[str, torch.Tensor] = {}     # sums of the loss terms since the last log line (on the device)
    acc_n = 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=dev)
    t_last = time.time()
    reason = should_stop()
    while reason is None:
        epoch = st["epoch"]
        indices = _epoch_indices(len(src), cfg.seed, epoch, rank, world)
        skip = st["step_in_epoch"] * micro * accum
        batches = src.batches(indices[skip:], micro, epoch, cfg.num_workers)
        while st["step_in_epoch"] < steps_per_epoch and reason is None:
            opt_ae.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            rec: dict[str, Any] = {}
            eps = None  # the step's posterior noise, global batch (RNG rule, stream "posterior")
            for a in range(accum):
                x = next(batches).to(dev, torch.float32, non_blocking=True)
                if eps is None and not ae.is_vq(model):
                    n_lat = x.shape[-1] // ae.downsample_factor(model)
                    eps = torch.randn((world * accum * micro, model.config.latent_channels, n_lat, n_lat),
                                      generator=rng_rule.generator(cfg.seed, "posterior", st["step"], device=dev),
                                      device=dev)
                rows = slice((rank * accum + a) * micro, (rank * accum + a + 1) * micro)
                g_obj = rng_rule.generator(cfg.seed, "objective", st["step"], rank, a)
                with amp():
                    loss, logs, pair = loss_fn.generator_loss(model, x, st["step"], generator=g_obj,
                                                              posterior_noise=None if eps is None else eps[rows])
                if check_every_step and not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite autoencoder loss {float(loss)} at step {st['step']} "
                                             f"(branch {logs['branch']}, tau {logs['tau']}); lower the lr")
                nonfinite |= ~torch.isfinite(loss.detach())
                (loss / accum).backward()
                with amp():
                    d_loss, d_logs = loss_fn.discriminator_loss(*pair, st["step"])
                if d_loss.requires_grad:
                    (d_loss / accum).backward()
                st["branch_counts"][logs["branch"]] += 1
                for k, v in {**logs, **d_logs}.items():  # accumulate the numeric terms on the device
                    if isinstance(v, torch.Tensor):
                        acc[k] = acc[k] + v.float() if k in acc else v.float().clone()
                acc_n += 1
                rec = {**logs, **d_logs} if not rec else rec  # the first micro-batch's branch / τ
            # explicit gradient mean over processes, not DistributedDataParallel: DDP's hooks fire on
            # ``module(x)`` calls, but the loss calls ``vae.encode``/``vae.decode`` and the adaptive GAN weight takes
            # ``torch.autograd.grad`` of the last decoder layer inside the step; the arithmetic is DDP's (mean)
            all_reduce_gradients(ae_params, world)
            all_reduce_gradients(disc.parameters(), world)
            opt_ae.step()
            opt_d.step()
            broadcast_state(disc.buffers(), world)  # BatchNorm statistics: rank 0's, as DDP's broadcast_buffers
            st["step"] += 1
            st["step_in_epoch"] += 1
            st["images_seen"] += eff_batch
            logging = st["step"] % cfg.log_every == 0
            if logging:  # the only host sync of the loop: read the interval's means (before the clock is read, so
                # that elapsed_s at a log line includes the device's work up to it)
                if bool(nonfinite):
                    raise FloatingPointError(f"non-finite autoencoder loss in steps {st['step'] - cfg.log_every + 1}"
                                             f"..{st['step']} (last branch {rec['branch']}, tau {rec['tau']}); "
                                             "lower the lr")
                means = {k: float(v) / acc_n for k, v in acc.items()}
                rec = {k: (means.get(k) if isinstance(v, torch.Tensor) else v) for k, v in rec.items()}
                acc, acc_n = {}, 0
            now = time.time()
            st["elapsed_s"] += now - t_last
            t_last = now
            if pbar is not None:
                pbar.update(1)
            if logging:
                if pbar is not None:  # the terms a user reads, not their total
                    pbar.set_postfix(rec=f"{rec['nll']:.4g}", kl=f"{rec['reg']:.3g}", gan=f"{rec['g_loss']:.3g}",
                                     disc=f"{rec['d_loss']:.3g}", br=rec["branch"][:2])
                logger.log("train", st["step"], epoch=epoch, images_seen=st["images_seen"], lr=lr, **rec,
                           branch_counts=dict(st["branch_counts"]), elapsed_s=round(st["elapsed_s"], 3))
            if cfg.val_every and st["step"] % cfg.val_every == 0:
                v = validate(model, val_images)
                st["val_trace"].append({"step": st["step"], **v})
                # only measurements taken with the GAN on count: switching it on trades L1 for sharpness
                gan_on = plateau_gan_on(cfg)
                stop, imp = plateau_reached([t["l1"] for t in st["val_trace"] if t["step"] > gan_on],
                                            cfg.plateau_window, cfg.plateau_threshold)
                logger.log("val", st["step"], val=v, plateau_improvement=imp, plateau_stop=bool(stop and cfg.plateau))
                if cfg.plateau and stop:
                    st["stop_reason"] = "plateau"
                t_last = time.time()  # validation time is not training time
            if cfg.checkpoint_every_steps and st["step"] % cfg.checkpoint_every_steps == 0:
                save_checkpoint()
            reason = should_stop()
        if st["step_in_epoch"] >= steps_per_epoch:
            st["epoch"] += 1
            st["step_in_epoch"] = 0
            save_checkpoint()  # end of every epoch
            t_last = time.time()
            logger.log("event", st["step"], event="epoch_end", epoch=st["epoch"], images_seen=st["images_seen"])
        reason = should_stop()
    st["stop_reason"] = reason
    save_checkpoint()
    if pbar is not None:
        pbar.close()

    # ------------------------------------------------------------------------------------ final outputs (rank 0)
    if rank == 0:
        final_val = validate(model, val_images)
        measure = cfg.measure_norm if cfg.measure_norm is not None else _is_kit_model(model)
        if measure:
            ae.measure_latent_norm(model, src.first(cfg.norm_images), latent="sample", seed=cfg.seed)
        shift, scale = ae.latent_norm(model)
        model_dir = ae.save_autoencoder(model, run_dir / "model")
        save_discriminator(disc, run_dir, discriminator_config(disc, cfg.loss, in_ch))
        export = cfg.export_ldm if cfg.export_ldm is not None else _can_export_ldm(model)
        ldm_path = str(ae.export_ldm_checkpoint(model, run_dir / "model.ckpt")) if export else None
        summary = {
            "objective": cfg.loss.objective, "perceptual": cfg.loss.perceptual, "config": _cfg_dict(cfg),
            "steps": st["step"], "epochs_completed": st["epoch"], "images_seen": st["images_seen"],
            "steps_per_epoch": steps_per_epoch, "effective_batch": eff_batch, "lr": lr, "world_size": world,
            "train_images": len(src), "wall_time_s": round(st["elapsed_s"], 2), "stop_reason": reason,
            "branch_counts": st["branch_counts"],
            "plateau_rule": _plateau_rule_text(cfg) if cfg.plateau else None, "val_trace": st["val_trace"],
            "val_source": "val" if val is not None else "train", "final_val": final_val,
            "weights_hash": ae.weights_hash(model), "latent_norm": {"shift": shift.tolist(), "scale": scale.tolist(),
                                                                    "measured": bool(measure)},
            "downsample_factor": ae.downsample_factor(model), "model_dir": str(model_dir), "ldm_checkpoint": ldm_path,
            "git_commit": git_commit(), "device": str(dev),
            "discriminator_init": disc_origin, "discriminator_final_hash": state_dict_hash(disc), **(notes or {}),
        }
        atomic_write_json(run_dir / "summary.json", summary)
        logger.log("event", st["step"], event="end", stop_reason=reason, final_val=final_val)
    logger.close()
    barrier(world)
    return run_dir


def _plateau_rule_text(cfg: AETrainConfig) -> str:
    gan_on = plateau_gan_on(cfg)
    w = cfg.plateau_window
    return (f"every {cfg.val_every} steps: L1 of D(mean E(x)) on {cfg.val_size} held-out images (only those after "
            f"step {gan_on}, the GAN start, count; v = their list); from {2 * w} values on, stop when "
            f"(mean(v[-{2 * w}:-{w}]) - mean(v[-{w}:])) / mean(v[-{2 * w}:-{w}]) < {cfg.plateau_threshold}; "
            f"caps max_steps={cfg.max_steps}, max_epochs={cfg.max_epochs}"
            + (f", max_time_s={cfg.max_time_s}" if cfg.max_time_s is not None else ""))


def _cfg_dict(cfg: AETrainConfig) -> dict:
    d = asdict(cfg)
    d["betas"] = list(cfg.betas)
    return d


def load_summary(run_dir: str | os.PathLike) -> dict:
    """The ``summary.json`` of a finished run."""
    return json.loads((Path(run_dir) / "summary.json").read_text())


def pretrain(train, cfg: AETrainConfig, run_dir, arch: str = "small-f4", val=None, **arch_overrides) -> Path:
    """Train a base autoencoder from scratch (``build_autoencoder(arch, **arch_overrides)``) with the plain
    objective (Eq. 1); set ``cfg.plateau=True`` for the plateau rule. Returns the run folder."""
    if cfg.loss.objective != "plain":
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, objective="plain"))
    seed_everything(cfg.seed)
    vae = ae.build_autoencoder(arch, **arch_overrides)
    return train_autoencoder(vae, train, cfg, run_dir, val=val)


def finetune(vae, train, cfg: AETrainConfig, run_dir, val=None, disc_init=None, notes: dict | None = None) -> Path:
    """Fine-tune a loaded autoencoder: EQ-VAE (``cfg.loss.objective="eq"``), the plain control (``"plain"``) or the
    explicit variant (``"explicit"``). ``vae`` may be a model or a path / hub id for ``load_autoencoder``;
    ``disc_init`` (the base's run folder) starts from its saved PatchGAN (warm), None from a fresh one; ``notes`` go
    into the summary (:func:`train_autoencoder`)."""
    if isinstance(vae, (str, os.PathLike)):
        vae = ae.load_autoencoder(vae)
    return train_autoencoder(vae, train, cfg, run_dir, val=val, disc_init=disc_init, notes=notes)
