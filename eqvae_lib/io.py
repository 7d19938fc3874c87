"""Atomic writes, content hashes and provenance helpers.

Every checkpoint, cache and result the kit writes goes through these functions, so an interrupted run (Ctrl-C, kill)
never leaves a half-written file behind: data is written to a temporary file in the same folder, flushed, fsync'ed,
and renamed over the target (``os.replace`` is atomic on POSIX).

Permissions: the temporary files and folders that Python's ``tempfile`` creates are private (0600 / 0700); before the
rename they get the mode the user's umask gives an ordinary new file (``0666 & ~umask``) or folder
(``0777 & ~umask``), so with umask 0022 colleagues can read records, figures and models, and with 0077 they cannot
(:func:`umask_mode`, :func:`apply_umask`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _io
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .runtime import REPO_ROOT


def current_umask() -> int:
    """The process's umask (read from ``/proc/self/status`` where available; otherwise set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def umask_mode(folder: bool = False) -> int:
    """Mode an ordinary new file (``0666 & ~umask``) or folder (``0777 & ~umask``) gets under the current umask."""
    return (0o777 if folder else 0o666) & ~current_umask()


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (and, for a folder, everything under it) the modes the umask gives ordinary new files/folders.
    Used on the private temporary files/folders of the atomic writers before they are renamed into place."""
    path = Path(path)
    fmode, dmode = umask_mode(False), umask_mode(True)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), dmode)
            for f in files:
                os.chmod(os.path.join(root, f), fmode)
        os.chmod(path, dmode)
    else:
        os.chmod(path, fmode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    Use for libraries that insist on writing a file themselves (e.g. ``safetensors.torch.save_file``). The file
    gets the mode of an ordinary new file under the user's umask (:func:`umask_mode`), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode(False))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NaN/inf are written as JSON strings "NaN", "Infinity")."""
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically. Load it back with ``torch.load(path, weights_only=True)``:
    only tensors, numbers, strings, lists, tuples and dicts may be stored."""
    buf = _io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tensor(t: torch.Tensor) -> str:
    """Hex SHA-256 of a tensor's dtype, shape and values (CPU, contiguous)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # reshape: 0-d tensors cannot be viewed
    return h.hexdigest()


def state_dict_hash(module_or_state: torch.nn.Module | Mapping[str, torch.Tensor], length: int = 16) -> str:
    """Identity of a model: SHA-256 over its parameter/buffer names, shapes and values, truncated to ``length`` hex
    characters. Two models with equal weights have equal hashes, whatever file they were loaded from."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(sha256_tensor(state[name]).encode())
    return h.hexdigest()[:length]


def hash_obj(obj: Any, length: int = 16) -> str:
    """Short SHA-256 of a JSON-serialisable object (keys sorted): a cache key for parameter dicts."""
    return hashlib.sha256(json.dumps(_json_safe(obj), sort_keys=True).encode()).hexdigest()[:length]


def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` when tracked files have uncommitted changes), or ``"unknown"``.

    Changes under ``figures/`` do not count: the notebooks write there themselves (the committed reference figures),
    so a run would otherwise mark its own later records dirty."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)figures"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
