"""Command line of the EQ-VAE kit: python -m eqvae_lib COMMAND [options]  (also installed as `eqvae`).
Run `python -m eqvae_lib COMMAND --help` for a command's options.

Commands:
  pretrain   train a base autoencoder from scratch (the small stand-in for SD-VAE)
  finetune   fine-tune any autoencoder with EQ-VAE (or the plain control) and export it
  audit      equivariance, reconstruction and intrinsic-dimension audit of any autoencoder
  report     rebuild the report tables from the result records of a profile
  compare-reference  say, claim by claim, whether your run's effects lie inside the committed reference intervals
  fetch-data make Fashion-MNIST available offline
  project    projected wall time of each notebook of a profile on this machine (measured throughput x step counts)
  plateau-pilot  train a profile's base with the plateau rule off and report where the rule would fire (#15 design)
  config     `config keys` lists every knob per stage; `config check -p NAME VALUE ...` validates overrides

Exit codes: 0 success, 2 bad input (one line on stderr: missing path, not a checkpoint, a pickle the kit will not
execute, an image it cannot convert, a bad value).
"""

from __future__ import annotations

import importlib
import sys

from .cli_util import run_guarded  # bad input anywhere: one line, exit code 2

COMMANDS = {
    "pretrain": ("eqvae_lib.cli_ae", "cli_pretrain"),
    "finetune": ("eqvae_lib.cli_ae", "cli_finetune"),
    "audit": ("eqvae_lib.metrics.audit", "cli_audit"),
    "report": ("eqvae_lib.experiment.records", "cli_report"),
    "compare-reference": ("eqvae_lib.experiment.records", "cli_compare_reference"),
    "fetch-data": ("eqvae_lib.data", "cli_fetch_data"),
    "project": ("eqvae_lib.experiment.projection", "cli_project"),
    "plateau-pilot": ("eqvae_lib.experiment.plateau_pilot", "cli_plateau_pilot"),
    "config": ("eqvae_lib.experiment.config", "main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func = COMMANDS[cmd]
    return run_guarded(cmd, getattr(importlib.import_module(module), func), rest)


if __name__ == "__main__":
    raise SystemExit(main())
