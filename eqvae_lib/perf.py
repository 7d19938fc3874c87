"""GPU speed settings shared by the training loops (train_ae, train_gen, maskgit): TF32, fused optimizers,
opt-in ``torch.compile``. None of them changes anything on the CPU.

* :func:`enable_tf32` — TF32 for float32 matmuls and cuDNN convolutions on CUDA (Ampere and newer). The fp32 parts
  of a bf16-autocast step (normalisations, the loss, the optimizer's matmul-free updates are unaffected) then run on
  tensor cores; the precision is TF32's 10-bit mantissa for products, fp32 accumulation (DiT's official trainer
  enables it too). Called by the training entry points when they train on CUDA; it sets process-wide flags
  (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``).
* :func:`adam_kwargs` — ``{"fused": True}`` for ``torch.optim.Adam/AdamW`` on CUDA (one kernel for all parameters),
  ``{}`` elsewhere (the CPU keeps the default for-each implementation and its exact numbers).
* :func:`maybe_compile` — ``module.compile()`` in place (state-dict keys unchanged) when asked; default off in every
  loop until ``bench/bench_gpu.py`` shows it pays for its compile time.
"""

from __future__ import annotations

import torch


def enable_tf32(device: str | torch.device) -> bool:
    """Allow TF32 for matmuls and convolutions when ``device`` is CUDA. Returns whether it did."""
    if torch.device(device).type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def adam_kwargs(device: str | torch.device) -> dict:
    """Extra keyword arguments for ``torch.optim.Adam`` / ``AdamW`` on ``device``: fused on CUDA, none elsewhere."""
    return {"fused": True} if torch.device(device).type == "cuda" else {}


def maybe_compile(module: torch.nn.Module, flag: bool) -> torch.nn.Module:
    """``module.compile()`` (in place: parameters and state-dict keys stay as they are) when ``flag``; returns it."""
    if flag:
        module.compile()
    return module
