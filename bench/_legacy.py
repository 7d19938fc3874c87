"""Import the library as it was at an older commit, beside today's, for old-vs-new measurements in ONE run.

``legacy_package(commit)`` extracts ``eqvae_lib/`` of ``commit`` (``git archive``) into a temporary folder as the
package ``eqvae_lib_<commit>`` (the library uses only relative imports, so the copy runs unchanged) and imports it.
``--old-src DIR`` style callers may pass a folder holding such a copy instead (e.g. on a machine without the git
history). Returns ``(module, None)`` or ``(None, reason)``.
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The commit before issue 17's changes (per-step host syncs, CPU noise, no TF32/fused/compile).
BASELINE = "8bf3814"


def legacy_package(commit: str = BASELINE, src: str | Path | None = None):
    """``(eqvae_lib as of commit, None)`` or ``(None, why not)``; ``src``: a folder that holds ``eqvae_lib/``."""
    name = f"eqvae_lib_{commit[:7]}"
    if name in sys.modules:
        return sys.modules[name], None
    root = Path(tempfile.mkdtemp(prefix="eqvae-legacy-"))
    try:
        if src is not None:
            import shutil
            shutil.copytree(Path(src) / "eqvae_lib", root / name)
        else:
            tar = subprocess.run(["git", "-C", str(REPO), "archive", commit, "eqvae_lib"], capture_output=True,
                                 check=True, timeout=60).stdout
            with tarfile.open(fileobj=io.BytesIO(tar)) as t:
                t.extractall(root, filter="data")
            (root / "eqvae_lib").rename(root / name)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"cannot extract eqvae_lib at {commit}: {e}"
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name), None
    except Exception as e:  # noqa: BLE001 - report any import failure as the reason
        return None, f"cannot import eqvae_lib at {commit}: {e}"
