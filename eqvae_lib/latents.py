"""Latent caches: a dataset encoded once per autoencoder, with the normalisation and the AE's identity stored beside.

Two modes (EQ-VAE arXiv 2502.09509 v3, Sec. 5.1 / App. B; SPEC §3 and §5):

* ``"official"`` — as the EQ-VAE / DiT feature-extraction scripts: one random horizontal flip per image (p = 0.5),
  then ONE posterior sample z = μ + σ ε, stored raw. Training always sees that same sample.
* ``"repa"`` — as REPA / REPA-E: the posterior mean μ and std σ are stored; a fresh z = μ + σ ε is drawn at training
  time (``LatentCache.get(idx, generator=...)``). No flip by default (``hflip=True`` adds the random flip).

Stored latents are RAW (unnormalised). The normalisation z_n = (z - shift) · scale (per channel; SD-VAE: shift 0,
scale 0.18215; the kit's own AEs: measured mean and 1/std) is stored with the cache, together with the AE's weights
hash (``io.state_dict_hash``). ``decode_latents`` refuses an AE whose hash differs, and always inverts the stored
normalisation, so samples are never decoded by the wrong AE or with a missing inverse normalisation (the most common
user bug in peer trackers, SPEC §5).

Files in the cache folder (e.g. ``data/cache/latents/<key>/``, key from ``latent_cache_key``):
``latents.safetensors`` (tensors ``latents`` or ``mean``/``std``, ``labels`` int64 (-1 = unlabelled), ``flipped``
uint8, ``shift``, ``scale``; header metadata ``mode``, ``ae_hash``, ``data_id``, ...) and ``meta.json`` (the same
metadata, human readable, plus git commit and timing). Both are written atomically.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data import iter_batches
from .io import atomic_path, atomic_write_json, git_commit, hash_obj, sha256_tensor, state_dict_hash

FORMAT = "eqvae-latents-v1"
MODES = ("official", "repa")
CACHE_FILE = "latents.safetensors"


class LatentCacheMismatchError(ValueError):
    """A latent cache (or normalisation) does not belong to the autoencoder / normalisation it is used with."""


def _channel_vector(v: Any, channels: int | None, name: str) -> torch.Tensor:
    """float, sequence or tensor ([c] or [1, c, 1, 1]) -> float32 [c] on CPU; checks the channel count."""
    t = torch.as_tensor(v, dtype=torch.float32).detach().cpu().flatten()
    if channels is not None:
        if t.numel() == 1:
            t = t.expand(channels).clone()
        if t.numel() != channels:
            raise ValueError(f"normalisation {name} has {t.numel()} entries but the latents have {channels} channels "
                             "(wrong normalisation for this AE?): pass one value per latent channel")
    if not torch.isfinite(t).all():
        raise ValueError(f"normalisation {name} has non-finite values: {t.tolist()}")
    return t


@dataclass
class LatentNorm:
    """Per-channel latent normalisation z_n = (z - shift) · scale, tied to one autoencoder (its weights hash): the
    kit's one latent normalisation (``autoencoders.latent_norm(vae)`` reads an AE's from its config; latent caches
    and generator checkpoints store it).

    Attributes:
        shift, scale: float32 ``[c]`` (scale must be non-zero).
        ae_hash: ``io.state_dict_hash`` of the AE the latents come from (``"none"`` for synthetic latents).
    """
    shift: torch.Tensor
    scale: torch.Tensor
    ae_hash: str

    def __post_init__(self):
        self.shift = _channel_vector(self.shift, None, "shift")
        self.scale = _channel_vector(self.scale, self.shift.numel(), "scale")
        self.shift = _channel_vector(self.shift, self.scale.numel(), "shift")
        if (self.scale == 0).any():
            raise ValueError("normalisation scale must be non-zero in every channel")

    @property
    def channels(self) -> int:
        return self.shift.numel()

    def _check_channels(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise ValueError(f"latents must be [B, {self.channels}, h, w] for this normalisation, got {tuple(z.shape)}")

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw z ``[B, c, h, w]`` -> z_n = (z - shift) · scale."""
        self._check_channels(z)
        return (z - self.shift.to(z).view(1, -1, 1, 1)) * self.scale.to(z).view(1, -1, 1, 1)

    def denormalize(self, z_n: torch.Tensor) -> torch.Tensor:
        """z_n ``[B, c, h, w]`` -> raw z = z_n / scale + shift (the inverse of ``normalize``)."""
        self._check_channels(z_n)
        return z_n / self.scale.to(z_n).view(1, -1, 1, 1) + self.shift.to(z_n).view(1, -1, 1, 1)

    def check_ae(self, vae: torch.nn.Module | str) -> None:
        """Raise ``LatentCacheMismatchError`` unless ``vae`` (a module or its hash) is the AE of these latents."""
        h = vae if isinstance(vae, str) else state_dict_hash(vae)
        if h != self.ae_hash:
            raise LatentCacheMismatchError(
                f"autoencoder weights hash {h} differs from the hash {self.ae_hash} stored with these latents: they "
                "were encoded by another AE (or the AE changed since). Decode with the AE that built the cache, or "
                "rebuild the latent cache (build_latent_cache) and retrain the generative model.")

    def check_matches(self, shift: Any = None, scale: Any = None) -> None:
        """Raise ``LatentCacheMismatchError`` if ``shift`` / ``scale`` (when given) differ from the stored ones."""
        for name, want, have in (("shift", shift, self.shift), ("scale", scale, self.scale)):
            if want is None:
                continue
            w = _channel_vector(want, self.channels, name)
            if not torch.allclose(w, have, rtol=1e-6, atol=1e-7):
                raise LatentCacheMismatchError(
                    f"latent normalisation {name} {w.tolist()} differs from the stored {name} {have.tolist()}: the "
                    "cache (or model) was made with another normalisation. Rebuild the cache with the current one.")

    def __iter__(self):
        """Unpacks as ``shift, scale = norm`` (float32 ``[c]`` each), for records and cache keys."""
        return iter((self.shift, self.scale))

    def to_dict(self) -> dict:
        """JSON/torch-safe dict (lists and a string): for checkpoints and result records."""
        return {"shift": self.shift.tolist(), "scale": self.scale.tolist(), "ae_hash": self.ae_hash}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentNorm":
        return cls(torch.tensor(d["shift"]), torch.tensor(d["scale"]), str(d["ae_hash"]))

    def __eq__(self, other) -> bool:
        return (isinstance(other, LatentNorm) and self.ae_hash == other.ae_hash
                and torch.equal(self.shift, other.shift) and torch.equal(self.scale, other.scale))


@dataclass
class LatentCache:
    """Encoded dataset in memory (CPU tensors).

    Attributes:
        mode: ``"official"`` (``latents`` = one posterior sample per image) or ``"repa"`` (``latents`` = posterior
            means, ``std`` = posterior stds, sampled at training time).
        latents: raw float32 ``[N, c, h, w]``.
        std: raw posterior std ``[N, c, h, w]`` (repa) or None.
        labels: int64 ``[N]``; -1 where the data had no labels.
        norm: the ``LatentNorm`` (shift, scale, AE hash).
        meta: metadata dict (mode, data_id, seed, hflip, n, ...).
        folder: where it is stored (None for in-memory caches).
        flipped: uint8 ``[N]``, 1 where the image was flipped before encoding (None if unknown).
    """
    mode: str
    latents: torch.Tensor
    std: torch.Tensor | None
    labels: torch.Tensor
    norm: LatentNorm
    meta: dict = field(default_factory=dict)
    folder: Path | None = None
    flipped: torch.Tensor | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"latent cache mode must be one of {MODES}, got {self.mode!r}")
        if self.latents.ndim != 4:
            raise ValueError(f"latents must be [N, c, h, w], got {tuple(self.latents.shape)}")
        if (self.mode == "repa") != (self.std is not None):
            raise ValueError("mode 'repa' needs std (posterior stds); mode 'official' must not have one")
        if self.labels.shape != (len(self.latents),):
            raise ValueError(f"labels must be [N={len(self.latents)}], got {tuple(self.labels.shape)}")
        self.norm._check_channels(self.latents[:1])

    @classmethod
    def from_tensors(cls, latents: torch.Tensor, labels: torch.Tensor | None, norm: LatentNorm,
                     std: torch.Tensor | None = None, meta: dict | None = None) -> "LatentCache":
        """An in-memory cache from raw latents (``std`` given -> mode "repa"); labels None -> all -1."""
        labels = torch.full((len(latents),), -1, dtype=torch.long) if labels is None else labels.long()
        return cls("repa" if std is not None else "official", latents.float(), None if std is None else std.float(),
                   labels, norm, dict(meta or {}))

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of one latent."""
        return tuple(self.latents.shape[1:])

    @property
    def labelled(self) -> bool:
        """True when every item has a label >= 0."""
        return bool((self.labels >= 0).all()) if len(self.labels) else False

    @property
    def num_classes(self) -> int:
        """1 + the largest label (0 when unlabelled)."""
        return int(self.labels.max()) + 1 if self.labelled else 0

    def get(self, idx: torch.Tensor, eps: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised latents z_n ``[B, c, h, w]`` and labels ``[B]`` for indices ``idx [B]`` (CPU tensors).

        In ``repa`` mode z = μ + σ ε with ``eps`` (``[B, c, h, w]``) if given, else drawn from ``generator``.
        """
        z = self.latents[idx]
        if self.mode == "repa":
            if eps is None:
                eps = torch.randn(z.shape, generator=generator)
            z = z + self.std[idx] * eps.to(z)
        return self.norm.normalize(z), self.labels[idx]

    def normalized(self) -> torch.Tensor:
        """All latents normalised (repa: the posterior means), ``[N, c, h, w]`` — e.g. for statistics."""
        return self.norm.normalize(self.latents)


def latent_cache_key(ae_hash: str, mode: str, data_id: str, seed: int = 0, hflip: bool | None = None) -> str:
    """Folder name for a cache: ``"<ae_hash>-<mode>-<8 hex of (data_id, seed, hflip)>"``; put it under
    ``DATA_DIR / "cache" / "latents"``. A changed AE gets a new key, so stale latents are never picked up."""
    return f"{ae_hash}-{mode}-{hash_obj([data_id, int(seed), hflip], length=8)}"


def _data_fingerprint(data) -> str:
    if isinstance(data, torch.Tensor):
        return "tensor:" + sha256_tensor(data)[:16]
    n = len(data)
    probe = [data[i][0] for i in sorted({0, n // 2, n - 1})] if n else []
    return f"{type(data).__name__}(n={n}):" + hash_obj([sha256_tensor(torch.as_tensor(p)) for p in probe])


@torch.no_grad()
def encode_dataset(vae, data, *, mode: str = "official", labels: torch.Tensor | None = None, batch_size: int = 64,
                   seed: int = 0, hflip: bool | None = None, num_workers: int = 0, progress: bool = True) -> dict:
    """Encode images with ``vae.encode(x).latent_dist`` (a diffusers ``AutoencoderKL`` or the same API).

    Args:
        data: image tensor ``[N, C, H, W]`` in [-1, 1] (with optional ``labels [N]``) or a Dataset of ``(x, label)``.
        mode: ``"official"`` (flip + one posterior sample) or ``"repa"`` (mean and std).
        seed: seeds the flips and the posterior noise (two CPU generators: the flips are the same in both modes, and
            results agree on CPU and GPU up to float error).
        hflip: flip each image with p = 0.5 before encoding (default: True for official, False for repa).

    Returns: dict of CPU tensors ``latents`` (official: sample; repa: mean) ``[N, c, h, w]``, ``std`` (repa),
    ``labels [N]`` (-1 = none), ``flipped`` uint8 ``[N]``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    hflip = (mode == "official") if hflip is None else hflip
    dev = next(vae.parameters()).device
    g_flip = torch.Generator().manual_seed(2 * seed)  # flips depend on the seed only, not on the mode
    g_noise = torch.Generator().manual_seed(2 * seed + 1)
    was_training = vae.training
    vae.eval()
    out = {"latents": [], "std": [], "labels": [], "flipped": []}
    n = len(data)
    bar = tqdm(total=n, desc=f"encode ({mode})", disable=not progress, unit="img")
    for x, y in iter_batches(data, batch_size, with_labels=True, labels=labels, num_workers=num_workers):
        x = x.float()
        flip = (torch.rand(len(x), generator=g_flip) < 0.5) if hflip else torch.zeros(len(x), dtype=torch.bool)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        dist = vae.encode(x.to(dev)).latent_dist
        mean, std = dist.mean.float().cpu(), dist.std.float().cpu()
        if mode == "official":
            out["latents"].append(mean + std * torch.randn(mean.shape, generator=g_noise))
        else:
            out["latents"].append(mean)
            out["std"].append(std)
        out["labels"].append(y)
        out["flipped"].append(flip.to(torch.uint8))
        bar.update(len(x))
    bar.close()
    vae.train(was_training)
    if not out["latents"]:
        raise ValueError("cannot encode an empty dataset")
    res = {k: torch.cat(v) for k, v in out.items() if v}
    res["std"] = res.get("std")
    return res


def build_latent_cache(vae, data, folder: str | Path, *, shift: Any, scale: Any, mode: str = "official",
                       labels: torch.Tensor | None = None, data_id: str | None = None, batch_size: int = 64,
                       seed: int = 0, hflip: bool | None = None, num_workers: int = 0, progress: bool = True,
                       rebuild: bool = False) -> LatentCache:
    """Encode ``data`` with ``vae`` into ``folder`` (or reuse a matching cache there) and return it.

    Args:
        vae: diffusers ``AutoencoderKL`` (``encode(x).latent_dist`` with ``.mean``, ``.std``).
        data: image tensor ``[N, C, H, W]`` in [-1, 1] (+ ``labels``) or a Dataset of ``(x [C, H, W], label)``.
        folder: cache folder, typically ``DATA_DIR / "cache" / "latents" / latent_cache_key(...)``.
        shift, scale: the AE's latent normalisation (float or one value per latent channel), z_n = (z - shift)·scale.
        mode: ``"official"`` or ``"repa"`` (see module docstring).
        data_id: identity of the data (e.g. ``"fashion-mnist/train/32px"``); default: a fingerprint (full hash of an
            image tensor; for a Dataset its class, length and three probed items).
        seed, hflip: flips and posterior noise (see ``encode_dataset``).
        rebuild: re-encode even if a matching cache exists.

    A cache already in ``folder`` is reused only when mode, AE hash, shift, scale, data_id, seed and hflip all match;
    otherwise it is re-encoded (with a warning naming what changed) — a changed AE never reuses stale latents.

    Raises:
        ValueError: bad mode, or shift/scale with the wrong number of channels (before encoding when the AE has a
            diffusers ``config.latent_channels``, else after encoding).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    folder = Path(folder)
    hflip = (mode == "official") if hflip is None else bool(hflip)
    ae_hash = state_dict_hash(vae)
    data_id = data_id or _data_fingerprint(data)
    want = {"format": FORMAT, "mode": mode, "ae_hash": ae_hash, "data_id": data_id, "seed": str(seed),
            "hflip": str(hflip)}
    c_cfg = getattr(getattr(vae, "config", None), "latent_channels", None)  # diffusers AEs: fail before encoding
    shift_v, scale_v = _channel_vector(shift, c_cfg, "shift"), _channel_vector(scale, c_cfg, "scale")
    if (folder / CACHE_FILE).is_file() and not rebuild:
        try:
            cache = load_latent_cache(folder)
            diffs = [k for k, v in want.items() if str(cache.meta.get(k)) != v]
            try:
                cache.norm.check_matches(shift_v, scale_v)
            except (LatentCacheMismatchError, ValueError):
                diffs.append("shift/scale")
            if not diffs:
                return cache
            warnings.warn(f"latent cache {folder} is stale ({', '.join(diffs)} changed): re-encoding", stacklevel=2)
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"latent cache {folder} unreadable ({e}): re-encoding", stacklevel=2)
    t0 = time.time()
    enc = encode_dataset(vae, data, mode=mode, labels=labels, batch_size=batch_size, seed=seed, hflip=hflip,
                         num_workers=num_workers, progress=progress)
    c = enc["latents"].shape[1]
    norm = LatentNorm(_channel_vector(shift_v, c, "shift"), _channel_vector(scale_v, c, "scale"), ae_hash)
    meta = dict(want, n=str(len(enc["latents"])), latent_shape=json.dumps(list(enc["latents"].shape[1:])),
                labelled=str(bool((enc["labels"] >= 0).all())))
    cache = LatentCache(mode, enc["latents"], enc["std"], enc["labels"], norm, meta, folder, enc["flipped"])
    save_latent_cache(cache, folder, extra_meta={"encode_seconds": round(time.time() - t0, 2)})
    return cache


def save_latent_cache(cache: LatentCache, folder: str | Path, extra_meta: dict | None = None) -> Path:
    """Write ``cache`` to ``folder/latents.safetensors`` and ``folder/meta.json`` atomically (also for in-memory
    caches made with ``LatentCache.from_tensors``); sets ``cache.folder``. Returns the safetensors path."""
    folder = Path(folder)
    meta = {"format": FORMAT, "n": str(len(cache)), "latent_shape": json.dumps(list(cache.latent_shape)),
            "labelled": str(cache.labelled)}
    meta.update({k: str(v) for k, v in cache.meta.items()})
    meta.update({"mode": cache.mode, "ae_hash": cache.norm.ae_hash})
    flipped = cache.flipped if cache.flipped is not None else torch.zeros(len(cache), dtype=torch.uint8)
    tensors = {"latents" if cache.mode == "official" else "mean": cache.latents.contiguous(),
               "labels": cache.labels.contiguous(), "flipped": flipped.to(torch.uint8).contiguous(),
               "shift": cache.norm.shift.contiguous(), "scale": cache.norm.scale.contiguous()}
    if cache.mode == "repa":
        tensors["std"] = cache.std.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / CACHE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    atomic_write_json(folder / "meta.json", dict(meta, shift=cache.norm.shift.tolist(),
                                                  scale=cache.norm.scale.tolist(), git=git_commit(),
                                                  **(extra_meta or {})))
    cache.meta, cache.folder = meta, folder
    return folder / CACHE_FILE


def load_latent_cache(folder: str | Path, *, vae=None, ae_hash: str | None = None, shift: Any = None,
                      scale: Any = None, mode: str | None = None) -> LatentCache:
    """Load a cache written by ``build_latent_cache`` and check it against what the caller expects.

    Args:
        vae / ae_hash: the AE (or its hash) the caller means to use: must match the stored hash.
        shift, scale: the normalisation the caller expects: must match the stored one.
        mode: expected mode.

    Raises:
        FileNotFoundError: no cache in ``folder`` (says how to build one).
        LatentCacheMismatchError: wrong AE, wrong normalisation or wrong mode (the message says which).
    """
    path = Path(folder) / CACHE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no latent cache at {path}; build it with eqvae_lib.latents.build_latent_cache")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} latent cache (format {meta.get('format')!r}); rebuild it")
    t = load_file(str(path))
    norm = LatentNorm(t["shift"], t["scale"], meta["ae_hash"])
    cache_mode = meta["mode"]
    cache = LatentCache(cache_mode, t["latents"] if cache_mode == "official" else t["mean"], t.get("std"),
                        t["labels"], norm, meta, Path(folder), t.get("flipped"))
    if mode is not None and mode != cache_mode:
        raise LatentCacheMismatchError(f"latent cache {folder} has mode {cache_mode!r}, expected {mode!r}")
    if vae is not None or ae_hash is not None:
        norm.check_ae(vae if vae is not None else ae_hash)
    norm.check_matches(shift, scale)
    return cache


@torch.no_grad()
def decode_latents(vae, z_n: torch.Tensor, norm: LatentNorm, *, batch_size: int = 64, check_ae: bool = True,
                   progress: bool = False) -> torch.Tensor:
    """Decode normalised latents to images: z = norm.denormalize(z_n), x = ``vae.decode(z).sample``.

    Args:
        vae: the AE whose weights hash equals ``norm.ae_hash`` (checked; ``check_ae=False`` skips the check, e.g.
            when the caller has just checked it).
        z_n: ``[N, c, h, w]`` normalised latents (any device).
        norm: the normalisation stored with the cache / generative checkpoint. It is required: there is no way to
            decode without inverting a normalisation.

    Returns: float32 images ``[N, C, H, W]`` clamped to [-1, 1], on CPU.

    Raises:
        LatentCacheMismatchError: ``vae`` is not the AE of these latents.
        ValueError: channel count of ``z_n`` differs from the normalisation's.
    """
    if not isinstance(norm, LatentNorm):
        raise TypeError(f"norm must be a LatentNorm (from the latent cache or checkpoint), got {type(norm).__name__}")
    if check_ae:
        norm.check_ae(vae)
    norm._check_channels(z_n)
    dev = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    outs = []
    for zb in tqdm(iter_batches(z_n, batch_size, dev), total=-(-len(z_n) // batch_size), desc="decode",
                   disable=not progress, leave=False):
        z = norm.denormalize(zb.float())
        outs.append(vae.decode(z).sample.float().clamp(-1, 1).cpu())
    vae.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


__all__: Sequence[str] = ("LatentNorm", "LatentCache", "LatentCacheMismatchError", "latent_cache_key",
                          "encode_dataset", "build_latent_cache", "save_latent_cache", "load_latent_cache",
                          "decode_latents")
