"""``python -m eqvae_lib audit``: equivariance, reconstruction and latent-ID audit of any autoencoder.

For one autoencoder (or two, side by side, with ``--compare``) it measures, on the same images:
  * the latent equivariance error Δ (App. C.3) per rotation and scale, Δ_R and Δ_S;
  * decoder-side equivariance (Fig. 3): PSNR (and rFID with ``--fid``) of D(τ∘E(x)) against τ∘x per scale and
    rotation;
  * reconstruction quality (Table 12): PSNR, SSIM, ST-LPIPS (and rFID with ``--fid``);
  * the intrinsic dimension of the flattened latents (TwoNN with bootstrap interval, MLE cross-check);
prints a table, and saves ``audit.json`` and ``audit.png`` in ``--out``.

Exit codes: 0 success; 2 bad input (missing path, not a model / a pickle the kit will not execute, no images, an image
mode it cannot convert, wrong channel count, incompatible sizes) with a one-line message on stderr.

Latents: Δ, the decoder-side metrics and TwoNN use RAW latents E(x) by default (``--latent-space normalised`` for
(E(x) − shift)·scale); see ``eqvae_lib.autoencoders.latent_description`` for why this is what the paper's numbers
correspond to. Every metric in ``audit.json`` carries ``"inputs"`` (latent space and normalisation, posterior mean or
sample, autoencoder hash, images) and rFID says what it was compared with (paired: the same images).

Example::

    python -m eqvae_lib audit --vae data/cache/ae-eq/<hash>/epoch_3 --images fashion-mnist --n 500 \
        --compare data/cache/ae-base/<hash>/model
    python -m eqvae_lib audit --vae stabilityai/sd-vae-ft-ema --images /data/imagenet/val --n 1000 --fid inception
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..autoencoders import (decode, downsample_factor, encode, latent_channels, latent_norm,
                            load_autoencoder, make_encoder, weights_hash)
from ..cli_util import BAD_INPUT, CONVERSIONS_HELP, add_checkpoint_options, checkpoint_kwargs, one_line, run_guarded
from ..data import DatasetNotFoundError, ImageFolder, get_dataset
from ..io import atomic_path, atomic_write_json, git_commit
from ..runtime import RUNS_DIR, device as default_device
from ..transforms import Transform
from .equivariance import decoder_equivariance, equivariance_error, transformed_decodings
from .extractors import get_extractor
from .intrinsic_dim import intrinsic_dimension, latent_points
from .reconstruction import reconstruction_metrics

DATASET_NAMES = ("fashion-mnist", "photo-crops")


class AuditInputError(ValueError):
    """Bad command-line input: reported on stderr with exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eqvae_lib audit",
                                description="Equivariance / reconstruction / latent-ID audit of an autoencoder "
                                            "(EQ-VAE, arXiv 2502.09509: App. C.3, Fig. 3, Table 12, Table 5).",
                                epilog=CONVERSIONS_HELP + " Exit code 2 with one line on bad input.")
    p.add_argument("--vae", required=True, help="diffusers folder, LDM checkpoint file, or hub id (needs internet)")
    p.add_argument("--images", required=True,
                   help=f"an image folder (ADM centre crop) or a dataset name: {', '.join(DATASET_NAMES)} "
                        "(test split)")
    p.add_argument("--compare", default=None, help="a second autoencoder to put side by side")
    p.add_argument("--n", type=int, default=500, help="number of images (default 500)")
    p.add_argument("--size", type=int, default=None, help="image side in px (default: the model's sample_size)")
    p.add_argument("--latent", choices=("mean", "sample"), default="mean",
                   help="latent for Δ, decoder-side equivariance and ID (default mean)")
    p.add_argument("--latent-space", choices=("raw", "normalised"), default="raw",
                   help="latents for Δ, decoder-side metrics and ID: raw E(x) (default; equals the paper's Δ for SD-VAE/SDXL, "
                        "whose normalisation is one global factor) or "
                        "normalised (E(x) - shift)·scale with the model's stored normalisation")
    p.add_argument("--recon-latent", choices=("mean", "sample"), default="sample",
                   help="latent for reconstruction metrics (default sample, as the official evaluation)")
    p.add_argument("--fid", choices=("none", "classifier", "inception"), default="none",
                   help="feature extractor for rFID (default none; inception costs ~0.2 s/image on CPU)")
    p.add_argument("--scales", default="0.25,0.5,0.75", help="scales of T_S (comma-separated)")
    p.add_argument("--mode", default="bilinear", choices=("bilinear", "bicubic", "nearest", "area"),
                   help="interpolation of the scaling (default bilinear, as the official code)")
    p.add_argument("--id-n", type=int, default=None, help="points for the intrinsic dimension (default: --n)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/audit/<model name>)")
    add_checkpoint_options(p)
    return p


def _load_vae(path: str, role: str, **kwargs):
    try:
        return load_autoencoder(path, **kwargs)
    except BAD_INPUT as e:
        raise AuditInputError(f"{role} could not be loaded: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - any other failure to load (e.g. diffusers' own errors) is bad input too
        raise AuditInputError(f"{role} {path!r} could not be loaded as an autoencoder ({type(e).__name__}: "
                              f"{one_line(e)[:300]})") from None


def _load_images(spec: str, n: int, size: int, channels: int, seed: int) -> tuple[torch.Tensor, str, dict]:
    if n < 3:
        raise AuditInputError(f"--n must be at least 3 (intrinsic dimension needs 3 points), got {n}")
    try:
        if spec in DATASET_NAMES:
            ds = get_dataset(spec, "test", size=size, n=n, channels=channels if spec == "fashion-mnist" else None,
                             seed=seed)
            desc = f"{spec} test split, {size} px"
            info = {"dataset": spec, "split": "test", "size": size,
                    "conversions": ({"28x28 grey padded to 32 (value -1), resized, repeated to 3 channels":
                                     min(n, len(ds))} if spec == "fashion-mnist" and channels == 3 else
                                    {"28x28 grey padded to 32 (value -1), resized": min(n, len(ds))}
                                    if spec == "fashion-mnist" else {"random crops of bundled photos, resized":
                                                                     min(n, len(ds))})}
        elif Path(spec).is_dir():
            ds = ImageFolder(spec, size=size, crop="center")
            desc = f"image folder {spec} (ADM centre crop), {size} px"
            info = ds.describe()
        else:
            raise AuditInputError(f"--images {spec!r} is neither an existing folder nor one of "
                                  f"{', '.join(DATASET_NAMES)}")
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as e:
        if isinstance(e, AuditInputError):
            raise
        raise AuditInputError(f"--images {spec!r}: {one_line(e)}") from None
    if len(ds) == 0:
        raise AuditInputError(f"--images {spec!r} holds no images")
    m = min(n, len(ds))
    x = torch.stack([ds[i][0] for i in range(m)])
    if x.shape[1] != channels:
        raise AuditInputError(f"--images {spec!r} gives {x.shape[1]}-channel images but the autoencoder expects "
                              f"{channels} channel(s)")
    info["n_used"] = m
    return x, desc + f", n={m}", info


def _check_sizes(vae, size: int, scales: list[float]) -> None:
    f = downsample_factor(vae)
    if size % f:
        raise AuditInputError(f"image size {size} px is not a multiple of the downsampling factor {f}")
    side = size // f
    bad = [s for s in scales if not (0 < s <= 1) or abs(side * s - round(side * s)) > 1e-9]
    if bad:
        ok = [f"{m}/{side}" for m in range(1, side)]
        raise AuditInputError(f"scales {bad} do not map the {side}-cell latent grid to whole cells; use multiples "
                              f"of 1/{side} (e.g. {', '.join(ok[:6])} ...)")


def audit_autoencoder(vae, images: torch.Tensor, *, name: str = "ae", latent: str = "mean",
                      recon_latent: str = "sample", extractor=None, scales=(0.25, 0.5, 0.75), mode: str = "bilinear",
                      id_n: int | None = None, lpips: bool = True, batch_size: int = 32, seed: int = 0,
                      device=None, latent_space: str = "raw", image_set: str | dict | None = None) -> dict:
    """All audit metrics of one autoencoder on ``images`` ``[N, C, H, W]`` in [-1, 1].

    ``latent_space``: ``"raw"`` (default, E(x)) or ``"normalised"`` for Δ, decoder-side metrics and ID (the
    reconstruction is unaffected: normalisation is undone before decoding). ``image_set``: description recorded in
    every metric's ``"inputs"``.

    Returns ``{"name", "weights_hash", "downsample_factor", "latent_channels", "latent_norm", "equivariance"
    (:func:`equivariance_error`), "decoder_equivariance" (:func:`decoder_equivariance`), "reconstruction"
    (:func:`reconstruction_metrics`), "intrinsic_dimension" (:func:`intrinsic_dimension`), "seconds"}``; each
    metric dict has ``"inputs"``.
    """
    t0 = time.time()
    device = torch.device(device) if device is not None else default_device()
    vae = vae.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)

    norm = latent_norm(vae)

    def enc(kind, space):
        return make_encoder(vae, kind, space, generator=gen if kind == "sample" else None, device=device)

    def dec(z):
        return decode(vae, z)

    def dec_space(space):
        return dec if space == "raw" else (lambda z: decode(vae, norm.denormalize(z)))

    where = {"image_set": image_set} if image_set else None
    with torch.no_grad():
        eq = equivariance_error(images, enc(latent, latent_space), scales=scales, mode=mode, latent=latent,
                                batch_size=batch_size, inputs=where)
        deq = decoder_equivariance(images, enc(latent, latent_space), dec_space(latent_space), scales=scales,
                                   mode=mode, latent=latent, extractor=extractor, batch_size=batch_size, inputs=where)
        rec = reconstruction_metrics(images, enc(recon_latent, "raw"), dec, latent=recon_latent, extractor=extractor,
                                     lpips="alex" if lpips else False, batch_size=batch_size, inputs=where)
        id_enc = enc(latent, latent_space)
        pts = latent_points(images, id_enc, batch_size=batch_size)
    idim = intrinsic_dimension(pts, n=min(id_n or len(pts), len(pts)), seed=seed,
                               inputs={**id_enc.inputs, **(where or {}), "n_images": len(pts)})
    idim["latent"] = latent
    return {"name": name, "weights_hash": weights_hash(vae), "downsample_factor": downsample_factor(vae),
            "latent_channels": latent_channels(vae),
            "latent_norm": {"shift": norm.shift.tolist(), "scale": norm.scale.tolist()},
            "equivariance": eq, "decoder_equivariance": deq,
            "reconstruction": rec, "intrinsic_dimension": idim, "seconds": time.time() - t0}


def _fmt(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{nd}f}"


def format_table(results: list[dict]) -> str:
    """A plain-text table of the audit results (one column per autoencoder)."""
    rows: list[tuple[str, list[str]]] = []
    first = results[0]
    rows.append(("Δ_R (latent equivariance error, rotations)", [_fmt(r["equivariance"]["delta_R"]) for r in results]))
    rows.append(("Δ_S (scales)", [_fmt(r["equivariance"]["delta_S"]) for r in results]))
    for k in first["equivariance"]["per_transform"]:
        rows.append((f"  Δ {k}", [_fmt(r["equivariance"]["per_transform"][k]) for r in results]))
    for k in first["decoder_equivariance"]["per_transform"]:
        rows.append((f"PSNR D(τE(x)) vs τx, {k} [dB]",
                     [_fmt(r["decoder_equivariance"]["per_transform"][k]["psnr"], 2) for r in results]))
        if first["decoder_equivariance"]["rfid_metric"]:
            rows.append((f"  rFID {k}", [_fmt(r["decoder_equivariance"]["per_transform"][k]["rfid"], 2)
                                          for r in results]))
    rm = first["decoder_equivariance"]["rotation_mean"]
    if rm:
        rows.append(("PSNR rotations (mean) [dB]",
                     [_fmt(r["decoder_equivariance"]["rotation_mean"]["psnr"], 2) for r in results]))
    rec = "reconstruction"
    rows.append((f"PSNR [dB] ({first[rec]['latent']} latent)", [_fmt(r[rec]["psnr"], 2) for r in results]))
    rows.append(("SSIM", [_fmt(r[rec]["ssim"]) for r in results]))
    rows.append(("LPIPS (ST-LPIPS alex)", [_fmt(r[rec]["lpips"]) for r in results]))
    if first[rec]["rfid_metric"]:
        rows.append((f"rFID [{first[rec]['rfid_metric']}]", [_fmt(r[rec]["rfid"], 3) for r in results]))
    rows.append(("Intrinsic dim. (TwoNN)", [_fmt(r["intrinsic_dimension"]["twonn"], 2) for r in results]))
    rows.append(("  95% bootstrap interval", ["[" + ", ".join(_fmt(v, 2) for v in r["intrinsic_dimension"]["twonn_ci"])
                                              + "]" if r["intrinsic_dimension"]["twonn_ci"] else "-"
                                              for r in results]))
    rows.append(("  MLE cross-check", [_fmt(r["intrinsic_dimension"]["mle"], 2) for r in results]))
    w0 = max(len(a) for a, _ in rows)
    cols = [max(len(r["name"]), max(len(b[i]) for _, b in rows)) for i, r in enumerate(results)]
    lines = [" " * w0 + "  " + "  ".join(r["name"].rjust(c) for r, c in zip(results, cols))]
    for a, b in rows:
        lines.append(a.ljust(w0) + "  " + "  ".join(v.rjust(c) for v, c in zip(b, cols)))
    return "\n".join(lines)


def save_figure(results: list[dict], examples: list[dict], path: Path, title: str) -> None:
    """Bar charts (Δ per τ, decoder-side PSNR per τ, rFID per τ if measured) and, per autoencoder, the Fig. 2-style
    examples: τ∘x, D(τ∘E(x)), D(E(τ∘x)) for 180° and s = 0.5. Drawn on a ``matplotlib.figure.Figure`` (no pyplot, so
    the caller's backend is left alone)."""
    has_fid = results[0]["decoder_equivariance"]["rfid_metric"] is not None
    n_bar = 3 if has_fid else 2
    fig = Figure(figsize=(4.2 * n_bar, 3.2 + 1.9 * len(results)))
    gs = fig.add_gridspec(1 + len(results), n_bar, height_ratios=[3.2] + [1.9] * len(results))
    width = 0.8 / len(results)

    def bars(ax, keys, values_per_ae, ylabel):
        xs = np.arange(len(keys))
        for i, (r, vals) in enumerate(zip(results, values_per_ae)):
            ax.bar(xs + i * width - 0.4 + width / 2, [v if v is not None else np.nan for v in vals], width,
                   label=r["name"])
        ax.set_xticks(xs, keys, rotation=30, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=7, loc="lower right", framealpha=0.8)

    k_eq = list(results[0]["equivariance"]["per_transform"])
    bars(fig.add_subplot(gs[0, 0]), k_eq, [[r["equivariance"]["per_transform"][k] for k in k_eq] for r in results],
         "latent equivariance error Δ")
    k_de = list(results[0]["decoder_equivariance"]["per_transform"])
    bars(fig.add_subplot(gs[0, 1]), k_de,
         [[r["decoder_equivariance"]["per_transform"][k]["psnr"] for k in k_de] for r in results],
         "PSNR of D(τE(x)) vs τx [dB]")
    if has_fid:
        bars(fig.add_subplot(gs[0, 2]), k_de,
             [[r["decoder_equivariance"]["per_transform"][k]["rfid"] for k in k_de] for r in results],
             f"rFID ({results[0]['decoder_equivariance']['rfid_metric']})")
    for i, (r, ex) in enumerate(zip(results, examples)):
        sub = gs[1 + i, :].subgridspec(1, len(ex))
        for j, (label, img) in enumerate(ex.items()):
            ax = fig.add_subplot(sub[0, j])
            a = ((img.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
            ax.imshow(a[..., 0] if a.shape[2] == 1 else a, cmap="gray" if a.shape[2] == 1 else None, vmin=0, vmax=1)
            ax.set_title(f"{r['name']}: {label}" if j == 0 else label, fontsize=7)
            ax.axis("off")
    fig.suptitle("\n".join(textwrap.wrap(title, 140)), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _examples(vae, x: torch.Tensor, latent: str, mode: str, device) -> dict[str, torch.Tensor]:
    vae = vae.to(device)

    def enc(y):
        return encode(vae, y.to(device), latent=latent)

    def dec(z):
        return decode(vae, z)

    out = {}
    for t in (Transform(k=2, mode=mode), Transform(sx=0.5, sy=0.5, mode=mode)):
        d = transformed_decodings(x[:1], enc, dec, t)
        lab = t.describe()
        out[f"τx {lab}"] = d["target"][0]
        out[f"D(τE(x)) {lab}"] = d["decode_transformed_latent"][0]
        out[f"D(E(τx)) {lab}"] = d["decode_latent_of_transformed"][0]
    return out


def run_audit(args: argparse.Namespace) -> dict:
    """Run the audit for parsed arguments; returns the saved JSON dict. Raises :class:`AuditInputError`."""
    t0 = time.time()
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    kw = checkpoint_kwargs(args)
    vaes = [(args.vae, _load_vae(args.vae, "--vae", **kw))]
    if args.compare:
        vaes.append((args.compare, _load_vae(args.compare, "--compare", **kw)))
    cfg0 = vaes[0][1].config
    channels = int(cfg0.in_channels)
    size = args.size or int(getattr(cfg0, "sample_size", 256) or 256)
    if isinstance(size, (list, tuple)):
        size = int(size[0])
    for path, vae in vaes:
        if int(vae.config.in_channels) != channels:
            raise AuditInputError(f"{path} expects {vae.config.in_channels}-channel images, {vaes[0][0]} expects "
                                  f"{channels}: the two cannot be audited on the same images")
        _check_sizes(vae, size, scales)
    images, desc, image_info = _load_images(args.images, args.n, size, channels, args.seed)
    extractor = None
    if args.fid != "none":
        if args.fid == "classifier" and args.images not in DATASET_NAMES:
            raise AuditInputError("--fid classifier needs --images fashion-mnist or photo-crops (the classifier is "
                                  "trained on that dataset's training split); use --fid inception for a folder")
        extractor = get_extractor(args.fid, dataset=args.images, size=size, channels=channels)
    device = default_device()
    names = [Path(p).name or str(p) for p, _ in vaes]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    results, examples = [], []
    for (path, vae), name in zip(vaes, names):
        print(f"auditing {path} on {desc} ...", file=sys.stderr)
        r = audit_autoencoder(vae, images, name=name, latent=args.latent, recon_latent=args.recon_latent,
                              extractor=extractor, scales=scales, mode=args.mode, id_n=args.id_n,
                              lpips=not args.no_lpips, batch_size=args.batch_size, seed=args.seed, device=device,
                              latent_space=args.latent_space, image_set=desc)
        r["path"] = str(path)
        results.append(r)
        examples.append(_examples(vae, images, args.latent, args.mode, device))
    out_dir = Path(args.out) if args.out else RUNS_DIR / "audit" / "-vs-".join(n.replace(" ", "_") for n in names)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"command": "audit", "argv": sys.argv, "images": desc, "image_size": size, "channels": channels,
              "image_inputs": image_info,
              "settings": {"latent": args.latent, "latent_space": args.latent_space,
                           "recon_latent": args.recon_latent, "scales": scales,
                           "mode": args.mode, "fid": args.fid, "seed": args.seed, "n": len(images),
                           "id_n": args.id_n or len(images)},
              "feature_extractor": extractor.describe() if extractor is not None else None,
              "autoencoders": results, "git_commit": git_commit(), "seconds": time.time() - t0,
              "paper": "EQ-VAE (arXiv 2502.09509): Δ App. C.3 / Table 1, decoder-side Fig. 3, reconstruction Table 12, "
                       "ID Table 5"}
    atomic_write_json(out_dir / "audit.json", record)
    save_figure(results, examples, out_dir / "audit.png",
                f"EQ-VAE audit: {', '.join(names)} on {desc}; latent {args.latent} (Δ, decoder-side, ID), "
                f"reconstruction from the posterior {args.recon_latent}")
    print(format_table(results))
    print(f"\nsaved {out_dir / 'audit.json'} and {out_dir / 'audit.png'}")
    record["out_dir"] = str(out_dir)
    return record


def cli_audit(argv: list[str]) -> int:
    """Entry point of ``python -m eqvae_lib audit ARGS``; returns the exit code (0 ok, 2 bad input)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or usage error (2)
        return int(e.code or 0)
    return run_guarded("audit", lambda _: run_audit(args) and 0, argv)
