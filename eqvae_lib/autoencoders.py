"""Autoencoders of the kit: build, load, save, encode/decode, latent normalisation (diffusers models throughout).

Models
------
* KL autoencoders: ``diffusers.AutoencoderKL``. Named configurations (:data:`CONFIGS`):

  - ``"kl-f8"``: the exact SD-VAE kl-f8 architecture (LDM ``first_stage_models/kl-f8``; ``stabilityai/sd-vae-ft-ema``,
    ``zelaki/eq-vae``): 4 blocks (128, 256, 512, 512), 2 layers per block, mid-block attention, 4 latent channels,
    downsampling factor f = 8, ``scaling_factor`` 0.18215.
  - ``"small-f4"`` / ``"small-f8"``: the small stand-ins of the offline profiles (FEASIBILITY.md): block_out_channels
    (16, 32, 64) (plus 64 for f8), 16 norm groups, 1 layer per block, mid-block attention off, 1 input channel by
    default (``in_channels=3`` for RGB), 4 latent channels. ~200 img/s training at 32 px on 2 CPU cores.

  Any diffusers ``AutoencoderKL`` folder loads the same way (SDXL-VAE with 4 channels, SD3-VAE with 16 channels ...).
* Discrete autoencoders: ``diffusers.VQModel`` (built by ``eqvae_lib.vq``). :func:`encode` returns the continuous
  pre-quantisation latent ``vae.encode(x).latents``; :func:`decode` quantises it (``vae.decode(z)``). The EQ-VAE
  objective therefore transforms the latent BEFORE quantisation (SPEC §1, "Discrete AEs").

Latent normalisation
--------------------
``z_n = (z - shift) * scale`` per channel. :func:`latent_norm` reads it from the model's diffusers config with the
convention of diffusers' pipelines: if ``latents_mean``/``latents_std`` are set, ``shift = latents_mean`` and
``scale = scaling_factor / latents_std`` (the SDXL pipeline formula); otherwise ``shift = shift_factor or 0`` and
``scale = scaling_factor`` (SD-VAE: 0, 0.18215; SD3-VAE: 0.0609, 1.5305). The kit's own models store the per-channel
mean and std measured on training images (:func:`measure_latent_norm`, FEASIBILITY point 6) with
``scaling_factor = 1``, so ``z_n = (z - mean) / std``.

Files
-----
* diffusers format (a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors``): :func:`save_autoencoder`,
  :func:`load_autoencoder`.
* LDM format (a ``.ckpt`` / ``.safetensors`` with the original CompVis key names, e.g.
  ``vae-ft-ema-560000-ema-pruned.ckpt``): :func:`load_autoencoder` converts it through
  ``AutoencoderKL.from_single_file`` with a LOCAL ``original_config`` (:data:`KL_F8_LDM_YAML`, shipped here) so it never
  touches the network; :func:`export_ldm_checkpoint` writes one (round trip tested).

What a weight file cannot carry travels with it
-----------------------------------------------
An LDM file holds only tensors; the latent normalisation (``scaling_factor``, ``shift_factor``, the kit's per-channel
``latents_mean``/``latents_std``), ``sample_size`` and the channel counts are config. :func:`export_ldm_checkpoint`
stores the model's full diffusers config as JSON inside the file (``.safetensors``: the header metadata key
``eqvae_config``; ``.ckpt``: the string entry ``"eqvae_config"`` beside ``"state_dict"``, which LDM loaders ignore), and
:func:`load_autoencoder` rebuilds the model from it, so a file the kit wrote round-trips exactly (every normalisation
flavour: SD-v1 0.18215, SDXL 0.13025, SD3 shift + scale, the kit's per-channel mean/std). A foreign file without it
(e.g. the released ``vae-ft-ema-560000-ema-pruned.ckpt``) loads with the LDM config's defaults, which are named in a
one-line :class:`AssumedDefaultsWarning`; ``config_overrides={"scaling_factor": ..., "shift_factor": ...,
"latents_mean": [...], "latents_std": [...], "sample_size": ...}`` (CLI: ``--scaling-factor``, ``--shift-factor``,
``--original-config``) supplies the true values.

Refusals
--------
A file that is not a checkpoint, or a pickle holding Python objects (which ``torch.load(weights_only=True)`` refuses to
execute), raises :class:`CheckpointError` with one line saying which and what to do that is safe (convert it to
``.safetensors`` with its author's code). A path-like argument that does not exist is reported as a missing local path
before any attempt on the Hugging Face hub.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import yaml
from huggingface_hub import constants as hub_constants
from safetensors import safe_open
from safetensors.torch import save_file

from .data import iter_batches
from .io import apply_umask, atomic_path, atomic_torch_save, state_dict_hash
from .latents import LatentNorm

# diffusers is imported inside the functions that build, load or convert a model ("lazy: import cost"): its model
# classes take seconds to import, and `python -m eqvae_lib config check`, every --help and the losses/metrics on
# already-built models never need them.

#: Named configurations: diffusers ``AutoencoderKL`` config dicts. ``build_autoencoder(name, **overrides)``.
CONFIGS: dict[str, dict[str, Any]] = {
    "kl-f8": dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
        norm_num_groups=32, sample_size=256, scaling_factor=0.18215, mid_block_add_attention=True,
    ),
    "small-f4": dict(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, act_fn="silu",
        norm_num_groups=16, sample_size=32, scaling_factor=1.0, mid_block_add_attention=False,
    ),
    "small-f8": dict(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(16, 32, 64, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
        norm_num_groups=16, sample_size=64, scaling_factor=1.0, mid_block_add_attention=False,
    ),
}

#: The LDM (CompVis) config of kl-f8 as shipped with Stable Diffusion v1 (only the parts diffusers' converter reads:
#: ``model.params.scale_factor`` and ``first_stage_config.params.ddconfig``). Used as ``original_config`` of
#: ``AutoencoderKL.from_single_file`` so that loading an LDM checkpoint never fetches a config from the network.
KL_F8_LDM_YAML = """\
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    scale_factor: 0.18215
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [1, 2, 4, 4]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
"""

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: Key of the JSON diffusers config inside the kit's LDM exports (safetensors metadata / ``.ckpt`` dict entry).
CONFIG_KEY = "eqvae_config"
#: Config fields :func:`load_autoencoder`'s ``config_overrides`` may set (what an LDM file cannot carry).
OVERRIDABLE = ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "sample_size")


class CheckpointError(ValueError):
    """A file that cannot be loaded as a checkpoint: the one-line message says what the file is and what to do."""


class AssumedDefaultsWarning(UserWarning):
    """A foreign checkpoint lacked config the kit relies on; the one-line message names the defaults assumed."""
_LDM_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


def _unwrap(vae):
    """The bare diffusers model under DDP / torch.compile wrappers."""
    while hasattr(vae, "module"):
        vae = vae.module
    return getattr(vae, "_orig_mod", vae)


def is_vq(vae) -> bool:
    """True for a diffusers ``VQModel`` (discrete autoencoder), False for ``AutoencoderKL``."""
    from diffusers import VQModel  # lazy: import cost

    return isinstance(_unwrap(vae), VQModel)


# --------------------------------------------------------------------------------------------------------- build
def build_autoencoder(name: str, **overrides) -> "diffusers.AutoencoderKL":  # noqa: F821
    """A randomly initialised ``AutoencoderKL`` of a named configuration (:data:`CONFIGS`).

    Args:
        name: ``"kl-f8"`` (SD-VAE architecture), ``"small-f4"`` or ``"small-f8"``.
        **overrides: any ``AutoencoderKL`` config key, e.g. ``in_channels=3`` (sets ``out_channels`` too unless
            given), ``latent_channels=16``, ``block_out_channels=(32, 64, 128)`` (down/up block types follow its
            length, so f = 2^(len-1)), ``mid_block_add_attention=True``.

    Raises:
        ValueError: unknown name, or an unknown config key (naming it and the known keys).
    """
    from diffusers import AutoencoderKL  # lazy: import cost

    if name not in CONFIGS:
        raise ValueError(f"unknown autoencoder configuration {name!r}; choose one of {', '.join(CONFIGS)} "
                         "or load a diffusers folder with load_autoencoder(path)")
    cfg = dict(CONFIGS[name])
    known = set(cfg) | {"shift_factor", "latents_mean", "latents_std", "force_upcast", "use_quant_conv",
                        "use_post_quant_conv"}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown AutoencoderKL option(s) {bad}; known: {sorted(known)}")
    if "in_channels" in overrides and "out_channels" not in overrides:
        overrides["out_channels"] = overrides["in_channels"]
    cfg.update(overrides)
    n = len(cfg["block_out_channels"])
    cfg["down_block_types"] = ("DownEncoderBlock2D",) * n
    cfg["up_block_types"] = ("UpDecoderBlock2D",) * n
    if any(c % cfg["norm_num_groups"] for c in cfg["block_out_channels"]):
        raise ValueError(f"every block_out_channels entry {cfg['block_out_channels']} must be divisible by "
                         f"norm_num_groups={cfg['norm_num_groups']}")
    return AutoencoderKL(**cfg)


def downsample_factor(vae) -> int:
    """Spatial downsampling factor f (image side / latent side), e.g. 8 for kl-f8, 4 for small-f4."""
    return 2 ** (len(_unwrap(vae).config.block_out_channels) - 1)


def latent_channels(vae) -> int:
    """Number of latent channels c (4 for SD-VAE, 16 for SD3-VAE)."""
    cfg = _unwrap(vae).config
    return int(getattr(cfg, "vq_embed_dim", None) or cfg.latent_channels)


def weights_hash(vae, length: int = 16) -> str:
    """Identity of the model's weights (``eqvae_lib.io.state_dict_hash``): equal weights ⇔ equal hash."""
    return state_dict_hash(_unwrap(vae), length=length)


# --------------------------------------------------------------------------------------------------- encode/decode
def encode_posterior(vae, x: torch.Tensor):
    """KL models: the posterior q(z|x) (diffusers ``DiagonalGaussianDistribution``: ``.mean``, ``.std``,
    ``.sample(generator)``, ``.kl()`` with log-variance clamped to [-30, 20]). VQ models: the continuous
    pre-quantisation latent tensor ``[B, c, h, w]``.

    Args:
        x: images ``[B, C, H, W]`` in [-1, 1]; H and W multiples of f.
    """
    vae = _unwrap(vae)
    if is_vq(vae):
        return vae.encode(x).latents
    return vae.encode(x).latent_dist


def encode(vae, x: torch.Tensor, latent: str = "mean", generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode images to RAW (unnormalised) latents.

    Args:
        vae: ``AutoencoderKL`` or ``VQModel`` (or a DDP wrapper of one).
        x: ``[B, C, H, W]`` in [-1, 1].
        latent: ``"mean"`` (posterior mean; the deterministic choice for metrics) or ``"sample"`` (mean + std·ε, what
            the LDM/EQ-VAE training feeds the decoder and what DiT latent extraction stores). Ignored for VQ models
            (their continuous latent is deterministic).
        generator: RNG of ε for ``"sample"``.

    Returns:
        ``[B, c, H/f, W/f]`` raw latent (normalise with ``latent_norm(vae).normalize``).

    Raises:
        ValueError: for another ``latent`` value or a non-4-D input.
    """
    if latent not in ("mean", "sample"):
        raise ValueError(f"latent must be 'mean' or 'sample', got {latent!r}")
    if x.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
    post = encode_posterior(vae, x)
    if isinstance(post, torch.Tensor):
        return post
    return post.mean if latent == "mean" else post.sample(generator=generator)


def decode_with_loss(vae, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode a raw latent; returns ``(x [B, C, f·h, f·w] (unclamped, ~[-1, 1]), reg)``. For VQ models ``z`` is
    quantised first and ``reg`` is the VQ codebook + commitment loss of diffusers' ``VectorQuantizer`` (a scalar);
    for KL models ``reg`` is None (the KL term comes from the posterior)."""
    vae = _unwrap(vae)
    if is_vq(vae):
        out = vae.decode(z)
        reg = out.commit_loss
        return out.sample, (reg.mean() if reg is not None else None)
    return vae.decode(z).sample, None


def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """Decode a RAW latent ``[B, c, h, w]`` to images ``[B, C, f·h, f·w]`` (≈[-1, 1], not clamped). VQ: quantises
    first. Any latent size works (the decoder is fully convolutional), which EQ-VAE relies on."""
    return decode_with_loss(vae, z)[0]


def last_layer(vae) -> torch.nn.Parameter:
    """The decoder's final conv weight (LDM ``get_last_layer``), used by the GAN's adaptive weight."""
    return _unwrap(vae).decoder.conv_out.weight


# ----------------------------------------------------------------------------------------- latent normalisation
def latent_norm(vae, ae_hash: str | None = None) -> LatentNorm:
    """The model's latent normalisation ``z_n = (z - shift) * scale`` (per channel) as the kit's one normalisation
    object, :class:`eqvae_lib.latents.LatentNorm` (``.normalize(z)``, ``.denormalize(z_n)``; tied to the model's
    weights hash), read from the config.

    Rule (diffusers' convention): ``latents_mean``/``latents_std`` set → ``shift = latents_mean``,
    ``scale = scaling_factor / latents_std``; else ``shift = shift_factor or 0``, ``scale = scaling_factor``.

    Args:
        ae_hash: the model's :func:`weights_hash` when the caller has it already (skips hashing the weights again).

    Raises:
        ValueError: ``latents_mean``/``latents_std`` with another number of entries than latent channels.
    """
    cfg = _unwrap(vae).config
    c = latent_channels(vae)
    ae_hash = ae_hash if ae_hash is not None else weights_hash(vae)
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    sf = float(getattr(cfg, "scaling_factor", None) or 1.0)
    if mean is not None and std is not None:
        shift = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        scale = sf / torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if shift.numel() != c or scale.numel() != c:
            raise ValueError(f"latents_mean/latents_std have {shift.numel()}/{scale.numel()} entries, "
                             f"the model has {c} latent channels")
        return LatentNorm(shift, scale, ae_hash)
    shift = float(getattr(cfg, "shift_factor", None) or 0.0)
    return LatentNorm(torch.full((c,), shift), torch.full((c,), sf), ae_hash)


#: The kit's default latent for Δ, decoder-side metrics and TwoNN (see :func:`latent_description`).
DEFAULT_LATENT_SPACE = "raw"


def latent_description(vae, latent: str = "mean", space: str = DEFAULT_LATENT_SPACE) -> dict:
    """What a metric's latents are, for its record: the autoencoder, which latent, and whether normalised.

    Convention (documented default ``space="raw"``): Δ = ‖τ∘E(x) − E(τ∘x)‖² / ‖E(τ∘x)‖² is unchanged by one global
    scale factor but changed by a shift or a per-channel scale. The paper's Δ_R/Δ_S for SD-VAE and SDXL-VAE involve
    only a global factor (0.18215 / 0.13025; the official pipeline multiplies the posterior by it, SPEC §3), so raw
    and normalised latents give the same Δ and the paper's numbers are raw-latent Δ whichever the official code
    used. The paper does not say whether SD3-VAE's shift was applied; the kit measures the encoder output E(x)
    without shift or scale (raw) by default, which matches the paper wherever it is determined. For autoencoders
    with a shift (SD3-VAE) or per-channel mean/std (the kit's own models) raw and normalised Δ differ (~1.5–2.4× on
    the kit's models), so every record says which it used and the (shift, scale) in force.

    Args:
        latent: ``"mean"`` (posterior mean) or ``"sample"`` (one posterior sample); VQ models: the deterministic
            pre-quantisation latent.
        space: ``"raw"`` (E(x)) or ``"normalised"`` ((E(x) − shift)·scale, :func:`latent_norm`).

    Returns:
        ``{"latent_space", "posterior", "normalisation": {"shift": [c], "scale": [c], "from_config": {...}},
        "weights_hash", "latent_channels", "downsample_factor"}`` (JSON-ready).

    Raises:
        ValueError: for another ``latent`` or ``space``.
    """
    if latent not in ("mean", "sample"):
        raise ValueError(f"latent must be 'mean' or 'sample', got {latent!r}")
    if space not in ("raw", "normalised"):
        raise ValueError(f"space must be 'raw' or 'normalised', got {space!r}")
    model = _unwrap(vae)
    w_hash = weights_hash(model)
    norm = latent_norm(model, w_hash)
    shift, scale = norm.shift, norm.scale
    cfg = model.config
    return {"latent_space": space,
            "posterior": "deterministic pre-quantisation latent (VQ)" if is_vq(model) else f"posterior {latent}",
            "normalisation": {"shift": [round(float(v), 7) for v in shift], "scale": [round(float(v), 7) for v in scale],
                              "applied": space == "normalised",
                              "from_config": {k: getattr(cfg, k, None) for k in ("scaling_factor", "shift_factor",
                                                                                 "latents_mean", "latents_std")}},
            "weights_hash": w_hash, "latent_channels": latent_channels(model),
            "downsample_factor": downsample_factor(model)}


def make_encoder(vae, latent: str = "mean", space: str = DEFAULT_LATENT_SPACE,
                 generator: torch.Generator | None = None, device=None):
    """An ``encode_fn`` for :mod:`eqvae_lib.metrics`: images ``[B, C, H, W]`` in [-1, 1] → latents ``[B, c, h, w]``
    (raw, or normalised with ``space="normalised"``), without gradients. It carries ``.inputs`` =
    :func:`latent_description`, which the metric functions copy into their results."""
    desc = latent_description(vae, latent, space)
    norm = latent_norm(vae, desc["weights_hash"]) if space == "normalised" else None

    @torch.no_grad()
    def encode_fn(x: torch.Tensor) -> torch.Tensor:
        z = encode(vae, x if device is None else x.to(device), latent=latent, generator=generator)
        return norm.normalize(z) if norm is not None else z

    encode_fn.inputs = desc
    return encode_fn


@torch.no_grad()
def measure_latent_norm(vae, images, latent: str = "sample", batch_size: int = 256, store: bool = True,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Measure the per-channel mean and std of the latents of ``images`` and (``store=True``) write them into the
    model's config (``latents_mean``, ``latents_std``, ``scaling_factor = 1``, ``shift_factor = None``), so that
    :func:`latent_norm` and a saved/reloaded model give ``z_n = (z - mean) / std``.

    Args:
        images: a tensor ``[N, C, H, W]`` in [-1, 1] or a Dataset of ``(x, label)`` / ``x``.
        latent: ``"sample"`` (default: the latents a DiT is trained on include the posterior noise) or ``"mean"``.
        seed: seed of the posterior noise.

    Returns:
        ``(shift[c], scale[c])`` = ``(mean, 1 / std)`` as float32 CPU tensors.
    """
    model = _unwrap(vae)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    s1 = s2 = None
    n = 0
    for xb in iter_batches(images, batch_size):
        z = encode(model, xb.to(dev, torch.float32), latent=latent, generator=gen).double()
        b1, b2 = z.sum(dim=(0, 2, 3)), (z * z).sum(dim=(0, 2, 3))
        s1, s2 = (b1, b2) if s1 is None else (s1 + b1, s2 + b2)
        n += z.shape[0] * z.shape[2] * z.shape[3]
    if n == 0:
        raise ValueError("measure_latent_norm got no images")
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    model.train(was_training)
    mean, std = mean.float().cpu(), std.float().cpu()
    if store:
        model.register_to_config(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std],
                                 scaling_factor=1.0, shift_factor=None)
    return mean, 1.0 / std


# ------------------------------------------------------------------------------------------------------ save/load
def save_autoencoder(model, folder: str | os.PathLike) -> Path:
    """Save in diffusers format (``config.json`` + ``diffusion_pytorch_model.safetensors``) into ``folder``.

    Atomic at the folder level: written to a temporary sibling folder, then swapped in, so an interrupted save leaves
    either the old folder or the new one. The folder and its files get the modes the user's umask gives ordinary new
    folders/files (``eqvae_lib.io.apply_umask``; ``mkdtemp`` alone would leave them private). Returns the folder.
    """
    model = _unwrap(model)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        apply_umask(tmp)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


_DEPRECATED_ATTN = (("query.", "to_q."), ("key.", "to_k."), ("value.", "to_v."), ("proj_attn.", "to_out.0."))


def _rename_deprecated(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old diffusers attention names (``attentions.0.query`` ...) → current ones (as diffusers does on load)."""
    out = {}
    for k, v in state.items():
        if ".attentions." in k:
            for old, new in _DEPRECATED_ATTN:
                k = k.replace(f".{old}", f".{new}")
        out[k] = v
    return out


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise ``ValueError`` naming the FIRST tensor whose shape differs between ``state`` and ``model`` (in the
    model's parameter order), or the first missing / unexpected key."""
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in state:
            raise ValueError(f"{source}: tensor {name!r} (shape {tuple(t.shape)}) is missing; the file does not "
                             "match the model configuration")
        if tuple(state[name].shape) != tuple(t.shape):
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(state[name].shape)} but the configuration "
                             f"expects {tuple(t.shape)} (first mismatch; wrong config or wrong checkpoint?)")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ValueError(f"{source}: unexpected tensor {extra[0]!r} (and {len(extra) - 1} more) not in the model "
                         "configuration")


_SAFE_ADVICE = ("convert it to .safetensors with its author's code (e.g. safetensors.torch.save_file(state_dict, "
                "'vae.safetensors') where that code is trusted) and pass that file")


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """``(state_dict, kit config or None)`` of a ``.safetensors`` or PyTorch file, never executing pickled code.

    Raises:
        CheckpointError: one line: the file is not a checkpoint (not safetensors / zip / pickle, or damaged), or it
            holds pickled Python objects that ``weights_only`` loading refuses, with the safe way forward.
    """
    with path.open("rb") as fh:
        head = fh.read(8)
    cfg_text = None
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                cfg_text = (f.metadata() or {}).get(CONFIG_KEY)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for any bad header
            raise CheckpointError(f"{path}: not a safetensors checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                  "pass a diffusers folder or an LDM .ckpt/.safetensors file") from None
    else:
        is_zip = zipfile.is_zipfile(path)
        is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
        if not (is_zip or is_pickle):
            raise CheckpointError(f"{path}: not a checkpoint (neither a PyTorch zip/pickle file nor safetensors); "
                                  "pass a diffusers folder, an LDM .ckpt/.safetensors file or a hub id")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. torch's note on pickle protocols: the refusal below says it all
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            if "global" in msg.lower() or "unsupported operand" in msg.lower():
                raise CheckpointError(f"{path}: holds pickled Python objects that the kit will not execute (it loads "
                                      f"tensors only); {_SAFE_ADVICE}") from None
            raise CheckpointError(f"{path}: damaged or not a PyTorch checkpoint (its pickle stream cannot be read "
                                  "as tensors); re-export it, or " + _SAFE_ADVICE) from None
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{path}: damaged or not a PyTorch checkpoint ({type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0][:120]}); re-export it, or {_SAFE_ADVICE}") from None
        if isinstance(obj, dict) and isinstance(obj.get(CONFIG_KEY), str):
            cfg_text = obj[CONFIG_KEY]
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path}: not a state dict (a PyTorch file without a dict of tensors); pass an "
                                  "autoencoder checkpoint")
        state = obj
    cfg = None
    if cfg_text is not None:
        try:
            cfg = json.loads(cfg_text)
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: its {CONFIG_KEY!r} entry is not valid JSON (damaged file)") from None
    return state, cfg


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    return _read_checkpoint(path)[0]


def _model_class(name: str):
    from diffusers import AutoencoderKL, VQModel  # lazy: import cost

    classes = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}
    if name not in classes:
        raise ValueError(f"model class {name!r} is not supported; the kit loads AutoencoderKL and VQModel")
    return classes[name]


def _model_from_config(config: dict):
    """An uninitialised model of the config's ``_class_name`` carrying every normalisation field of the config."""
    cls = _model_class(config.get("_class_name", "AutoencoderKL"))
    model = cls.from_config(config)
    for key in ("latents_mean", "latents_std", "shift_factor"):  # keep them even where the class ignores them
        if config.get(key) is not None and getattr(model.config, key, None) is None:
            model.register_to_config(**{key: config[key]})
    return model


def _apply_overrides(model, overrides: dict | None, source: str) -> None:
    if not overrides:
        return
    bad = sorted(set(overrides) - set(OVERRIDABLE))
    if bad:
        raise ValueError(f"config_overrides: unknown key(s) {bad}; allowed: {', '.join(OVERRIDABLE)}")
    vals = {k: v for k, v in overrides.items() if v is not None}
    c = latent_channels(model)
    for k in ("latents_mean", "latents_std"):
        if k in vals:
            vals[k] = [float(v) for v in vals[k]]
            if len(vals[k]) != c:
                raise ValueError(f"{source}: {k} has {len(vals[k])} entries, the model has {c} latent channels")
    if ("latents_mean" in vals) != ("latents_std" in vals):
        raise ValueError("latents_mean and latents_std must be given together")
    for k in ("scaling_factor", "shift_factor"):
        if k in vals:
            vals[k] = float(vals[k])
    if "sample_size" in vals:
        vals["sample_size"] = int(vals["sample_size"])
    model.register_to_config(**vals)


def _load_folder(folder: Path):
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"  # a full pipeline folder
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a diffusers model folder")
    config = json.loads(cfg_path.read_text())
    weights = next((folder / f for f in _WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has no {' or '.join(_WEIGHT_FILES)}")
    model = _model_from_config(config)
    state = _rename_deprecated(_read_state_file(weights))
    check_state_dict(model, state, source=str(weights))
    model.load_state_dict(state, strict=True)
    return model


def load_autoencoder(path_or_hub_id: str | os.PathLike, original_config: str | os.PathLike | dict | None = None,
                     config_overrides: dict | None = None, **hub_kwargs):
    """Load an autoencoder for encoding, decoding or fine-tuning; returns it in eval mode on CPU, float32.

    Accepted:
      * a diffusers folder (``config.json`` + safetensors/bin; or a pipeline folder with a ``vae/`` subfolder):
        ``AutoencoderKL`` or ``VQModel`` according to ``_class_name``;
      * an LDM-format single file (``.ckpt``/``.safetensors``/``.pt``, keys ``encoder.…`` or
        ``first_stage_model.…``). A file written by :func:`export_ldm_checkpoint` carries its diffusers config and
        is rebuilt from it exactly; a given ``original_config`` wins, with a
        ``UserWarning`` naming each normalisation field that this changes. A foreign file is converted by ``AutoencoderKL.from_single_file`` with
        ``original_config`` (default: the shipped kl-f8 yaml, :data:`KL_F8_LDM_YAML`; pass your own yaml path/dict
        for another LDM architecture); its ``scale_factor`` becomes ``scaling_factor``, its ``resolution`` the
        ``sample_size``, no shift, no per-channel mean/std — named in a one-line :class:`AssumedDefaultsWarning`
        unless you pass ``original_config`` or ``config_overrides``;
      * a Hugging Face hub id (``stabilityai/sd-vae-ft-ema``, ``zelaki/eq-vae``): from the local hub cache, else
        downloaded (needs internet); extra keyword arguments (``subfolder="vae"``, ``revision``) go to
        ``from_pretrained``. A path-like argument (``./x``, ``/x``, ``~/x``, ``a/b/c``, a file suffix, or one whose
        first component exists here) that does not exist is reported as a missing local path, with no network use.

    Args:
        config_overrides: config fields the file cannot carry, applied last: any of :data:`OVERRIDABLE`
            (``scaling_factor``, ``shift_factor``, ``latents_mean``/``latents_std`` (c floats each),
            ``sample_size``). Use it for a foreign checkpoint whose normalisation is not SD-v1's (SDXL: 0.13025;
            SD3: shift 0.0609, scale 1.5305).

    Raises:
        FileNotFoundError: a local path that does not exist / lacks files (one line).
        CheckpointError (a ``ValueError``): a file that is not a checkpoint, or holds pickled objects (one line).
        ValueError: a checkpoint whose tensors do not match the configuration — the message names the first
            mismatched tensor; bad ``config_overrides``.
    """
    s = str(path_or_hub_id)
    p = Path(s).expanduser()
    if p.is_dir():
        model = _load_folder(p)
    elif p.is_file():
        if p.suffix not in _LDM_SUFFIXES:
            raise ValueError(f"{p}: unknown checkpoint type {p.suffix!r}; expected a diffusers folder or an LDM "
                             f"file ({', '.join(_LDM_SUFFIXES)})")
        model = _load_ldm_file(p, original_config, assume_warning=not config_overrides)
    elif _is_hub_id(s):
        model = _load_hub(s, **hub_kwargs)
    else:
        raise FileNotFoundError(f"{s}: no such file or folder (a local path; looked in {Path.cwd()}); it is not a Hugging "
                                "Face hub id 'owner/name' either")
    _apply_overrides(model, config_overrides, s)
    if any(t.dtype != torch.float32 for t in model.parameters()):
        model = model.float()
    return model.eval()


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _is_hub_id(s: str) -> bool:
    """True when ``s`` (which does not exist locally) can only be meant as a hub id: ``owner/name`` syntax, no file
    suffix of a checkpoint, and its first component is not an existing local folder/file."""
    if not _HUB_ID.match(s) or s.endswith(_LDM_SUFFIXES) or ".." in s:
        return False
    return not Path(s.split("/")[0]).exists()


def _load_hub(repo_id: str, **kwargs):
    """From the local hub cache without network; otherwise one notice line, then a download attempt whose failure is
    one line that first says the local path does not exist."""
    from diffusers import AutoencoderKL  # lazy: import cost

    cfg_kw = {k: v for k, v in kwargs.items() if k in ("subfolder", "revision")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # huggingface_hub's deprecation notes
            config = AutoencoderKL.load_config(repo_id, local_files_only=True, **cfg_kw)
            return _model_class(config.get("_class_name", "AutoencoderKL")).from_pretrained(
                repo_id, local_files_only=True, **kwargs)
    except Exception:  # noqa: BLE001 - not in the cache: fall through to the download
        pass
    missing = f"{repo_id}: no such file or folder (a local path; looked in {Path.cwd()})"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise FileNotFoundError(f"{missing}; as a Hugging Face hub id it is not in the local cache and HF_HUB_OFFLINE "
                                "is set")
    reachable, host = _hub_reachable()
    if not reachable:
        raise FileNotFoundError(f"{missing}; as a Hugging Face hub id it is not in the local cache, and the hub "
                                f"({host}) cannot be reached from here")
    print(f"{missing}; trying it as a Hugging Face hub id", file=sys.stderr)
    try:  # pragma: no cover - needs internet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoencoderKL.load_config(repo_id, **cfg_kw)
            return _model_class(config.get("_class_name", "AutoencoderKL")).from_pretrained(repo_id, **kwargs)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise FileNotFoundError(f"{missing}, and the Hugging Face hub did not provide it ({type(e).__name__}: "
                                f"{first})") from None


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` s (one try; skipped — assumed
    reachable — when an HTTP(S) proxy is configured, since the proxy decides)."""
    u = urlparse(hub_constants.ENDPOINT or "https://huggingface.co")
    host = u.hostname or "huggingface.co"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True, host
    try:
        socket.create_connection((host, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout).close()
        return True, host
    except OSError:
        return False, host


def _ldm_config_dict(original_config) -> dict:
    if original_config is None:
        return yaml.safe_load(KL_F8_LDM_YAML)
    if isinstance(original_config, dict):
        return original_config
    path = Path(original_config)
    if not path.is_file():
        raise FileNotFoundError(f"original_config {path} not found (a local LDM yaml is required; no downloads)")
    return yaml.safe_load(path.read_text())


#: Config fields of an autoencoder that are not in its weights (latent normalisation, image size).
_NORMALISATION_FIELDS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "sample_size")


def _jsonable(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def _load_ldm_file(path: Path, original_config=None, assume_warning: bool = True):
    # lazy: import cost
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    checkpoint, kit_config = _read_checkpoint(path)
    if kit_config is not None and original_config is None:  # written by export_ldm_checkpoint: exact round trip
        model = _model_from_config(kit_config)
        converted = convert_ldm_vae_checkpoint(checkpoint, dict(model.config))
        check_state_dict(model, converted, source=str(path))
        model.load_state_dict(converted, strict=True)
        return model
    ldm_config = _ldm_config_dict(original_config)
    # shape check first, so that a wrong file names its first mismatched tensor
    config = create_vae_diffusers_config_from_ldm(ldm_config, checkpoint)
    converted = convert_ldm_vae_checkpoint(checkpoint, config)
    if not converted:
        raise ValueError(f"{path}: no autoencoder tensors found (expected LDM keys like 'encoder.conv_in.weight' "
                         "or 'first_stage_model.encoder.conv_in.weight')")
    check_state_dict(AutoencoderKL.from_config(config), converted, source=str(path))
    model = AutoencoderKL.from_single_file(checkpoint, original_config=ldm_config, local_files_only=True)
    params = ldm_config["model"]["params"]
    resolution = params.get("first_stage_config", {}).get("params", {}).get("ddconfig", {}).get("resolution")
    if resolution:
        model.register_to_config(sample_size=int(resolution))
    if kit_config is not None:  # original_config wins over the file's own config: say what that changes
        changed = {k: (kit_config.get(k), model.config.get(k)) for k in _NORMALISATION_FIELDS
                   if _jsonable(kit_config.get(k)) != _jsonable(model.config.get(k))}
        if changed:
            warnings.warn(f"{path} carries its own config (written by export_ldm_checkpoint); the original_config you "
                          "passed replaces it, which changes " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in
                                                                            changed.items())
                          + " — drop original_config to use the file's own", UserWarning, stacklevel=3)
    if assume_warning and original_config is None:
        warnings.warn(f"{path} carries no latent normalisation or sample size; assuming SD-v1 kl-f8 defaults "
                      f"scaling_factor={model.config.scaling_factor}, shift_factor=None, no per-channel "
                      f"latents_mean/std, sample_size={model.config.sample_size} — pass config_overrides / "
                      "--scaling-factor --shift-factor (SDXL 0.13025; SD3 1.5305 and 0.0609) or original_config if "
                      "these are wrong", AssumedDefaultsWarning, stacklevel=3)
    return model


# -------------------------------------------------------------------------------------------------- LDM export
def ldm_original_config(vae) -> dict:
    """The LDM yaml (as a dict) describing ``vae``'s architecture, for ``from_single_file(original_config=...)``.

    Raises:
        ValueError: for models the LDM architecture cannot express (no mid-block attention, unequal block widths
            that are not multiples of the first, VQ models).
    """
    model = _unwrap(vae)
    if is_vq(model):
        raise ValueError("LDM export is implemented for KL autoencoders only")
    cfg = model.config
    if not cfg.mid_block_add_attention:
        raise ValueError("the LDM architecture always has mid-block attention; this model has none, so it cannot be "
                         "exported in LDM layout (use the diffusers folder)")
    ch = cfg.block_out_channels[0]
    if any(c % ch for c in cfg.block_out_channels):
        raise ValueError(f"block_out_channels {cfg.block_out_channels} are not multiples of the first")
    d = yaml.safe_load(KL_F8_LDM_YAML)
    dd = d["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    dd.update(z_channels=cfg.latent_channels, in_channels=cfg.in_channels, out_ch=cfg.out_channels, ch=ch,
              ch_mult=[c // ch for c in cfg.block_out_channels], num_res_blocks=cfg.layers_per_block,
              resolution=cfg.sample_size)
    d["model"]["params"]["first_stage_config"]["params"]["embed_dim"] = cfg.latent_channels
    d["model"]["params"]["scale_factor"] = float(cfg.scaling_factor)
    return d


def diffusers_to_ldm_state_dict(vae) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``AutoencoderKL`` state dict to the LDM (CompVis) layout; attention projections become
    1×1 convolutions. Inverse of diffusers' ``convert_ldm_vae_checkpoint``."""
    model = _unwrap(vae)
    n = len(model.config.block_out_channels)
    out = {}
    for k, v in model.state_dict().items():
        m = k
        m = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", m)
        m = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", m)
        m = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                   lambda g: f"decoder.up.{n - 1 - int(g.group(1))}.block.{g.group(2)}.", m)
        m = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda g: f"decoder.up.{n - 1 - int(g.group(1))}.upsample.", m)
        m = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
                   lambda g: f"{g.group(1)}.mid.block_{int(g.group(2)) + 1}.", m)
        m = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1.", m)
        m = m.replace(".conv_shortcut.", ".nin_shortcut.").replace("conv_norm_out.", "norm_out.")
        if ".mid.attn_1." in m:
            m = (m.replace(".group_norm.", ".norm.").replace(".to_q.", ".q.").replace(".to_k.", ".k.")
                 .replace(".to_v.", ".v.").replace(".to_out.0.", ".proj_out."))
            if v.dim() == 2:
                v = v[:, :, None, None]
        out[m] = v.detach().cpu().contiguous()
    return out


def export_ldm_checkpoint(vae, path: str | os.PathLike) -> Path:
    """Write ``vae`` as an LDM-format checkpoint (atomically): ``.ckpt`` → ``{"state_dict": {...}}`` via torch.save;
    ``.safetensors`` → flat tensors. Keys as in ``vae-ft-ema-560000-ema-pruned.ckpt`` (``encoder.…``, ``decoder.…``,
    ``quant_conv.…``, ``post_quant_conv.…``). The model's whole diffusers config (normalisation, ``sample_size``,
    channel counts) travels inside the file as JSON under :data:`CONFIG_KEY` (safetensors metadata, or a string
    entry of the ``.ckpt`` dict), so :func:`load_autoencoder` rebuilds the same model and config. Load it elsewhere
    with diffusers' ``from_single_file`` and ``original_config=ldm_original_config(vae)``."""
    path = Path(path)
    ldm_original_config(vae)  # raises for models LDM cannot express
    state = diffusers_to_ldm_state_dict(vae)
    cfg_text = _unwrap(vae).to_json_string()
    if path.suffix == ".safetensors":
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", CONFIG_KEY: cfg_text})
    else:
        atomic_torch_save({"state_dict": state, CONFIG_KEY: cfg_text}, path)
    return path
