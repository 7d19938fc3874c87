"""Get-or-build artefacts for the notebooks: every notebook runs standalone, in any order.

Each function below returns an artefact (dataset tensors, the base autoencoder, fine-tuned autoencoders, caches,
trained generators, metric results) and builds it only when it is not already cached. Cache folders live under
``data/cache/<kind>/<key>`` where ``key`` hashes every parameter that determines the artefact plus the identities
(hashes) of its inputs, so a changed parameter or input builds a new artefact and an unchanged one is reused —
also across profiles and notebooks. Training runs resume from their last checkpoint when interrupted.

``P`` is the dict of notebook parameters (a profile, see ``profiles/*.yaml``, plus overrides).
"""

from __future__ import annotations

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
    """The profile's images as tensors ``[N, C, H, W]`` in [-1, 1] with labels ``[N]`` (int64; for photo crops the
    source photo — not a class), plus their identities (hashes of the tensors) for records and cache keys."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    name: str
    image_size: int
    num_classes: int | None
    train_id: str
    test_id: str

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]


def load_data(P: dict) -> Data:
    """Load the profile's dataset (``dataset``, ``image_size``, ``channels``, ``n_train``, ``n_test``, ``seed``).

    ``imagefolder`` (``paper`` profile) needs ``data_root_train`` and ``data_root_test``; its images are loaded into
    memory up to ``n_train`` / ``n_test`` (the paper profile's training streams from disk in ``train_ae``).
    """
    name, size = P["dataset"], int(P["image_size"])
    kw = dict(size=size, seed=int(P.get("seed", 0)))
    if name == "fashion-mnist":
        kw["channels"] = int(P.get("channels", 1))
    tensors = {}
    for split, n_key, root_key in (("train", "n_train", "data_root_train"), ("test", "n_test", "data_root_test")):
        n = P.get(n_key)
        ds = get_dataset(name, split, n=n, root=P.get(root_key), **kw)
        if hasattr(ds, "tensors"):
            x, y = ds.tensors()
        else:
            idx = range(min(len(ds), n or len(ds)))
            x = torch.stack([ds[i][0] for i in idx])
            y = torch.tensor([ds[i][1] for i in idx])
        tensors[split] = (x, y)
    num_classes = 10 if name == "fashion-mnist" else None
    return Data(*tensors["train"], *tensors["test"], name=name, image_size=size, num_classes=num_classes,
                train_id=sha256_tensor(tensors["train"][0])[:16], test_id=sha256_tensor(tensors["test"][0])[:16])


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
                                measure_norm=True, checkpoint_every_steps=P.get("checkpoint_every_steps", 500),
                                progress=P.get("progress", True))
            vae = ae.load_autoencoder(base_info["run_dir"] / "model") if base_info["run_dir"] else base_vae
            finetune(vae, data.train_x[:n_sub], cfg, run_dir, val=data.test_x)
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
    x = data.test_x[:n]
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
            z = idm.latent_points(data.test_x[:m], encoder(vae))
            results[part] = idm.intrinsic_dimension(z, n=m, seed=P["seed"], n_bootstrap=int(P["id_bootstrap"]))
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
    labels = data.train_y if data.num_classes else torch.full_like(data.train_y, -1)
    return build_latent_cache(vae, data.train_x, cache_dir("latents", key), shift=shift, scale=scale, mode=mode,
                              labels=labels, data_id=f"{data.name}/train/{data.train_id}", seed=P["seed"],
                              progress=P.get("progress", True))


def _gen_config(P: dict, method: str, seed: int):
    from .train_gen import TrainGenConfig

    steps = int(P["gen_steps"])
    return TrainGenConfig(model=P["gen_model"], method=method, learn_sigma=bool(P.get("learn_sigma", False)),
                          steps=steps, batch_size=int(P["gen_batch"]), lr=float(P.get("gen_lr", 1e-4)),
                          ema_decay=float(P["gen_ema"]), ckpt_steps=[int(s) for s in P["gen_eval_steps"]],
                          log_every=int(P.get("gen_log_every", 100)), seed=seed,
                          num_classes=None if data_labelled(P) else 0, progress=P.get("progress", True))


def data_labelled(P: dict) -> bool:
    return P["dataset"] == "fashion-mnist"


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
    reference = reference or fidm.reference_statistics(data.test_x[:n_fid], extractor)
    cache = latent_cache(P, data, vae)
    cfg = _gen_config(P, method, seed)
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


def steps_to_reach(steps: list[int], values: list[float], target: float) -> int | None:
    """First evaluated step at which ``values`` (e.g. a gFID curve) is ≤ ``target``, linearly interpolated between
    checkpoints; ``None`` when the curve never gets there within the budget."""
    prev = None
    for s, v in zip(steps, values):
        if v <= target:
            if prev is None:
                return s
            s0, v0 = prev
            return int(round(s0 + (s - s0) * (v0 - target) / (v0 - v))) if v0 != v else s
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
    floor) whose projected pretraining time fits ``pretrain_max_minutes``; choose the largest latent grid, then the
    fastest. Returns ``{"chosen", "matches_profile", "text"}``."""
    ok = df[(df["n_scales_floor4"] >= 4) & (df["pretrain_min_projected"] <= P["pretrain_max_minutes"])]
    profile_cfg = f"{P['dataset']} {P['image_size']}px {P['ae_arch']}"
    if ok.empty:
        return {"chosen": None, "matches_profile": False,
                "text": "No candidate fits the pretraining budget on this machine: lower pilot_pretrain_images or "
                        "raise pretrain_max_minutes."}
    best = ok.sort_values(["latent_side", "img_per_s"], ascending=[False, False]).iloc[0]
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
