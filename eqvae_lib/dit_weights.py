"""Official DiT weights in the kit's DiT: the key mapping between the two state-dict layouts.

The official layout (facebookresearch/DiT ``models.py``, the released ``DiT-XL-2-256x256.pt`` holds exactly this
state dict — the EMA weights): ``x_embedder.proj.{weight,bias}`` (timm ``PatchEmbed``), ``t_embedder.mlp.{0,2}.*``,
``y_embedder.embedding_table.weight``, ``pos_embed``, ``blocks.{i}.attn.qkv.*``, ``blocks.{i}.attn.proj.*``,
``blocks.{i}.mlp.fc1.*``, ``blocks.{i}.mlp.fc2.*``, ``blocks.{i}.adaLN_modulation.1.*``, ``final_layer.linear.*``,
``final_layer.adaLN_modulation.1.*`` (the LayerNorms have no parameters). The kit's :class:`eqvae_lib.dit.DiT` uses the
same names and shapes except the patch embedding, a bare ``nn.Conv2d`` named ``x_embedder`` (``x_embedder.weight``
instead of ``x_embedder.proj.weight``). :data:`OFFICIAL_TO_KIT` is that one renaming.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from .dit import DiT

#: (official prefix, kit prefix): every key renaming between the official DiT layout and the kit's
OFFICIAL_TO_KIT = (("x_embedder.proj.", "x_embedder."),)


def official_to_kit_key(key: str) -> str:
    """The kit's name of an official DiT state-dict key (unchanged unless :data:`OFFICIAL_TO_KIT` renames it)."""
    for official, kit in OFFICIAL_TO_KIT:
        if key.startswith(official):
            return kit + key[len(official):]
    return key


def kit_to_official_key(key: str) -> str:
    """The official DiT name of a kit state-dict key (inverse of :func:`official_to_kit_key`)."""
    for official, kit in OFFICIAL_TO_KIT:
        if key.startswith(kit) and not key.startswith(official):
            return official + key[len(kit):]
    return key


def official_state_dict_to_kit(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official DiT state dict's keys to the kit's (tensors unchanged). A training checkpoint of the
    official ``train.py`` (``{"model", "ema", "opt", "args"}``) gives its ``"ema"`` weights, as the official
    ``sample.py`` (``find_model``) does.

    Raises:
        ValueError: not a mapping of names to tensors.
    """
    if "ema" in state_dict and isinstance(state_dict["ema"], Mapping):
        state_dict = state_dict["ema"]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"not a DiT state dict: values of {bad[:3]} are not tensors")
    return {official_to_kit_key(k): v for k, v in state_dict.items()}


def load_official_dit_state_dict(model: DiT, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> DiT:
    """Load an official DiT state dict (facebookresearch/DiT layout, e.g. ``DiT-XL-2-256x256.pt``) into the kit's
    ``model`` (built with the same configuration: ``dit_model("DiT-XL/2", input_size=32, in_channels=4,
    num_classes=1000, learn_sigma=True)`` for that file). Returns ``model``.

    Raises:
        ValueError: keys missing or unexpected (``strict``), or a shape that differs, naming the first few and the
            configuration the model was built with.
    """
    kit_sd = official_state_dict_to_kit(state_dict)
    own = model.state_dict()
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in kit_sd.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(kit_sd))
    unexpected = sorted(set(kit_sd) - set(own))
    if shapes or (strict and (missing or unexpected)):
        conf = (f"depth {model.depth}, hidden {model.hidden_size}, patch {model.patch_size}, input {model.input_size}, "
                f"in_channels {model.in_channels}, learn_sigma {model.learn_sigma}, num_classes {model.num_classes}")
        raise ValueError(f"the DiT checkpoint does not fit the model ({conf}): shapes {shapes[:3]}, missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}; build the model with the checkpoint's "
                         "configuration")
    model.load_state_dict(kit_sd, strict=strict, assign=next(iter(own.values())).device.type == "meta")
    return model


def load_official_dit_checkpoint(model: DiT, path: str | os.PathLike) -> DiT:
    """:func:`load_official_dit_state_dict` from a ``.pt`` file, read with ``torch.load(weights_only=True)`` (a file
    that needs unpickling of objects — the official training checkpoints hold an ``argparse.Namespace`` — is refused:
    extract its ``"ema"`` state dict first).

    Raises:
        FileNotFoundError: no such file. ValueError: the file is not a plain state dict, or does not fit ``model``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DiT checkpoint {path} not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: the kit never unpickles objects
        raise ValueError(f"{path}: not a plain tensor state dict ({type(e).__name__}); save torch.load(...)['ema'] "
                         "of a trusted file as its own .pt first") from None
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return load_official_dit_state_dict(model, sd)
