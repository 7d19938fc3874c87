"""Get-or-build artefacts for the notebooks: every notebook runs standalone, in any order.

Each function below returns an artefact (dataset tensors, the base autoencoder, fine-tuned autoencoders, caches,
trained generators, metric results) and builds it only when it is not already cached. Cache folders live under
``data/cache/<kind>/<key>`` where ``key`` hashes every parameter that determines the artefact plus the identities
(hashes) of its inputs, so a changed parameter or input builds a new artefact and an unchanged one is reused —
also across profiles and notebooks. Training runs resume from their last checkpoint when interrupted.

``P`` is the dict of notebook parameters (a profile, see ``profiles/*.yaml``, plus overrides).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import autoencoders as ae
from .config import DATA_DIR
from .data import get_dataset
from .io import atomic_write_json, hash_obj, sha256_tensor

CACHE = DATA_DIR / "cache"


def cache_dir(kind: str, params: dict[str, Any]) -> Path:
    """``data/cache/<kind>/<hash of params>``; the params are written beside as ``params.json``."""
    folder = CACHE / kind / hash_obj(params)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "params.json").exists():
        atomic_write_json(folder / "params.json", params)
    return folder


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
        return xs[:n] if isinstance(xs, torch.Tensor) else torch.stack([xs[i][0] for i in range(n)])


def load_data(P: dict) -> Data:
    """Load the profile's dataset (``dataset``, ``image_size``, ``channels``, ``n_train``, ``n_test``, ``seed``).

    ``imagefolder`` (``paper`` profile) needs ``data_root_train`` and ``data_root_test`` and streams from disk
    (training split: LDM random crops; test split: ADM centre crops).
    """
    from .data import ImageFolder

    name, size = P["dataset"], int(P["image_size"])
    kw = dict(size=size, seed=int(P.get("seed", 0)))
    if name == "fashion-mnist":
        kw["channels"] = int(P.get("channels", 1))
    out = {}
    for split, n_key, root_key in (("train", "n_train", "data_root_train"), ("test", "n_test", "data_root_test")):
        n = P.get(n_key)
        ds = get_dataset(name, split, n=n, root=P.get(root_key), **kw)
        if isinstance(ds, ImageFolder):
            files = [str(f) for f in ds.files[: n or len(ds)]]
            out[split] = (Data.subset(ds, n), None, hash_obj({"files": files, "size": size, "crop": ds.crop}))
        else:
            x, y = ds.tensors()
            out[split] = (x, y, sha256_tensor(x)[:16])
    num_classes = 10 if name == "fashion-mnist" else None
    return Data(out["train"][0], out["train"][1], out["test"][0], out["test"][1], name=name, image_size=size,
                num_classes=num_classes, train_id=out["train"][2], test_id=out["test"][2])


def dataset_label(P: dict) -> str:
    """Human-readable dataset name for captions."""
    return {"fashion-mnist": "Fashion-MNIST", "photo-crops": "photo crops (scikit-image/-learn, matplotlib)",
            "imagefolder": "ImageFolder"}.get(P["dataset"], P["dataset"])


# --------------------------------------------------------------------------------------------- autoencoders
def loss_config(P: dict, objective: str, **overrides):
    """The :class:`~eqvae_lib.losses.LossConfig` of the profile for ``objective`` (``eq``/``plain``/``explicit``)."""
    from .losses import LossConfig

    keys = ("perceptual", "p_alpha", "p_prior_s", "family", "scale_grid", "min_latent_side", "interpolation",
            "disc_weight", "disc_ndf", "disc_layers", "kl_weight", "explicit_lambda", "explicit_stopgrad")
    kw = {k: P[k] for k in keys if k in P}
    kw.update(overrides)
    return LossConfig(objective=objective, **kw)


def base_autoencoder(P: dict, data: Data | None = None):
    """The base autoencoder (the stand-in for SD-VAE): loaded from ``P["base_vae"]`` when set (paper profile: a
    diffusers folder, LDM checkpoint or hub id), else pretrained from scratch on the profile's training images until
    the validation L1 plateaus (rule and cap from ``pretrain_*`` parameters) and cached.

    Returns:
        ``(vae, info)``; ``info`` has ``run_dir`` (None for a loaded model), ``summary`` (train_ae's summary: steps,
        stop reason, plateau trace) and ``hash`` (weights hash).
    """
    from .train_ae import AETrainConfig, load_summary, pretrain

    if P.get("base_vae"):
        vae = ae.load_autoencoder(P["base_vae"])
        return vae.eval(), {"run_dir": None, "summary": None, "hash": ae.weights_hash(vae), "source": P["base_vae"]}
    data = data or load_data(P)
    params = dict(dataset=P["dataset"], image_size=P["image_size"], channels=data.channels, train_id=data.train_id,
                  test_id=data.test_id, arch=P["ae_arch"], latent_channels=P.get("latent_channels", 4),
                  perceptual=P["perceptual"], disc_start=P["pretrain_disc_start"], batch=P["pretrain_batch"],
                  lr=P.get("pretrain_lr"), max_minutes=P["pretrain_max_minutes"],
                  max_epochs=P.get("pretrain_max_epochs"), val_every=P["pretrain_val_every"],
                  window=P["pretrain_plateau_window"], threshold=P["pretrain_plateau_threshold"], seed=P["seed"])
    run_dir = cache_dir("ae-base", params)
    if not (run_dir / "summary.json").exists():
        cfg = AETrainConfig(loss=loss_config(P, "plain", disc_start=P["pretrain_disc_start"]),
                            batch_size=P["pretrain_batch"], lr=P.get("pretrain_lr"),
                            max_epochs=P.get("pretrain_max_epochs"), max_time_s=60 * P["pretrain_max_minutes"],
                            plateau=True, val_every=P["pretrain_val_every"], val_size=P.get("val_size", 256),
                            plateau_window=P["pretrain_plateau_window"],
                            plateau_threshold=P["pretrain_plateau_threshold"], seed=P["seed"],
                            checkpoint_every_steps=P.get("checkpoint_every_steps", 500), export_ldm=False,
                            progress=P.get("progress", True))
        pretrain(data.train_x, cfg, run_dir, arch=P["ae_arch"], val=data.test_x, in_channels=data.channels,
                 out_channels=data.channels, latent_channels=P.get("latent_channels", 4),
                 sample_size=P["image_size"])
    vae = ae.load_autoencoder(run_dir / "model").eval()
    return vae, {"run_dir": run_dir, "summary": load_summary(run_dir), "hash": ae.weights_hash(vae), "source": "kit"}


def finetuned_autoencoders(P: dict, objective: str, data: Data | None = None, base=None, tag: str = "",
                           epochs: int | None = None, **loss_overrides) -> list[tuple[Any, dict]]:
    """Fine-tune the base autoencoder for ``epochs`` (default ``finetune_epochs``) epochs over the first
    ``finetune_subset`` training images with ``objective`` (``"eq"`` = EQ-VAE Eq. 7, ``"plain"`` = the Table 6 control with the same budget,
    ``"explicit"`` = Table 7), keeping the model after every epoch.

    Returns:
        ``[(vae, info) for epoch 1..N]``; ``info`` has ``epoch``, ``run_dir``, ``hash``, ``summary``. Epoch 0 is the
        base model itself.
    """
    from .train_ae import AETrainConfig, finetune, load_summary

    data = data or load_data(P)
    base_vae, base_info = base if base is not None else base_autoencoder(P, data)
    loss = loss_config(P, objective, disc_start=0, **loss_overrides)
    n_sub = min(int(P["finetune_subset"]), len(data.train_x))
    params = dict(base=base_info["hash"], loss=dataclasses.asdict(loss), subset=n_sub, train_id=data.train_id,
                  batch=P["finetune_batch"], lr=P.get("finetune_lr"), seed=P["seed"], tag=tag)
    # The number of epochs is not part of the key: the model after epoch e does not depend on how many epochs
    # follow (constant lr, no schedule), so a longer run continues the same folder.
    run_dir = cache_dir(f"ae-{objective}", params)
    out = []
    for epoch in range(1, int(epochs or P["finetune_epochs"]) + 1):
        epoch_dir = run_dir / f"epoch_{epoch}"
        if not (epoch_dir / "config.json").exists():
            cfg = AETrainConfig(loss=loss, batch_size=P["finetune_batch"], lr=P.get("finetune_lr"), max_epochs=epoch,
                                seed=P["seed"], val_every=0, val_size=P.get("val_size", 256), export_ldm=False,
                                measure_norm=None, checkpoint_every_steps=P.get("checkpoint_every_steps", 500),
                                progress=P.get("progress", True))
            # a fresh copy: training changes the model in place, and the base must stay the base
            vae = (ae.load_autoencoder(base_info["run_dir"] / "model") if base_info["run_dir"]
                   else copy.deepcopy(base_vae))
            finetune(vae, Data.subset(data.train_x, n_sub), cfg, run_dir, val=data.test_x)
            tmp = run_dir / f".epoch_{epoch}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(run_dir / "model", tmp)
            tmp.rename(epoch_dir)
        vae = ae.load_autoencoder(epoch_dir).eval()
        out.append((vae, {"epoch": epoch, "run_dir": run_dir, "hash": ae.weights_hash(vae),
                          "summary": load_summary(run_dir)}))
    return out


def autoencoder_suite(P: dict, data: Data | None = None) -> dict[str, tuple[Any, dict]]:
    """The three autoencoders every comparison uses: ``{"base": ..., "plain": ..., "eq": ...}`` (the fine-tuned ones
    after the last epoch), each ``(vae, info)``."""
    data = data or load_data(P)
    base = base_autoencoder(P, data)
    return {"base": base, "plain": finetuned_autoencoders(P, "plain", data, base)[-1],
            "eq": finetuned_autoencoders(P, "eq", data, base)[-1]}


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


def feature_extractor(P: dict, data: Data | None = None, kind: str | None = None):
    """The FID feature extractor of the profile: ``P["fid_extractor"]`` = ``"classifier"`` (fast; trained by the kit
    on the dataset's training split, reported as its own metric name) or ``"inception"``."""
    from .metrics import fid

    kind = kind or P.get("fid_extractor", "classifier")
    channels = data.channels if data is not None else int(P.get("channels", 1))
    if kind == "classifier":
        overrides = {k[len("classifier_"):]: v for k, v in P.items() if k.startswith("classifier_")}
        cfg = fid.ClassifierConfig(dataset=P["dataset"], size=int(P["image_size"]), channels=channels, **overrides)
        return fid.classifier_extractor(cfg, verbose=P.get("progress", True))
    return fid.get_extractor(kind, dataset=P["dataset"], size=int(P["image_size"]), channels=channels)


def autoencoder_metrics(P: dict, data: Data, vae, extractor=None, which: tuple[str, ...] = (
        "equivariance", "decoder", "reconstruction", "intrinsic_dim")) -> dict:
    """Every autoencoder-side number of the paper for one AE on the profile's test images, cached as JSON.

    Parts (each a dict from :mod:`eqvae_lib.metrics`):
      * ``equivariance``: Δ_R, Δ_S and per-τ values (App. C.3) on ``eval_n`` images, posterior mean.
      * ``decoder``: PSNR (and rFID with ``extractor``) of D(τ∘E(x)) against τ∘x per scale / rotation (Fig. 3).
      * ``reconstruction``: rFID, PSNR, SSIM, LPIPS of D(E(x)) (Table 12) from the latent ``recon_latent``.
      * ``intrinsic_dim``: TwoNN (+ bootstrap interval, MLE cross-check) on ``id_n`` flattened latents (Table 5).
    """
    from .io import atomic_write_json as write
    from .metrics import equivariance as eqm
    from .metrics import intrinsic_dim as idm
    from .metrics import reconstruction as rec

    n = min(int(P["eval_n"]), len(data.test_x))
    x = Data.subset(data.test_x, n)
    scales = tuple(P.get("eval_scales", (0.25, 0.5, 0.75)))
    key = dict(ae=ae.weights_hash(vae), test=data.test_id, n=n, scales=scales, mode=P.get("interpolation", "bilinear"),
               latent=P.get("recon_latent", "sample"), extractor=getattr(extractor, "weights_hash", None),
               id_n=P.get("id_n"), id_bootstrap=P.get("id_bootstrap"), seed=P["seed"])
    path = CACHE / "ae-metrics" / f"{hash_obj(key)}.json"
    import json

    results = json.loads(path.read_text()) if path.exists() else {}
    todo = [w for w in which if w not in results]
    mode = P.get("interpolation", "bilinear")
    for part in todo:
        if part == "equivariance":
            results[part] = eqm.equivariance_error(x, encoder(vae), scales=scales, mode=mode)
        elif part == "decoder":
            results[part] = eqm.decoder_equivariance(x, encoder(vae), decoder(vae), scales=scales, mode=mode,
                                                     extractor=extractor)
        elif part == "reconstruction":
            latent = P.get("recon_latent", "sample")
            results[part] = rec.reconstruction_metrics(x, encoder(vae, latent, P["seed"]), decoder(vae),
                                                       latent=latent, extractor=extractor)
        elif part == "intrinsic_dim":
            m = min(int(P["id_n"]), len(data.test_x))
            enc = encoder(vae)
            z = idm.latent_points(Data.subset(data.test_x, m), enc)
            results[part] = idm.intrinsic_dimension(z, n=m, seed=P["seed"], n_bootstrap=int(P["id_bootstrap"]),
                                                    inputs=enc.inputs)
        else:
            raise ValueError(f"unknown metric part {part!r}")
        write(path, {**results, "_key": key})
    return {k: v for k, v in results.items() if k in which}


# -------------------------------------------------------------------------------------------------- generative
def latent_cache(P: dict, data: Data, vae):
    """Encode the profile's training images with ``vae`` once (mode ``latent_mode``: ``official`` = one posterior
    sample + one random flip per image, or ``repa``), normalised with the AE's stored (shift, scale), cached under a
    key that includes the AE's weights hash."""
    from .latents import build_latent_cache

    shift, scale = ae.latent_norm(vae)
    mode = P.get("latent_mode", "official")
    key = dict(ae=ae.weights_hash(vae), data=data.train_id, mode=mode, seed=P["seed"])
    labels = None
    if isinstance(data.train_x, torch.Tensor):
        labels = data.train_y if data.num_classes else torch.full_like(data.train_y, -1)
    return build_latent_cache(vae, data.train_x, cache_dir("latents", key), shift=shift, scale=scale, mode=mode,
                              labels=labels, data_id=f"{data.name}/train/{data.train_id}", seed=P["seed"],
                              progress=P.get("progress", True))


def _gen_config(P: dict, method: str, seed: int, labelled: bool):
    from .train_gen import TrainGenConfig

    steps = int(P["gen_steps"])
    return TrainGenConfig(model=P["gen_model"], method=method, learn_sigma=bool(P.get("learn_sigma", False)),
                          steps=steps, batch_size=int(P["gen_batch"]), lr=float(P.get("gen_lr", 1e-4)),
                          ema_decay=float(P["gen_ema"]), ckpt_steps=[int(s) for s in P["gen_eval_steps"]],
                          log_every=int(P.get("gen_log_every", 100)), seed=seed,
                          num_classes=None if labelled else 0, progress=P.get("progress", True))


def generative_curve(P: dict, data: Data, vae, seed: int, method: str = "dit", extractor=None,
                     reference=None) -> dict:
    """Train a DiT (``method="dit"``) or SiT (``"sit"``) on ``vae``'s latents for ``gen_steps`` steps and measure
    gFID/KID (``extractor`` features of ``gen_fid_n`` samples against the test set) at every ``gen_eval_steps`` step.
    Cached and resumable (the run folder's key covers the AE hash, the data, the generator settings and the seed).

    Returns:
        ``{"steps": [...], "fid": [...], "kid": [...], "loss": [(step, loss), ...], "run_dir": str,
        "metric": extractor's metric name, "sampler": ..., "latents_per_s": median throughput}``.
    """
    import json

    from .metrics import fid as fidm
    from .train_gen import train_gen, sample_images

    extractor = extractor or feature_extractor(P, data)
    n_fid = int(P["gen_fid_n"])
    reference = reference or reference_stats(P, data, extractor, n_fid)
    cache = latent_cache(P, data, vae)
    cfg = _gen_config(P, method, seed, labelled=bool(data.num_classes))
    sampler = P.get(f"{method}_sampler", "ddim" if method == "dit" else "heun")
    sample_steps = int(P.get(f"{method}_sample_steps", 50))
    key = dict(ae=ae.weights_hash(vae), cache=str(cache.folder.name), cfg=dataclasses.asdict(cfg), n_fid=n_fid,
               sampler=sampler, sample_steps=sample_steps, extractor=extractor.weights_hash, ref=reference.key)
    key["cfg"].pop("progress", None)
    run_dir = cache_dir(f"gen-{method}", key)

    def eval_fn(step: int, ema) -> dict:
        g = torch.Generator().manual_seed(10_000 + seed)
        imgs = sample_images(ema, vae, cache.norm, n_fid, method=method, sampler=sampler, steps=sample_steps,
                             generator=g, batch_size=int(P.get("gen_sample_batch", 250)),
                             progress=P.get("progress", True))
        r = fidm.compute_fid(imgs, reference, extractor, kid=True, verbose=False)
        return {"fid": r["fid"], "kid": r.get("kid_mean"), "kid_std": r.get("kid_std"), "metric": r["metric"]}

    train_gen(cfg, cache, run_dir, eval_fn=eval_fn)
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    evals = sorted((r for r in log if "eval" in r), key=lambda r: r["step"])
    losses = [(r["step"], r["loss"]) for r in log if "loss" in r]
    speeds = sorted(r["latents_per_s"] for r in log if "latents_per_s" in r)
    return {"steps": [r["step"] for r in evals], "fid": [r["eval"]["fid"] for r in evals],
            "kid": [r["eval"]["kid"] for r in evals], "loss": losses, "run_dir": str(run_dir),
            "metric": evals[-1]["eval"]["metric"] if evals else None, "sampler": f"{sampler} {sample_steps}",
            "latents_per_s": speeds[len(speeds) // 2] if speeds else None}


def steps_to_reach(steps: list[int] | list[float], values: list[float], target: float) -> int | float | None:
    """First evaluated step at which ``values`` (e.g. a gFID curve) is ≤ ``target``, linearly interpolated between
    checkpoints; ``None`` when the curve never gets there within the budget. Integer steps give an integer step;
    fractional units (e.g. epochs ``[1.0, 2.0, 3.0]``) give a float rounded to 0.01."""
    integral = not any(isinstance(s, float) for s in steps)
    prev = None
    for s, v in zip(steps, values):
        if v <= target:
            if prev is None:
                return s
            s0, v0 = prev
            if v0 == v:
                return s
            at = s0 + (s - s0) * (v0 - target) / (v0 - v)
            return int(round(at)) if integral else round(float(at), 2)
        prev = (s, v)
    return None


# -------------------------------------------------------------------------------------------------- design pilot
def measure_train_throughput(P: dict, dataset: str, image_size: int, arch: str, steps: int = 12, batch: int = 32,
                             warmup: int = 3) -> dict:
    """Images/s of full EQ-VAE training steps (generator + discriminator, forward + backward + Adam) for a freshly
    built ``arch`` on ``batch`` real images of ``dataset`` at ``image_size`` px, timed after ``warmup`` steps."""
    import time

    from .losses import EQVAELoss
    from .transforms import scale_range

    channels = 3 if dataset == "photo-crops" else int(P.get("channels", 1))
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
        lo, hi = scale_range(n, P.get("min_scale", 0.25), 4)
        n_scales = hi - lo + 1
    except ValueError:
        n_scales = 0
    return dict(config=f"{dataset} {image_size}px {arch}", dataset=dataset, image_size=image_size, arch=arch,
                latent=f"{vae.config.latent_channels}x{n}x{n}", latent_side=n, n_scales_floor4=n_scales,
                img_per_s=steps * batch / dt, params_M=sum(p.numel() for p in vae.parameters()) / 1e6)


def design_pilot(P: dict):
    """Measure every candidate of ``P["pilot_candidates"]`` (dicts with dataset, image_size, arch) and project the
    minutes the profile's pretraining image budget (``pilot_pretrain_images``) would take. Returns a DataFrame."""
    import pandas as pd

    rows = [measure_train_throughput(P, c["dataset"], int(c["image_size"]), c["arch"],
                                     steps=int(P.get("pilot_steps", 12)), batch=int(P.get("pilot_batch", 32)))
            for c in P["pilot_candidates"]]
    df = pd.DataFrame(rows)
    df["pretrain_min_projected"] = P["pilot_pretrain_images"] / df["img_per_s"] / 60
    return df


def design_choice(df, P: dict) -> dict:
    """Apply the design rule to :func:`design_pilot`'s table: keep candidates with ≥ 4 admissible scales (4-cell
    floor) whose projected pretraining time fits ``pretrain_max_minutes``; prefer labelled data (the paper's
    generators are class-conditional, and a classifier gives the fast FID its class structure), then the largest
    latent grid, then the fastest. Returns ``{"chosen", "matches_profile", "text"}``."""
    df = df.assign(labelled=df["config"].str.startswith("fashion-mnist"))
    ok = df[(df["n_scales_floor4"] >= 4) & (df["pretrain_min_projected"] <= P["pretrain_max_minutes"])]
    profile_cfg = f"{P['dataset']} {P['image_size']}px {P['ae_arch']}"
    if ok.empty:
        return {"chosen": None, "matches_profile": False,
                "text": "No candidate fits the pretraining budget on this machine: lower pilot_pretrain_images or "
                        "raise pretrain_max_minutes."}
    best = ok.sort_values(["labelled", "latent_side", "img_per_s"], ascending=[False, False, False]).iloc[0]
    match = best["config"] == profile_cfg
    text = (f"Chosen by the rule: {best['config']} (latent {best['latent']}, {best['img_per_s']:.0f} img/s, "
            f"{best['pretrain_min_projected']:.1f} min projected for {P['pilot_pretrain_images']} pretraining images). "
            + ("It matches the profile." if match else f"The profile uses {profile_cfg} instead: check the profile."))
    return {"chosen": best["config"], "matches_profile": bool(match), "text": text}


def read_train_log(run_dir: str | Path):
    """The per-step lines of a ``train_ae`` run's ``log.jsonl`` as a DataFrame (validation / event lines dropped;
    later lines for a step, written after a resume, replace earlier ones)."""
    import json

    import pandas as pd

    rows = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "event" not in r]
    df = pd.DataFrame(rows).drop_duplicates("step", keep="last").sort_values("step")
    for col in ("logits_real", "logits_fake", "d_weight", "nll"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df.reset_index(drop=True)


def expected_branch_fractions(P: dict) -> dict[str, float]:
    """Branch probabilities of Eq. 7 with the official low-resolution branch: ``eq`` = 1 − p_α,
    ``plain`` = p_α·(1 − p_prior_s), ``lowres`` = p_α·p_prior_s (p_α in the paper's meaning)."""
    pa, ps = float(P.get("p_alpha", 0.5)), float(P.get("p_prior_s", 0.25))
    return {"plain": pa * (1 - ps), "lowres": pa * ps, "eq": 1 - pa}


def final_samples(P: dict, data: Data, vae, seed: int, n: int, method: str = "dit", curve: dict | None = None,
                  sample_seed: int = 20_000) -> torch.Tensor:
    """``n`` images ``[n, C, H, W]`` in [-1, 1] from the last checkpoint (EMA weights) of the generator that
    :func:`generative_curve` trained for ``(vae, seed, method)`` (trained first if missing)."""
    from .train_gen import latest_checkpoint, load_gen_checkpoint, sample_from_checkpoint

    curve = curve or generative_curve(P, data, vae, seed, method)
    ck = load_gen_checkpoint(latest_checkpoint(curve["run_dir"]))
    sampler = P.get(f"{method}_sampler", "ddim" if method == "dit" else "heun")
    return sample_from_checkpoint(ck, vae, n, sampler=sampler, steps=int(P.get(f"{method}_sample_steps", 50)),
                                  generator=torch.Generator().manual_seed(sample_seed + seed),
                                  batch_size=int(P.get("gen_sample_batch", 250)), progress=P.get("progress", True))


def curve_stats(curves: list[dict]) -> dict:
    """Mean, min and max over seeds of gFID curves evaluated at the same steps: ``{"steps", "mean", "lo", "hi"}``."""
    import numpy as np

    steps = curves[0]["steps"]
    if any(c["steps"] != steps for c in curves):
        raise ValueError("curves were evaluated at different steps; use the same gen_eval_steps for every seed")
    a = np.array([c["fid"] for c in curves], dtype=float)
    return {"steps": steps, "mean": a.mean(0).tolist(), "lo": a.min(0).tolist(), "hi": a.max(0).tolist()}


def ablation_variants(P: dict) -> dict[str, tuple[str, dict, Any, str]]:
    """The fine-tuning variants of Tables 5, 7 and 8: ``{label: (objective, loss overrides, paper key, table)}``.
    ``P["ablations"]`` (a list of labels) restricts them."""
    v = {
        "rotation+scale (default)": ("eq", {}, "rotation+scale", "Table 5"),
        "rotation": ("eq", {"family": "rotation"}, "rotation", "Table 5"),
        "scale": ("eq", {"family": "scale"}, "scale", "Table 5"),
        "rotation+anisotropic": ("eq", {"family": "rotation+anisotropic"}, "rotation+anisotropic", "Table 5"),
        "explicit (λ=0.1)": ("explicit", {}, "explicit", "Table 7"),
        "p_alpha=0.3": ("eq", {"p_alpha": 0.3}, 0.3, "Table 8"),
        "p_alpha=0.7": ("eq", {"p_alpha": 0.7}, 0.7, "Table 8"),
    }
    keep = P.get("ablations")
    return {k: val for k, val in v.items() if keep is None or k in keep}


def reference_stats(P: dict, data: Data, extractor, n: int | None = None):
    """FID reference statistics of the first ``n`` (default ``gen_fid_n``) test images for ``extractor``, cached
    under a key of the data, the extractor's weights and n (:func:`eqvae_lib.metrics.fid.reference_statistics`)."""
    from .metrics import fid as fidm

    return fidm.reference_statistics(Data.subset(data.test_x, n or int(P["gen_fid_n"])), extractor,
                                     verbose=P.get("progress", True))


# ---------------------------------------------------------------------------------------------- discrete path
def base_vq(P: dict, data: Data):
    """The base VQ autoencoder (stand-in for the paper's VQ-GAN): ``vq_arch`` with ``vq_codebook_size`` codes,
    pretrained with the plain objective (VQ loss in place of KL) and dead-code restarts until the validation plateau
    (same rule and caps as the KL base, ``vq_pretrain_*`` overriding ``pretrain_*``). Returns ``(vq, info)``."""
    from .train_ae import AETrainConfig, load_summary
    from .vq import pretrain_vq

    g = lambda k: P.get(f"vq_{k}", P[k])  # noqa: E731
    params = dict(dataset=P["dataset"], image_size=P["image_size"], train_id=data.train_id, test_id=data.test_id,
                  arch=P["vq_arch"], codebook_size=P["vq_codebook_size"], perceptual=P["perceptual"],
                  disc_start=g("pretrain_disc_start"), batch=g("pretrain_batch"), lr=g("pretrain_lr"),
                  max_minutes=g("pretrain_max_minutes"), max_epochs=g("pretrain_max_epochs"),
                  val_every=g("pretrain_val_every"), window=g("pretrain_plateau_window"),
                  threshold=g("pretrain_plateau_threshold"), seed=P["seed"])
    run_dir = cache_dir("vq-base", params)
    if not (run_dir / "summary.json").exists():
        cfg = AETrainConfig(loss=loss_config(P, "plain", disc_start=g("pretrain_disc_start")),
                            batch_size=g("pretrain_batch"), lr=g("pretrain_lr"), max_epochs=g("pretrain_max_epochs"),
                            max_time_s=60 * g("pretrain_max_minutes"), plateau=True,
                            val_every=g("pretrain_val_every"), val_size=P.get("val_size", 256),
                            plateau_window=g("pretrain_plateau_window"),
                            plateau_threshold=g("pretrain_plateau_threshold"), seed=P["seed"], export_ldm=False,
                            checkpoint_every_steps=P.get("checkpoint_every_steps", 500),
                            progress=P.get("progress", True))
        pretrain_vq(data.train_x, cfg, run_dir, arch=P["vq_arch"], val=data.test_x, in_channels=data.channels,
                    codebook_size=P["vq_codebook_size"], sample_size=P["image_size"])
    vq = ae.load_autoencoder(run_dir / "model").eval()
    return vq, {"run_dir": run_dir, "summary": load_summary(run_dir), "hash": ae.weights_hash(vq)}


def finetuned_vq(P: dict, data: Data, objective: str, base) -> tuple[Any, dict]:
    """EQ-VAE (τ on the continuous latent before quantisation) or plain fine-tuning of the base VQ autoencoder for
    ``vq_finetune_epochs`` epochs over the first ``finetune_subset`` training images (same budget for both)."""
    from .train_ae import AETrainConfig, load_summary
    from .vq import finetune_vq

    vq0, info0 = base
    loss = loss_config(P, objective, disc_start=0)
    n_sub = min(int(P["finetune_subset"]), len(data.train_x))
    epochs = int(P.get("vq_finetune_epochs", P["finetune_epochs"]))
    params = dict(base=info0["hash"], loss=dataclasses.asdict(loss), subset=n_sub, train_id=data.train_id,
                  batch=P["finetune_batch"], lr=P.get("finetune_lr"), epochs=epochs, seed=P["seed"])
    run_dir = cache_dir(f"vq-{objective}", params)
    if not (run_dir / "summary.json").exists():
        cfg = AETrainConfig(loss=loss, batch_size=P["finetune_batch"], lr=P.get("finetune_lr"), max_epochs=epochs,
                            seed=P["seed"], val_every=0, val_size=P.get("val_size", 256), export_ldm=False,
                            checkpoint_every_steps=P.get("checkpoint_every_steps", 500),
                            progress=P.get("progress", True))
        finetune_vq(ae.load_autoencoder(info0["run_dir"] / "model"), Data.subset(data.train_x, n_sub), cfg,
                    run_dir, val=data.test_x)
    vq = ae.load_autoencoder(run_dir / "model").eval()
    return vq, {"run_dir": run_dir, "summary": load_summary(run_dir), "hash": ae.weights_hash(vq)}


def maskgit_curve(P: dict, data: Data, vq, seed: int, extractor=None, reference=None) -> dict:
    """Train a MaskGIT (``maskgit_model``) on ``vq``'s tokens of the training images for ``maskgit_epochs`` epochs and
    measure gFID/KID (``gen_fid_n`` samples, ``maskgit_decode_steps`` parallel-decoding steps) after every epoch in
    ``maskgit_eval_epochs``. Cached by the tokenizer's weights hash, the settings and the seed.

    Returns ``{"epochs": [...], "fid": [...], "kid": [...], "run_dir", "metric"}``.
    """
    import json

    from .maskgit import (MaskGITTrainConfig, build_maskgit, build_token_cache, decode_to_images, load_token_cache,
                          sample, train_maskgit)
    from .metrics import fid as fidm

    extractor = extractor or feature_extractor(P, data)
    reference = reference or reference_stats(P, data, extractor)
    vq_hash = ae.weights_hash(vq)
    tok_path = cache_dir("tokens", dict(vq=vq_hash, data=data.train_id)) / "tokens.safetensors"
    labels = data.train_y if data.num_classes else None
    cache = (load_token_cache(tok_path, vq=vq) if tok_path.exists() else
             build_token_cache(vq, data.train_x, labels=labels, path=tok_path))
    n = len(cache.tokens)
    steps_per_epoch = max(1, n // int(P["maskgit_batch"]))
    eval_steps = tuple(int(e * steps_per_epoch) for e in P["maskgit_eval_epochs"])
    cfg = MaskGITTrainConfig(steps=int(P["maskgit_epochs"] * steps_per_epoch), batch_size=int(P["maskgit_batch"]),
                             lr=float(P["maskgit_lr"]), ema_decay=P.get("maskgit_ema"), checkpoint_steps=eval_steps,
                             eval_steps=eval_steps, seed=seed)
    key = dict(vq=vq_hash, tokens=tok_path.parent.name, cfg=dataclasses.asdict(cfg), model=P["maskgit_model"],
               n_fid=int(P["gen_fid_n"]), decode_steps=P["maskgit_decode_steps"], extractor=extractor.weights_hash,
               ref=reference.key)
    run_dir = cache_dir("maskgit", key)
    done = run_dir / "curve.json"
    if not done.exists():
        grid = tuple(cache.tokens.shape[1:])
        torch.manual_seed(seed)
        model = build_maskgit(P["maskgit_model"], codebook_size=cache.codebook_size, grid=grid,
                              num_classes=data.num_classes or 0, tokenizer_hash=vq_hash)
        ckpts = sorted(run_dir.glob("step_*.pt"))
        done_evals = {}
        if ckpts:  # resume: keep the evaluations already logged
            for line in (run_dir / "log.jsonl").read_text().splitlines():
                r = json.loads(line)
                if r.get("kind") == "eval" and r["step"] <= int(ckpts[-1].stem.split("_")[1]):
                    done_evals[r["step"]] = r

        def eval_fn(step: int, m) -> dict:
            g = torch.Generator().manual_seed(30_000 + seed)
            y = (torch.randint(0, data.num_classes, (int(P["gen_fid_n"]),), generator=g) if data.num_classes
                 else None)
            toks = sample(m, n=int(P["gen_fid_n"]), labels=y, steps=int(P["maskgit_decode_steps"]), generator=g)
            r = fidm.compute_fid(decode_to_images(vq, toks, vq_hash), reference, extractor, kid=True, verbose=False)
            return {"fid": r["fid"], "kid": r["kid_mean"], "metric": r["metric"]}

        train_maskgit(model, cache.tokens, cache.labels if data.num_classes else None, cfg, out_dir=run_dir,
                      eval_fn=eval_fn, resume=ckpts[-1] if ckpts else None, progress=P.get("progress", True))
        evals = {**done_evals}
        for line in (run_dir / "log.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == "eval":
                evals[r["step"]] = r
        curve = {"epochs": [evals[s]["step"] / steps_per_epoch for s in sorted(evals)],
                 "fid": [evals[s]["fid"] for s in sorted(evals)], "kid": [evals[s]["kid"] for s in sorted(evals)],
                 "metric": extractor.metric_name, "run_dir": str(run_dir)}
        atomic_write_json(done, curve)
    return json.loads(done.read_text())


def matched_rfid_autoencoder(P: dict, data: Data, extractor, base=None) -> dict:
    """EQ-VAE fine-tuned further, one epoch at a time and at most ``matched_rfid_max_extra_epochs`` epochs beyond
    ``finetune_epochs``, until its rFID is no worse than the plain control's: the "matched reconstruction"
    comparison that removes decoder quality as a confound (FEASIBILITY.md point 8).

    Returns ``{"vae", "info", "rfid", "target_rfid", "extra_epochs", "matched"}``.
    """
    base = base or base_autoencoder(P, data)
    plain = finetuned_autoencoders(P, "plain", data, base)[-1][0]
    target = autoencoder_metrics(P, data, plain, extractor, which=("reconstruction",))["reconstruction"]["rfid"]
    n0, cap = int(P["finetune_epochs"]), int(P.get("matched_rfid_max_extra_epochs", 0))
    for extra in range(cap + 1):
        vae, info = finetuned_autoencoders(P, "eq", data, base, epochs=n0 + extra)[-1]
        r = autoencoder_metrics(P, data, vae, extractor, which=("reconstruction",))["reconstruction"]["rfid"]
        if r <= target:
            break
    return {"vae": vae, "info": info, "rfid": r, "target_rfid": target, "extra_epochs": extra,
            "matched": r <= target}


def metric_inputs(result: dict) -> str:
    """One line saying what an :func:`autoencoder_metrics` result (or one part of it) measured — latent space and
    normalisation, posterior, autoencoder, images, rFID reference — for ``RunRecord.add_input`` (issue #16)."""
    from .metrics.reconstruction import inputs_summary

    return inputs_summary(result)
