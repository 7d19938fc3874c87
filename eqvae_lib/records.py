"""Result records with provenance, and the report's tables built only from them.

One JSON record per notebook run, at ``runs/<profile>/records/<claim>.json``: the claim id (e.g. ``"table1"``,
``"fig5"``), every metric with its unit and the paper's value where one exists, a verdict ("reproduced" / "not
reproduced at this scale" / "not run"), the profile and all parameters, seeds, the identities (hashes) of datasets
and autoencoders, the git commit and the wall time.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .config import RUNS_DIR
from .io import atomic_write_json, git_commit

#: Every claim the kit tests: claim id -> (notebook, what the paper claims). The report lists claims without a
#: record in a profile as "not run in this profile".
CLAIMS = {
    "design": ("00_design_pilot", "choice of the small-scale configuration (measured)"),
    "base_ae": ("01_data_and_base_ae", "base autoencoder trained to a plateau (stand-in for SD-VAE)"),
    "table6_finetune": ("02_finetune", "EQ-VAE and plain fine-tuning with the same budget (Table 6 protocol)"),
    "fig3": ("03_equivariance_failure", "decoder-side equivariance, Fig. 2/6 and Fig. 3"),
    "table1": ("04_table1_reconstruction", "Δ_R, Δ_S, rFID (Table 1) and PSNR/SSIM/LPIPS (Table 12)"),
    "fig7": ("05_latent_pca", "smoother latents (Fig. 1 left / Fig. 7)"),
    "table5_id": ("06_intrinsic_dimension", "lower intrinsic dimension (Table 5)"),
    "table2": ("07_generative_comparison", "faster DiT/SiT convergence (Tables 1/2, Fig. 1 right, Table 6)"),
    "fig5": ("08_gfid_per_epoch", "gFID per fine-tuning epoch (Fig. 5)"),
    "ablations": ("09_ablations", "transformation family, explicit vs implicit, p_α (Tables 5, 7, 8)"),
    "table1_vq": ("10_discrete_vq_maskgit", "VQ tokenizer + MaskGIT (Table 1 last row, Table 3)"),
}

VERDICTS = ("reproduced", "partly reproduced", "not reproduced at this scale", "not run at this scale",
            "informational")


@dataclass
class Metric:
    """One number: ``name`` (e.g. ``"rFID"``), ``value``, ``unit`` (``"dB"``, ``"cells"``, ``""``), the autoencoder or
    model it belongs to (``subject``), the paper's value and where it comes from, and free notes (e.g. the feature
    extractor)."""

    name: str
    value: float | None
    unit: str = ""
    subject: str = ""
    paper: float | None = None
    source: str = ""
    notes: str = ""


@dataclass
class RunRecord:
    """Provenance and results of one notebook run. Create at the start (it starts the wall clock), ``add`` metrics,
    ``set_verdict``, then ``save``.

    Args:
        claim: short id of the paper claim (``"table1"``, ``"fig3"``...).
        title: one line stating the claim.
        profile: profile name (``smoke``/``cpu``/``cpu-full``/``paper``).
        params: every notebook parameter (JSON-serialisable).
        seeds: the seeds used.
    """

    claim: str
    title: str
    profile: str
    params: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    verdict: str = "not run at this scale"
    verdict_text: str = ""
    scale: str = ""
    figures: list[str] = field(default_factory=list)
    git_commit: str = field(default_factory=git_commit)
    started: float = field(default_factory=time.time)
    wall_time_s: float | None = None
    host: str = field(default_factory=lambda: f"{platform.node()} ({platform.machine()}, "
                                              f"python {platform.python_version()})")

    def add(self, name: str, value: float | None, unit: str = "", subject: str = "", paper: float | None = None,
            source: str = "", notes: str = "") -> Metric:
        """Append a metric and return it. ``value`` is stored as a float (``None`` for "not computed")."""
        m = Metric(name, None if value is None else float(value), unit, subject, paper, source, notes)
        self.metrics.append(m)
        return m

    def add_input(self, name: str, identity: str) -> None:
        """Record the identity (hash) of an input: a dataset subset, an autoencoder's weights, a cache."""
        self.inputs[name] = identity

    def set_verdict(self, verdict: str, text: str) -> None:
        """``verdict`` one of ``VERDICTS``; ``text`` says why in a sentence (numbers included)."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        self.verdict, self.verdict_text = verdict, text

    def get(self, name: str, subject: str = "") -> float | None:
        """Value of the first metric with that name (and subject, if given)."""
        for m in self.metrics:
            if m.name == name and (not subject or m.subject == subject):
                return m.value
        raise KeyError(f"no metric {name!r} for subject {subject!r} in record {self.claim}")

    def path(self, root: Path | None = None) -> Path:
        return (root or RUNS_DIR) / self.profile / "records" / f"{self.claim}.json"

    def save(self, root: Path | None = None) -> Path:
        """Stop the clock and write the record atomically; returns its path."""
        self.wall_time_s = time.time() - self.started
        path = self.path(root)
        atomic_write_json(path, asdict(self))
        return path


def load_record(path: str | Path) -> RunRecord:
    """Read one record JSON back.

    Raises:
        ValueError: naming the file if it is not a valid record.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        raw["metrics"] = [Metric(**{k: _num(v) for k, v in m.items()}) for m in raw.get("metrics", [])]
        return RunRecord(**raw)
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ValueError(f"{path} is not a result record ({e}); delete it and re-run its notebook") from e


def _num(v: Any) -> Any:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v) if isinstance(v, str) else v


def load_records(profile: str, root: Path | None = None) -> list[RunRecord]:
    """All records of a profile, sorted by claim id."""
    folder = (root or RUNS_DIR) / profile / "records"
    return sorted((load_record(p) for p in folder.glob("*.json")), key=lambda r: r.claim)


def records_table(records: Iterable[RunRecord]):
    """One row per metric of every record: a ``pandas.DataFrame`` with columns claim, subject, metric, ours, unit,
    paper, source, notes."""
    import pandas as pd

    rows = [dict(claim=r.claim, subject=m.subject, metric=m.name, ours=m.value, unit=m.unit, paper=m.paper,
                 source=m.source, notes=m.notes) for r in records for m in r.metrics]
    return pd.DataFrame(rows, columns=["claim", "subject", "metric", "ours", "unit", "paper", "source", "notes"])


def to_markdown(df, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (no extra dependency)."""

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_table(df, name: str, folder: Path) -> tuple[Path, Path]:
    """Write ``df`` as ``folder/name.csv`` and ``folder/name.md`` (atomically); returns both paths."""
    from .io import atomic_write_text

    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    atomic_write_text(csv, df.to_csv(index=False))
    atomic_write_text(md, to_markdown(df))
    return csv, md


def write_report(profile: str, folder: Path, root: Path | None = None) -> Path:
    """Build ``folder/report.md`` and ``folder/results.{csv,md}`` from the result records of ``profile`` only.

    The report lists each claim with its verdict (what was and was NOT reproduced at this scale), every metric beside
    the paper's value, each record's provenance (commit, wall time, inputs) and the figure index
    (``folder/index.json``, written by :func:`eqvae_lib.plotting.save_figure`).

    Raises:
        FileNotFoundError: when the profile has no records yet (run its notebooks first).
    """
    from .io import atomic_write_text

    records = [r for r in load_records(profile, root) if r.claim != "report"]
    if not records:
        raise FileNotFoundError(f"no result records for profile {profile!r} in {(root or RUNS_DIR) / profile}; "
                                f"run `make reproduce PROFILE={profile}` first")
    df = records_table(records)
    save_table(df, "results", folder)
    lines = [f"# EQ-VAE reproduction report — profile `{profile}`", "",
             "Built only from the result records of this profile's notebooks. Our numbers come from small-scale runs "
             "(see each claim's scale); the paper's are ImageNet/OpenImages 256 px with SD-VAE and Inception "
             "features. Compare directions and ratios, not absolute values.", ""]
    if profile == "smoke":
        lines += ["**Smoke profile: the numbers and verdicts below are meaningless** (512 images, a few steps per "
                  "model). They exist to test the pipeline end to end. For results, run `make reproduce` (profile "
                  "`cpu`).", ""]
    lines += ["## Verdicts", "", "| claim | verdict | summary |", "|---|---|---|"]
    lines += [f"| {r.claim} | {r.verdict} | {r.verdict_text.replace('|', '/')} |" for r in records]
    missing = [r for r in records if r.verdict in ("not reproduced at this scale", "not run at this scale",
                                                   "partly reproduced")]
    not_run = [c for c in CLAIMS if c not in {r.claim for r in records}]
    lines += ["", "## Not (fully) reproduced at this scale", ""]
    lines += [f"- **{r.claim}** ({r.verdict}): {r.verdict_text}" for r in missing]
    lines += [f"- **{c}** (not run in this profile): {CLAIMS[c][1]} — notebook `{CLAIMS[c][0]}`" for c in not_run]
    if not missing and not not_run:
        lines.append("- nothing")
    for r in records:
        sub = df[df.claim == r.claim].drop(columns=["claim"])
        scale = r.scale if (r.scale or "").startswith("Scale:") else f"Scale: {r.scale or 'n/a'}"  # scale_note's form
        lines += ["", f"## {r.claim}: {r.title}", "", scale + "  ", f"Verdict: **{r.verdict}** — "
                  f"{r.verdict_text}  ", f"Provenance: commit `{r.git_commit}`, wall time "
                  f"{(r.wall_time_s or 0) / 60:.1f} min, seeds {r.seeds}, inputs "
                  + ", ".join(f"{k}={v}" for k, v in r.inputs.items()), "", to_markdown(sub)]
    index_path = folder / "index.json"
    if index_path.exists():
        lines += ["## Figures", ""]
        lines += [f"- `{name}.png` — {caption}" for name, caption in json.loads(index_path.read_text()).items()]
    path = folder / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def cli_report(argv: list[str]) -> int:
    """``python -m eqvae_lib report [--profile cpu]``: rebuild ``figures/<profile>/report.md`` and ``results.*`` from
    the profile's result records. Returns 0, or 2 when the profile has no records."""
    import argparse
    import sys

    from .config import FIGURES_DIR, PROFILES

    p = argparse.ArgumentParser(prog="python -m eqvae_lib report", description="Rebuild the report of a profile "
                                "from its result records (runs/<profile>/records/*.json).")
    p.add_argument("--profile", default="cpu", choices=PROFILES)
    args = p.parse_args(argv)
    try:
        path = write_report(args.profile, FIGURES_DIR / args.profile)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
