"""MaskGIT: a class-conditional bidirectional transformer over token grids, trained by masked token prediction and
sampled by iterative parallel decoding (Chang et al., "MaskGIT: Masked Generative Image Transformer", CVPR 2022).

EQ-VAE uses it for its discrete-tokenizer rows: Table 1 last row (VQ-GAN + MaskGIT, gFID 6.8 -> 5.9) and Table 3
(MaskGIT reaches the baseline's gFID 6.80 in 130 instead of 300 epochs) of arXiv 2502.09509 v3.

Tokens
------
A token grid is an int64 tensor ``[B, h, w]`` with values in ``0..K-1`` (``K`` = the tokenizer's codebook size). The
model adds one extra id, ``mask_id = K``, for masked positions. Labels are int64 ``[B]`` in ``0..num_classes-1``; the
extra class ``null_class = num_classes`` means "no label" (unlabelled data, the unconditional branch of guidance, and
label dropout during training). ``labels=None`` everywhere means "all null".

This module needs nothing but token grids and labels: the model, the masking schedule, the loss and the sampler do
not import any autoencoder code. The training loop is :mod:`eqvae_lib.train_maskgit`. The token cache helpers at the bottom (``build_token_cache`` etc.) use
``eqvae_lib.vq`` to encode images and to decode tokens back to images, and check the tokenizer's weights hash
(``eqvae_lib.io.state_dict_hash``) whenever tokens are turned back into pixels.

Choices (documented deviations / readings)
------------------------------------------
* Transformer blocks: ``torch.nn.TransformerEncoderLayer`` (pre-norm, GELU), learned positional embeddings, the class
  embedding prepended as an extra token (as in the official MaskGIT ImageNet model, which appends it to the sequence).
  The output head predicts only the ``K`` real codes (never the mask id).
* Training: per sample ``r ~ U(0, 1)``, ``ceil(gamma(r) * N)`` positions masked (at least 1), cross-entropy on masked
  positions only, label smoothing 0.1 (MaskGIT's setting), label dropout 0.1 to the null class.
* Sampling: the official ``parallel_decode`` algorithm: at step ``t`` of ``T`` every masked position draws a token
  from ``softmax(logits / temperature)``; the ``floor(N * gamma((t+1)/T))`` least confident of them (confidence =
  log-probability of the drawn token plus ``choice_temperature * (1 - (t+1)/T)`` times Gumbel noise; already fixed
  positions have infinite confidence) are masked again; the last step keeps everything.
* Guidance (classifier-free): ``logits = uncond + guidance * (cond - uncond)``; ``guidance = 1`` is plain conditional
  sampling (one forward pass), which is the setting of the paper's tables.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from .data import iter_batches
from .io import atomic_path, git_commit, state_dict_hash
from .runtime import RUNS_DIR
from .training import Checkpointer, load_checkpoint
from .vq import decode_tokens, encode_tokens


# ------------------------------------------------------------------------------------------------------- schedule
def mask_schedule(r: torch.Tensor | float, kind: str = "cosine") -> torch.Tensor:
    """Fraction of tokens that are masked at progress ``r`` (MaskGIT's gamma function, Chang et al. 2022 Sec. 3.2).

    Args:
        r: progress in ``[0, 1]`` (a float or a tensor of any shape). ``r = 0`` = start of decoding, ``r = 1`` = end.
        kind: ``"cosine"`` (``cos(pi r / 2)``, MaskGIT's default), ``"linear"`` (``1 - r``) or ``"square"``
            (``1 - r^2``).

    Returns:
        a float tensor of the same shape as ``r``, decreasing from 1 (all masked) at ``r = 0`` to 0 (none) at ``r = 1``.

    Raises:
        ValueError: for an unknown ``kind`` or an ``r`` outside ``[0, 1]``.
    """
    if not torch.is_tensor(r):
        r = torch.tensor(float(r), dtype=torch.float64)
    elif not r.is_floating_point():
        r = r.float()
    if r.numel() and (r.min() < 0 or r.max() > 1):
        raise ValueError(f"mask_schedule: progress r must lie in [0, 1], got values in [{r.min()}, {r.max()}]")
    if kind == "cosine":
        out = torch.cos(r * (math.pi / 2))
    elif kind == "linear":
        out = 1 - r
    elif kind == "square":
        out = 1 - r ** 2
    else:
        raise ValueError(f"mask_schedule: unknown kind {kind!r}; choose 'cosine', 'linear' or 'square'")
    return out.clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------- model
@dataclass
class MaskGITConfig:
    """Architecture of a MaskGIT transformer.

    Attributes:
        codebook_size: K, number of real token ids (the tokenizer's codebook size); ``mask_id = K``.
        grid: ``(h, w)`` of the token grid (latent cells).
        num_classes: number of real classes; ``0`` = unconditional only. ``null_class = num_classes``.
        width, depth, heads, mlp_ratio, dropout: transformer size (dropout inside the blocks).
        label_dropout: probability of replacing a label by the null class during training (enables guidance).
        label_smoothing: label smoothing of the masked-token cross-entropy (MaskGIT uses 0.1).
        schedule: masking schedule kind used in training (see ``mask_schedule``).
        tokenizer_hash: ``state_dict_hash`` of the tokenizer whose tokens the model is trained on ("" = unknown);
            stored in checkpoints and checked by ``decode_to_images``.
    """

    codebook_size: int = 256
    grid: tuple[int, int] = (8, 8)
    num_classes: int = 10
    width: int = 256
    depth: int = 6
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    label_dropout: float = 0.1
    label_smoothing: float = 0.1
    schedule: str = "cosine"
    tokenizer_hash: str = ""

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"MaskGITConfig.grid must be (h, w) with positive sides, got {self.grid}")
        if self.codebook_size < 2:
            raise ValueError(f"MaskGITConfig.codebook_size must be >= 2, got {self.codebook_size}")
        if self.num_classes < 0:
            raise ValueError(f"MaskGITConfig.num_classes must be >= 0, got {self.num_classes}")
        if self.width % self.heads:
            raise ValueError(f"MaskGITConfig.width ({self.width}) must be divisible by heads ({self.heads})")
        mask_schedule(0.5, self.schedule)  # validates the name


class MaskGIT(nn.Module):
    """Bidirectional transformer predicting the codes of masked positions (Chang et al. 2022).

    ``forward(tokens, labels)``:
        tokens: int64 ``[B, h, w]`` (or ``[B, h*w]``) with values in ``0..K`` (``K`` = mask id).
        labels: int64 ``[B]`` in ``0..num_classes`` (``num_classes`` = null class) or ``None`` (all null).
        returns float logits ``[B, h*w, K]`` over the real codes, in raster order.

    Raises:
        ValueError: for token ids or labels out of range (checked while ``check_inputs`` is True — the default;
            the training loop and the sampler validate their inputs once and switch the per-call check off, since
            reading ``min()``/``max()`` back waits for the device), or a grid of the wrong size.
    """

    def __init__(self, config: MaskGITConfig):
        super().__init__()
        self.check_inputs = True
        self.config = config
        c = config
        self.mask_id = c.codebook_size
        self.null_class = c.num_classes
        self.seq_len = c.grid[0] * c.grid[1]
        self.tok_emb = nn.Embedding(c.codebook_size + 1, c.width)
        self.cls_emb = nn.Embedding(c.num_classes + 1, c.width)
        self.pos_emb = nn.Parameter(torch.zeros(1, self.seq_len + 1, c.width))
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, int(c.width * c.mlp_ratio), dropout=c.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.codebook_size)
        self.apply(self._init)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _labels(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if labels is None:
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if labels.shape[0] != batch:
            raise ValueError(f"MaskGIT: {labels.shape[0]} labels for a batch of {batch} token grids")
        if self.check_inputs and labels.numel() and (labels.min() < 0 or labels.max() > self.null_class):
            raise ValueError(f"MaskGIT: labels must lie in 0..{self.null_class} (null class = {self.null_class}), "
                             f"got [{int(labels.min())}, {int(labels.max())}]")
        return labels

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        b = tokens.shape[0]
        x = tokens.reshape(b, -1).long()
        if x.shape[1] != self.seq_len:
            raise ValueError(f"MaskGIT: token grid of {tuple(tokens.shape[1:])} ({x.shape[1]} tokens) does not match "
                             f"the model's grid {self.config.grid}")
        if self.check_inputs and x.numel() and (x.min() < 0 or x.max() > self.mask_id):
            raise ValueError(f"MaskGIT: token ids must lie in 0..{self.mask_id} (mask id = {self.mask_id}), got "
                             f"[{int(x.min())}, {int(x.max())}]")
        y = self._labels(labels, b, x.device)
        h = torch.cat([self.cls_emb(y)[:, None], self.tok_emb(x)], dim=1) + self.pos_emb
        h = self.blocks(self.drop(h))
        return self.head(self.norm(h[:, 1:]))

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())


#: Named sizes. ``maskgit-small``: the CPU profiles (8x8 or 16x16 tokens, ~3M parameters with width 256);
#: ``maskgit-base``: the MaskGIT paper's ImageNet-256 transformer (24 layers, width 768, 16 heads, 1024 codes,
#: 16x16 tokens, 1000 classes).
MASKGIT_CONFIGS: dict[str, MaskGITConfig] = {
    "maskgit-tiny": MaskGITConfig(width=64, depth=2, heads=4),
    "maskgit-small": MaskGITConfig(width=256, depth=4, heads=8),
    "maskgit-base": MaskGITConfig(codebook_size=1024, grid=(16, 16), num_classes=1000, width=768, depth=24,
                                  heads=16),
}


def build_maskgit(config: MaskGITConfig | str | None = None, **overrides: Any) -> MaskGIT:
    """A MaskGIT model from a config or a name in ``MASKGIT_CONFIGS`` (default ``MaskGITConfig()``), with fields
    overridden by keyword (e.g. ``codebook_size=256, grid=(8, 8), num_classes=10, tokenizer_hash=...``).

    Raises:
        ValueError: for an unknown name or field.
    """
    if isinstance(config, str):
        if config not in MASKGIT_CONFIGS:
            raise ValueError(f"unknown MaskGIT config {config!r}; known: {', '.join(MASKGIT_CONFIGS)}")
        config = MASKGIT_CONFIGS[config]
    config = copy.deepcopy(config) if config is not None else MaskGITConfig()
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise ValueError(f"build_maskgit: MaskGITConfig has no field {k!r}")
        setattr(config, k, v)
    config.__post_init__()
    return MaskGIT(config)


# --------------------------------------------------------------------------------------------------------- loss
def random_mask(tokens: torch.Tensor, schedule: str = "cosine", generator: torch.Generator | None = None,
                r: torch.Tensor | None = None) -> torch.Tensor:
    """The training mask: per sample ``r ~ U(0, 1)`` and ``ceil(gamma(r) * N)`` random positions (at least 1).

    Args:
        tokens: int64 ``[B, h, w]`` (only its shape and device are used).
        schedule: masking schedule (``mask_schedule``).
        generator: torch generator on ``tokens.device`` for reproducible masks.
        r: optional fixed progress values ``[B]`` in ``[0, 1]`` instead of uniform draws.

    Returns:
        bool ``[B, h, w]``, True = masked.
    """
    b = tokens.shape[0]
    n = tokens[0].numel()
    dev = tokens.device
    if r is None:
        r = torch.rand(b, device=dev, generator=generator)
    n_mask = torch.ceil(mask_schedule(r, schedule) * n).long().clamp(1, n)
    rank = torch.rand(b, n, device=dev, generator=generator).argsort(dim=1).argsort(dim=1)
    return (rank < n_mask[:, None]).reshape(tokens.shape)


def maskgit_loss(model: MaskGIT, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                 label_dropout: float | None = None, label_generator: torch.Generator | None = None,
                 check: bool = True, net: nn.Module | None = None, num_masked: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked-token cross-entropy (MaskGIT training objective).

    Args:
        model: the MaskGIT.
        tokens: int64 ``[B, h, w]`` in ``0..K-1``.
        labels: int64 ``[B]`` in ``0..num_classes-1`` or ``None`` (unlabelled: null class).
        generator: generator for the mask (and the label dropout unless ``label_generator``; on ``tokens.device``).
        mask: optional fixed bool mask ``[B, h, w]`` (True = masked) instead of ``random_mask``.
        label_dropout: override of ``model.config.label_dropout`` (e.g. 0 for evaluation).
        label_generator: generator for the label dropout (the training loop's ``labels`` stream).
        check: validate the token range (one host sync; the training loop validates its cache once instead).
        net: the module to call instead of ``model`` (e.g. its ``DistributedDataParallel`` wrapper); ``model``
            still provides the config, mask id and null class.
        num_masked: divide the summed cross-entropy (and the count of correct predictions) by this number instead of
            by this batch's masked positions: data-parallel training passes the global batch's count, so that the
            processes' losses add up to the global batch's mean.

    Returns:
        ``(loss, stats)``: scalar mean cross-entropy over masked positions (nats, with the config's label smoothing)
        and ``{"loss", "acc", "mask_frac"}`` as detached 0-d tensors (``acc`` = top-1 accuracy on masked positions;
        ``float()`` them when logging).

    Raises:
        ValueError: for token ids outside ``0..K-1``.
    """
    k = model.config.codebook_size
    if check and tokens.numel() and (tokens.min() < 0 or tokens.max() >= k):
        raise ValueError(f"maskgit_loss: token ids must lie in 0..{k - 1}, got [{int(tokens.min())}, "
                         f"{int(tokens.max())}]; were the tokens made by a tokenizer with another codebook size?")
    if mask is None:
        mask = random_mask(tokens, model.config.schedule, generator)
    p_drop = model.config.label_dropout if label_dropout is None else label_dropout
    if labels is not None:
        labels = torch.as_tensor(labels, device=tokens.device).long()
        if p_drop > 0:
            drop = torch.rand(labels.shape[0], device=tokens.device,
                              generator=label_generator if label_generator is not None else generator) < p_drop
            labels = labels.masked_fill(drop, model.null_class)
    inputs = tokens.masked_fill(mask, model.mask_id)
    logits = (net if net is not None else model)(inputs, labels)
    flat_mask = mask.reshape(mask.shape[0], -1)
    target = tokens.reshape(tokens.shape[0], -1)[flat_mask]
    sel = logits[flat_mask].float()
    if num_masked is None:
        loss = F.cross_entropy(sel, target, label_smoothing=model.config.label_smoothing)
        with torch.no_grad():
            acc = (sel.argmax(-1) == target).float().mean()
    else:
        loss = F.cross_entropy(sel, target, label_smoothing=model.config.label_smoothing, reduction="sum") / num_masked
        with torch.no_grad():
            acc = (sel.argmax(-1) == target).float().sum() / num_masked
    return loss, {"loss": loss.detach(), "acc": acc, "mask_frac": flat_mask.float().mean()}


# ------------------------------------------------------------------------------------------------------- sampler
def _make_generator(device: torch.device, generator: torch.Generator | None, seed: int | None):
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


@torch.no_grad()
def sample(model: MaskGIT, n: int | None = None, labels: torch.Tensor | Sequence[int] | None = None,
           steps: int = 8, temperature: float = 1.0, choice_temperature: float = 4.5, guidance: float = 1.0,
           schedule: str | None = None, seed: int | None = None, generator: torch.Generator | None = None,
           device: torch.device | str | None = None) -> torch.Tensor:
    """Iterative parallel decoding (MaskGIT, Chang et al. 2022 Sec. 3.2; the official ``parallel_decode``).

    Args:
        model: the MaskGIT (put in eval mode for the call, restored afterwards).
        n: number of token grids; required when ``labels`` is None, else ``len(labels)``.
        labels: class ids ``[n]`` in ``0..num_classes-1`` (``num_classes`` = null allowed), or None = unconditional.
        steps: T, number of decoding iterations (>= 1).
        temperature: softmax temperature for drawing tokens (``0`` = greedy argmax).
        choice_temperature: scale of the Gumbel noise on the confidences that decide which positions stay masked,
            annealed linearly to 0 (MaskGIT default 4.5).
        guidance: classifier-free guidance scale; ``logits = uncond + guidance * (cond - uncond)``; 1 = none.
        schedule: masking schedule (default: the model's training schedule).
        seed / generator: randomness; a fixed seed gives identical tokens on the same device and software.
        device: default: the model's device.

    Returns:
        int64 ``[n, h, w]`` with values in ``0..K-1`` (no mask ids left).

    Raises:
        ValueError: for bad ``steps``/``n``/``labels``, or ``guidance != 1`` without labels.
    """
    c = model.config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if steps < 1:
        raise ValueError(f"sample: steps must be >= 1, got {steps}")
    if labels is not None:
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if n is not None and n != labels.shape[0]:
            raise ValueError(f"sample: n={n} but {labels.shape[0]} labels given")
        n = labels.shape[0]
    elif n is None or n < 1:
        raise ValueError("sample: give n (number of grids) or labels")
    if guidance != 1.0 and labels is None:
        raise ValueError("sample: guidance != 1 needs labels (unconditional sampling has nothing to guide)")
    schedule = schedule or c.schedule
    gen = _make_generator(device, generator, seed)
    N, K = model.seq_len, c.codebook_size
    was_training, was_checking = model.training, model.check_inputs
    model.eval()
    if labels is not None:
        model._labels(labels, n, device)  # validated once; the decoding steps' inputs are made here
    model.check_inputs = False
    try:
        ids = torch.full((n, N), model.mask_id, dtype=torch.long, device=device)
        for t in range(steps):
            if guidance != 1.0:
                logits = model(torch.cat([ids, ids]), torch.cat([labels, torch.full_like(labels, model.null_class)]))
                cond, uncond = logits.float().chunk(2)
                logits = uncond + guidance * (cond - uncond)
            else:
                logits = model(ids, labels).float()
            unknown = ids == model.mask_id
            if temperature > 0:
                probs_t = torch.softmax(logits / temperature, dim=-1)
                drawn = torch.multinomial(probs_t.reshape(-1, K), 1, generator=gen).reshape(n, N)
            else:
                drawn = logits.argmax(-1)
            drawn = torch.where(unknown, drawn, ids)
            if t == steps - 1:
                ids = drawn
                break
            ratio = (t + 1) / steps
            mask_len = math.floor(N * float(mask_schedule(ratio, schedule)))
            mask_len = torch.clamp(torch.full((n, 1), mask_len, device=device),
                                   min=torch.ones(n, 1, dtype=torch.long, device=device),
                                   max=unknown.sum(-1, keepdim=True) - 1).clamp(min=0)
            logp = torch.log_softmax(logits, dim=-1).gather(-1, drawn[..., None])[..., 0]
            u = torch.rand(n, N, device=device, generator=gen).clamp(1e-20, 1 - 1e-7)
            conf = logp + choice_temperature * (1 - ratio) * -torch.log(-torch.log(u))
            conf = torch.where(unknown, conf, torch.full_like(conf, float("inf")))
            # mask the mask_len least confident positions (ties broken by position via a stable sort)
            order = conf.argsort(dim=-1, stable=True)
            rank = order.argsort(dim=-1)
            remask = rank < mask_len
            ids = torch.where(remask, torch.full_like(drawn, model.mask_id), drawn)
    finally:
        model.train(was_training)
        model.check_inputs = was_checking
    return ids.reshape(n, *c.grid)


# -------------------------------------------------------------------------------------------------- checkpoints
#: format id of MaskGIT checkpoints (the envelope of :class:`eqvae_lib.training.Checkpointer`)
CHECKPOINT_FORMAT = "eqvae-maskgit-v1"


def maskgit_state(model: MaskGIT, ema: MaskGIT | None = None, optimizer: torch.optim.Optimizer | None = None,
                  scheduler: Any = None, extra: dict | None = None) -> dict[str, Any]:
    """What a MaskGIT checkpoint holds besides the envelope: config, weights, EMA weights (or None), optimizer and
    lr-scheduler states (or None), ``extra``."""
    return {"config": asdict(model.config), "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "extra": extra or {}}


def save_maskgit(path: str | os.PathLike, model: MaskGIT, ema: MaskGIT | None = None, step: int = 0,
                 optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None) -> None:
    """Write a checkpoint atomically (:class:`eqvae_lib.training.Checkpointer`, format ``eqvae-maskgit-v1``):
    config, weights, EMA weights, step, optimizer state. Load with ``load_maskgit``
    (``torch.load(weights_only=True)``)."""
    path = Path(path)
    Checkpointer(path.parent, CHECKPOINT_FORMAT, name=path.name).save(step, maskgit_state(model, ema, optimizer,
                                                                                       extra=extra))


def load_maskgit(path: str | os.PathLike, use_ema: bool = True, device: torch.device | str = "cpu") -> MaskGIT:
    """Build a MaskGIT from a checkpoint written by ``save_maskgit`` / ``train_maskgit``.

    Args:
        use_ema: load the EMA weights when the checkpoint has them (else the raw weights).

    Raises:
        FileNotFoundError: naming the path.
        CheckpointFormatError: not a MaskGIT checkpoint of this kit (names the file, says what to delete).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MaskGIT checkpoint {path} not found")
    ckpt = load_checkpoint(path, CHECKPOINT_FORMAT, map_location=device)
    model = MaskGIT(MaskGITConfig(**ckpt["config"])).to(device)
    sd = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(sd)
    return model.eval()


# ------------------------------------------------------------------------------------------------- token cache
@dataclass
class TokenCache:
    """Token grids of a dataset under one tokenizer.

    Attributes:
        tokens: int64 ``[N, h, w]`` in ``0..codebook_size-1``.
        labels: int64 ``[N]`` or None (unlabelled).
        tokenizer_hash: ``state_dict_hash`` of the VQ model that produced the tokens.
        codebook_size: K.
        meta: free-form strings (dataset id, git commit, ...).
    """

    tokens: torch.Tensor
    labels: torch.Tensor | None
    tokenizer_hash: str
    codebook_size: int
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.tokens.shape[1:])


def token_cache_path(vq: nn.Module, name: str, root: str | os.PathLike | None = None) -> Path:
    """``root/tokens-{name}-{tokenizer_hash}.safetensors`` (default root ``RUNS_DIR/tokens``): one file per
    (dataset, tokenizer weights) pair, so tokens of different tokenizers can never be mixed up."""

    root = Path(root) if root is not None else RUNS_DIR / "tokens"
    return root / f"tokens-{name}-{state_dict_hash(vq)}.safetensors"


def save_token_cache(cache: TokenCache, path: str | os.PathLike) -> None:
    """Write ``cache`` as safetensors atomically (``atomic_path``); hash and codebook size go into the metadata."""

    tensors = {"tokens": cache.tokens.contiguous().cpu().long()}
    if cache.labels is not None:
        tensors["labels"] = cache.labels.contiguous().cpu().long()
    meta = {str(k): str(v) for k, v in cache.meta.items()}
    meta.update(tokenizer_hash=cache.tokenizer_hash, codebook_size=str(cache.codebook_size), format="eqvae-tokens-1")
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_token_cache(path: str | os.PathLike, vq: nn.Module | None = None,
                     expected_hash: str | None = None) -> TokenCache:
    """Read a token cache; with ``vq`` (or ``expected_hash``) check that it was made by that tokenizer.

    Raises:
        FileNotFoundError: naming the path.
        ValueError: when the stored tokenizer hash differs from the given tokenizer's (tokens of another AE).
    """

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token cache {path} not found; build it with eqvae_lib.maskgit.build_token_cache")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tokens = f.get_tensor("tokens")
        labels = f.get_tensor("labels") if "labels" in f.keys() else None
    if "tokenizer_hash" not in meta:
        raise ValueError(f"{path}: not a token cache (no tokenizer_hash in its metadata)")
    want = expected_hash if expected_hash is not None else (state_dict_hash(vq) if vq is not None else None)
    if want is not None and meta["tokenizer_hash"] != want:
        raise ValueError(f"{path}: tokens were made by tokenizer {meta['tokenizer_hash']}, not by the given one "
                         f"({want}); rebuild the cache with this tokenizer")
    th = meta.pop("tokenizer_hash")
    k = int(meta.pop("codebook_size"))
    meta.pop("format", None)
    return TokenCache(tokens=tokens, labels=labels, tokenizer_hash=th, codebook_size=k, meta=meta)


@torch.no_grad()
def build_token_cache(vq: nn.Module, images: torch.Tensor | torch.utils.data.Dataset,
                      labels: torch.Tensor | None = None, path: str | os.PathLike | None = None,
                      batch_size: int = 256, meta: dict | None = None, progress: bool = False) -> TokenCache:
    """Tokenise images with a VQ model (``eqvae_lib.vq.encode_tokens``) and optionally save the cache.

    Args:
        vq: diffusers ``VQModel`` (eval mode is used; restored afterwards).
        images: float ``[N, C, H, W]`` in ``[-1, 1]``, or a dataset of ``(x, label)`` items.
        labels: int64 ``[N]``, or None (ignored for a dataset, whose own labels are used; a dataset without labels
            gives None; one with labels on some items only raises ValueError).
        path: where to save (``save_token_cache``); None = keep in memory only.
        batch_size: images per encoder call. meta: extra strings stored in the file.

    Returns:
        the ``TokenCache`` (tokens on CPU).
    """

    device = next(vq.parameters()).device
    was = vq.training
    vq.eval()
    toks, labs = [], []
    try:
        if torch.is_tensor(images):
            for x in iter_batches(images, batch_size, device):
                toks.append(encode_tokens(vq, x).cpu())
        else:  # a Dataset carries its labels (-1 = none)
            for x, y in iter_batches(images, batch_size, device, with_labels=True):
                toks.append(encode_tokens(vq, x).cpu())
                labs.append(y)
            labels = torch.cat(labs) if labs else None
            if labels is not None and bool((labels < 0).all()):
                labels = None  # a dataset without labels: unconditional tokens
            elif labels is not None and bool((labels < 0).any()):
                raise ValueError(f"{int((labels < 0).sum())} of {len(labels)} dataset items have no label: give "
                                 "every item a label, or none")
    finally:
        vq.train(was)
    m = {"git_commit": git_commit(), "n": str(sum(len(t) for t in toks))}
    m.update({str(k): str(v) for k, v in (meta or {}).items()})
    cache = TokenCache(tokens=torch.cat(toks), labels=labels.long().cpu() if labels is not None else None,
                       tokenizer_hash=state_dict_hash(vq), codebook_size=int(vq.config.num_vq_embeddings), meta=m)
    if path is not None:
        save_token_cache(cache, path)
    return cache


@torch.no_grad()
def decode_to_images(vq: nn.Module, tokens: torch.Tensor, tokenizer_hash: str | None = None,
                     batch_size: int = 256) -> torch.Tensor:
    """Decode token grids to images, after checking that ``vq`` is the tokenizer the tokens belong to.

    Args:
        vq: the diffusers ``VQModel``.
        tokens: int64 ``[N, h, w]`` in ``0..K-1``.
        tokenizer_hash: the hash recorded with the tokens (``TokenCache.tokenizer_hash`` or
            ``MaskGIT.config.tokenizer_hash``); ``""``/None skips the check (with no guarantee).
        batch_size: grids per decoder call.

    Returns:
        float ``[N, C, H, W]`` images in ``[-1, 1]`` (clamped), on the VQ model's device.

    Raises:
        ValueError: when ``tokenizer_hash`` differs from ``state_dict_hash(vq)``.
    """

    if tokenizer_hash:
        have = state_dict_hash(vq)
        if have != tokenizer_hash:
            raise ValueError(f"decode_to_images: tokens belong to tokenizer {tokenizer_hash}, but the given VQ model "
                             f"has weights hash {have}; decode with the tokenizer that made the tokens")
    out = [decode_tokens(vq, tokens[i: i + batch_size]) for i in range(0, len(tokens), batch_size)]
    return torch.cat(out).clamp(-1, 1)
