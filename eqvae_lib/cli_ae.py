"""Command line of the autoencoder loops (:mod:`eqvae_lib.train_ae`): ``python -m eqvae_lib pretrain`` (a base
autoencoder from scratch, plateau rule) and ``python -m eqvae_lib finetune`` (EQ-VAE or the plain control on a user's
autoencoder). Both run under ``torchrun`` (one process per GPU; gloo on the CPU) and return exit code 2 with one line
on stderr for bad input."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from torch.utils.data import Subset

from . import autoencoders as ae
from .cli_util import CONVERSIONS_HELP, add_checkpoint_options, checkpoint_kwargs, run_guarded
from .data import ImageFolder, get_dataset
from .io import atomic_write_json
from .losses import LossConfig
from .runtime import RUNS_DIR
from .train_ae import AETrainConfig, finetune, load_summary, pretrain
from .training import dist_info, init_distributed

def _common_args(p: argparse.ArgumentParser) -> None:
    lc, tc = LossConfig(), AETrainConfig()
    p.add_argument("--data", required=True, help="image folder, or fashion-mnist / photo-crops")
    p.add_argument("--out", help="run folder (default runs/<command>-<time>)")
    p.add_argument("--size", type=int, help="image side in pixels (default: the model's sample_size)")
    p.add_argument("--n", type=int, help="use only the first N training images")
    p.add_argument("--val-size", type=int, default=tc.val_size, help="held-out images for validation")
    p.add_argument("--batch-size", type=int, default=tc.batch_size, help="images per micro-batch and process")
    p.add_argument("--grad-accum", type=int, default=tc.grad_accum, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, help=f"learning rate (default {tc.base_lr} x effective batch)")
    p.add_argument("--steps", type=int, help="max optimizer steps")
    p.add_argument("--epochs", type=float, help="max epochs")
    p.add_argument("--time", type=float, help="max training seconds")
    p.add_argument("--perceptual", default=lc.perceptual, choices=["stlpips-alex", "stlpips-vgg", "lpips-vgg",
                                                                   "none"])
    p.add_argument("--disc-weight", type=float, default=lc.disc_weight, help="GAN weight (0 = no GAN)")
    p.add_argument("--disc-ndf", type=int, default=lc.disc_ndf, help="PatchGAN width")
    p.add_argument("--kl-weight", type=float, default=lc.kl_weight, help="KL weight (λ_reg)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    p.add_argument("--val-every", type=int, default=tc.val_every, help="steps between validations (0 = never)")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every K steps")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for image folders")


def _load_data(args, channels: int, size: int):
    if Path(args.data).is_dir():
        train = ImageFolder(args.data, size=size, crop="random", seed=args.seed)
        if args.n:
            train = Subset(train, range(min(args.n, len(train))))
        val = ImageFolder(args.data, size=size, crop="center", seed=args.seed)
        return train, Subset(val, range(min(args.val_size, len(val))))
    if args.data not in ("fashion-mnist", "photo-crops"):
        raise ValueError(f"--data {args.data!r} is neither a folder nor one of fashion-mnist, photo-crops")
    kw = {"channels": channels} if args.data == "fashion-mnist" else {}
    if args.data == "photo-crops" and channels != 3:
        raise ValueError(f"photo-crops are RGB but the autoencoder has {channels} input channel(s)")
    train = get_dataset(args.data, "train", size=size, n=args.n, seed=args.seed, **kw)
    val = get_dataset(args.data, "test", size=size, n=args.val_size, seed=args.seed, **kw)
    return train.tensors(), val.tensors()


def _train_cfg(args, loss: LossConfig, **extra) -> AETrainConfig:
    return AETrainConfig(loss=loss, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                         max_steps=args.steps, max_epochs=args.epochs, max_time_s=args.time, seed=args.seed,
                         device=args.device, val_every=args.val_every, val_size=args.val_size,
                         checkpoint_every_steps=args.checkpoint_every, resume=not args.no_resume,
                         progress=not args.no_progress, num_workers=args.workers, **extra)


def _run_cli(fn, argv, prog: str = "eqvae") -> int:
    """Bad input → one line on stderr and exit code 2 (``eqvae_lib.cli_util.run_guarded``)."""
    return run_guarded(prog, fn, argv)


def _record_inputs(run_dir: Path, args, vae, train) -> None:
    """``inputs.json`` of a CLI run: the autoencoder argument, its loaded normalisation, the data and every
    conversion applied to the images (issue #16: no silent conversion)."""
    base = getattr(train, "dataset", train)
    data = base.describe() if isinstance(base, ImageFolder) else {
        "dataset": args.data, "size": args.size or int(vae.config.sample_size),
        "conversions": ("28x28 grey padded to 32 (value -1), resized" + (", repeated to 3 channels"
                        if int(vae.config.in_channels) == 3 else "")) if args.data == "fashion-mnist"
        else "random crops of the bundled photos, resized (bilinear, antialiased)"}
    shift, scale = ae.latent_norm(vae)
    atomic_write_json(Path(run_dir) / "inputs.json", {
        "vae": getattr(args, "vae", None), "data": data, "conversions_rule": CONVERSIONS_HELP,
        "loaded_latent_norm": {"shift": shift.tolist(), "scale": scale.tolist()},
        "checkpoint_options": {k: getattr(args, k, None) for k in ("scaling_factor", "shift_factor",
                                                                    "original_config")}})


def cli_finetune(argv: list[str]) -> int:
    """``python -m eqvae_lib finetune --vae PATH_OR_HUB_ID --data DIR|fashion-mnist|photo-crops [...]``: fine-tune
    a user's autoencoder with EQ-VAE (or ``--objective plain``), write the run folder with the model in diffusers
    format and, for kl-f8-type models, an LDM ``model.ckpt``. Returns 0, or 2 on bad input (message on stderr)."""
    def run(argv):
        lc = LossConfig()
        p = argparse.ArgumentParser(prog="python -m eqvae_lib finetune", description="Fine-tune an autoencoder with EQ-VAE (paper Eq. 7) or the plain control; writes the run folder with the model in diffusers format (and an LDM .ckpt for kl-f8, which carries the model's normalisation and config). Resumes from --out when it holds a checkpoint.", epilog=CONVERSIONS_HELP + " Exit code 2 with one line on bad input.")
        p.add_argument("--vae", required=True, help="diffusers folder, LDM .ckpt/.safetensors, or hub id")
        p.add_argument("--objective", default="eq", choices=["eq", "plain", "explicit"])
        p.add_argument("--p-alpha", type=float, default=lc.p_alpha, help="P(prior preservation), paper's meaning")
        p.add_argument("--p-prior-s", type=float, default=lc.p_prior_s)
        p.add_argument("--family", default=lc.family, choices=["rotation", "scale", "rotation+scale",
                                                                "rotation+anisotropic"])
        p.add_argument("--scale-grid", default=lc.scale_grid, choices=["discrete", "continuous"])
        p.add_argument("--interpolation", default=lc.interpolation, choices=["bilinear", "bicubic"])
        p.add_argument("--min-latent-side", type=int, default=lc.min_latent_side)
        p.add_argument("--disc-start", type=int, default=0, help="step at which the GAN term starts (fine-tuning: 0)")
        _common_args(p)
        add_checkpoint_options(p)
        args = p.parse_args(argv)
        if args.steps is None and args.epochs is None and args.time is None:
            args.epochs = 1
        vae = ae.load_autoencoder(args.vae, **checkpoint_kwargs(args))
        size = args.size or int(vae.config.sample_size)
        train, val = _load_data(args, vae.config.in_channels, size)
        loss = LossConfig(objective=args.objective, perceptual=args.perceptual, p_alpha=args.p_alpha,
                          p_prior_s=args.p_prior_s, family=args.family, scale_grid=args.scale_grid,
                          interpolation=args.interpolation, min_latent_side=args.min_latent_side,
                          disc_start=args.disc_start, disc_weight=args.disc_weight, disc_ndf=args.disc_ndf,
                          kl_weight=args.kl_weight)
        cfg = _train_cfg(args, loss)
        init_distributed(cfg.device)
        out = Path(args.out) if args.out else RUNS_DIR / f"finetune-{args.objective}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = finetune(vae, train, cfg, out, val=val)
        if dist_info()[0] == 0:
            _record_inputs(run_dir, args, vae, train)
            s = load_summary(run_dir)
            print(f"done: {s['steps']} steps, final val PSNR {s['final_val']['psnr']:.2f} dB; model in "
                  f"{s['model_dir']}" + (f", LDM checkpoint {s['ldm_checkpoint']}" if s["ldm_checkpoint"] else ""))
        return 0

    return _run_cli(run, argv, "finetune")


def cli_pretrain(argv: list[str]) -> int:
    """``python -m eqvae_lib pretrain --arch small-f4 --data fashion-mnist [...]``: train a base autoencoder from
    scratch with the plain LDM loss and the plateau rule. Returns 0, or 2 on bad input (message on stderr)."""
    def run(argv):
        tc = AETrainConfig()
        p = argparse.ArgumentParser(prog="python -m eqvae_lib pretrain", description="Train a base autoencoder from scratch with the plain LDM objective until the validation L1 plateaus (the kit's stand-in for SD-VAE).", epilog=CONVERSIONS_HELP + " Exit code 2 with one line on bad input.")
        p.add_argument("--arch", default="small-f4", choices=list(ae.CONFIGS))
        p.add_argument("--in-channels", type=int, help="1 or 3 (default: the arch's; 3 for photo-crops)")
        p.add_argument("--latent-channels", type=int, default=4)
        p.add_argument("--disc-start", type=int, default=2000, help="step at which the GAN term starts")
        p.add_argument("--no-plateau", action="store_true", help="disable the plateau rule")
        p.add_argument("--plateau-window", type=int, default=tc.plateau_window)
        p.add_argument("--plateau-threshold", type=float, default=tc.plateau_threshold)
        _common_args(p)
        args = p.parse_args(argv)
        if args.steps is None and args.epochs is None and args.time is None and args.no_plateau:
            args.epochs = 1
        in_ch = args.in_channels or (3 if args.data == "photo-crops" or Path(args.data).is_dir()
                                     else ae.CONFIGS[args.arch]["in_channels"])
        size = args.size or int(ae.CONFIGS[args.arch]["sample_size"])
        train, val = _load_data(args, in_ch, size)
        loss = LossConfig(objective="plain", perceptual=args.perceptual, disc_start=args.disc_start,
                          disc_weight=args.disc_weight, disc_ndf=args.disc_ndf, kl_weight=args.kl_weight)
        cfg = _train_cfg(args, loss, plateau=not args.no_plateau, plateau_window=args.plateau_window,
                         plateau_threshold=args.plateau_threshold)
        init_distributed(cfg.device)
        out = Path(args.out) if args.out else RUNS_DIR / f"pretrain-{args.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = pretrain(train, cfg, out, arch=args.arch, val=val, in_channels=in_ch,
                           latent_channels=args.latent_channels)
        if dist_info()[0] == 0:
            _record_inputs(run_dir, args, ae.load_autoencoder(Path(run_dir) / "model"), train)
            s = load_summary(run_dir)
            print(f"done: {s['steps']} steps ({s['stop_reason']}), final val PSNR {s['final_val']['psnr']:.2f} dB; "
                  f"model in {s['model_dir']}")
        return 0

    return _run_cli(run, argv, "pretrain")
