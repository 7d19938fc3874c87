"""Shared command-line plumbing: bad input → one line on stderr and exit code 2 (never a traceback); warnings as one
line each; the options that supply what a foreign checkpoint cannot carry (issue #16).

Bad input = any of :data:`BAD_INPUT`: a missing path (``FileNotFoundError``), a file that is not a checkpoint or holds
pickled objects (``CheckpointError``), an image the kit cannot convert (``UnsupportedImageError``) or cannot decode
(``ImageDecodeError``), or a value that does not fit (``ValueError``). Anything else is a bug of the kit and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Callable, Iterator

from .autoencoders import CheckpointError
from .data import ImageDecodeError, UnsupportedImageError

BAD_INPUT = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, CheckpointError,
             UnsupportedImageError, ImageDecodeError, ValueError)

#: What ``--help`` says about the conversions the kit applies to input images (recorded per run as well).
CONVERSIONS_HELP = ("Images are converted to 8-bit RGB before use: grey (L, 1-bit, 16-bit I;16/I;16B/I;16L, 32-bit I "
                    "read as 16-bit, float F read as [0, 1]) is scaled to 8 bit and repeated to 3 channels; the alpha "
                    "channel of RGBA/LA/PA/P-with-transparency is dropped (colour kept, as ADM/DiT do); palettes are "
                    "expanded; CMYK uses PIL's formula; other modes are refused with the file's name. Then each image "
                    "is resized and cropped to --size (centre crop for evaluation, random crop for training); "
                    "Fashion-MNIST is padded 28→32 and repeated to 3 channels for RGB models. The conversions applied "
                    "are recorded in the output JSON.")


def one_line(e: BaseException) -> str:
    """The exception's message on one line (first line; the type name if empty)."""
    text = " ".join(str(e).split()) if str(e).strip() else type(e).__name__
    return text


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Print each warning as ``warning: MESSAGE`` on one stderr line while the block runs."""
    old = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


def run_guarded(prog: str, fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run ``fn(argv)``; bad input (:data:`BAD_INPUT`) → ``PROG: error: MESSAGE`` (one line) and 2; argparse's exits
    (``--help`` 0, usage error 2) pass through as return codes."""
    try:
        with one_line_warnings():
            return int(fn(argv) or 0)
    except SystemExit as e:  # argparse
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else 2
    except BAD_INPUT as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    """``--scaling-factor``, ``--shift-factor``, ``--original-config``: what a foreign LDM checkpoint cannot carry."""
    p.add_argument("--scaling-factor", type=float, default=None,
                   help="latent scaling factor of a foreign checkpoint that does not carry it (SD-v1 0.18215, SDXL "
                        "0.13025, SD3 1.5305); files written by the kit carry their own")
    p.add_argument("--shift-factor", type=float, default=None,
                   help="latent shift of a foreign checkpoint (SD3 0.0609); default none")
    p.add_argument("--original-config", default=None,
                   help="LDM yaml of a foreign .ckpt/.safetensors (default: SD kl-f8, scale_factor 0.18215, 256 px)")


def checkpoint_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``load_autoencoder`` from :func:`add_checkpoint_options`' options."""
    overrides = {k: v for k, v in (("scaling_factor", args.scaling_factor), ("shift_factor", args.shift_factor))
                 if v is not None}
    return {"original_config": args.original_config, "config_overrides": overrides or None}
