"""Result records with provenance, and the report's tables built only from them.

One JSON record per notebook run, at ``runs/<profile>/records/<claim>.json``: the claim id (e.g. ``"table1"``,
``"fig5"``), every metric with its unit, replicate seed and the paper's value where one exists, a verdict (one of
``verdicts.VERDICT_WORDS``, computed by :func:`claims.record_verdict`), the profile and all parameters,
seeds, the identities (hashes) of datasets and autoencoders, the git commit and the wall time. ``write_report`` copies
a profile's records beside its figures (``figures/<profile>/records/``, committed) and builds ``results.csv`` (one row
per claim of :data:`claims.CLAIMS`), ``measurements.csv`` (every metric), ``report.md`` and the README's
results tables from them only.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..io import atomic_write_json, atomic_write_text, git_commit
from .claims import COLUMNS, check_rows, evaluate, record_verdict
from .config import FIGURES_DIR, PROFILES, REPO_ROOT, RUNS_DIR, load_profile
from .verdicts import VERDICT_WORDS

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

#: The only verdict words (issue #14): see :mod:`verdicts`.
VERDICTS = VERDICT_WORDS


@dataclass
class Metric:
    """One number: ``name`` (e.g. ``"rFID"``), ``value``, ``unit`` (``"dB"``, ``"cells"``, ``""``), the autoencoder or
    model it belongs to (``subject``), the paper's value and where it comes from, free notes (e.g. the feature
    extractor) and ``seed``: the replicate seed s when the value belongs to one replicate (a fine-tune with seed s and
    its generators with seed s), ``None`` for a single or aggregated value."""

    name: str
    value: float | None
    unit: str = ""
    subject: str = ""
    paper: float | None = None
    source: str = ""
    notes: str = ""
    seed: int | None = None


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
    verdict: str = "not run in this profile"
    verdict_text: str = ""
    scale: str = ""
    figures: list[str] = field(default_factory=list)
    git_commit: str = field(default_factory=git_commit)
    started: float = field(default_factory=time.time)
    wall_time_s: float | None = None
    host: str = field(default_factory=lambda: f"{platform.node()} ({platform.machine()}, "
                                              f"python {platform.python_version()})")
    origin: str = ""

    def add(self, name: str, value: float | None, unit: str = "", subject: str = "", paper: float | None = None,
            source: str = "", notes: str = "", seed: int | None = None) -> Metric:
        """Append a metric and return it. ``value`` is stored as a float (``None`` for "not computed"); ``seed`` marks
        a per-replicate value (see :class:`Metric`)."""
        m = Metric(name, None if value is None else float(value), unit, subject, paper, source, notes,
                   None if seed is None else int(seed))
        self.metrics.append(m)
        return m

    def add_input(self, name: str, identity: str) -> None:
        """Record the identity (hash) of an input: a dataset subset, an autoencoder's weights, a cache."""
        self.inputs[name] = identity

    def set_verdict(self, verdict: str, text: str) -> None:
        """``verdict`` one of ``VERDICTS``; ``text`` says why in a sentence (numbers included). Notebooks pass
        :func:`claims.record_verdict` ``(self)``, never a word of their own."""
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
    paper, source, notes, seed (the replicate seed; empty for single or aggregated values)."""
    rows = [dict(claim=r.claim, subject=m.subject, metric=m.name, ours=m.value, unit=m.unit, paper=m.paper,
                 source=m.source, notes=m.notes, seed=m.seed) for r in records for m in r.metrics]
    return pd.DataFrame(rows, columns=["claim", "subject", "metric", "ours", "unit", "paper", "source", "notes",
                                       "seed"])


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
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    atomic_write_text(csv, df.to_csv(index=False))
    atomic_write_text(md, to_markdown(df))
    return csv, md


def records_dir(profile: str, folder: Path | None = None) -> Path:
    """Where a profile's records are committed: ``figures/<profile>/records/`` (or ``folder/records``)."""
    return (folder or FIGURES_DIR / profile) / "records"


def collect_records(profile: str, folder: Path, root: Path | None = None) -> list[RunRecord]:
    """Copy the run's records (``<root>/<profile>/records/*.json``, default ``runs/``) into ``folder/records/`` (kept
    beside the figures and committed) and return every record found there, sorted by claim id; the ``report`` record
    is skipped. A record already beside the figures and not re-run stays (its ``origin`` says where it came from)."""
    src = (root or RUNS_DIR) / profile / "records"
    dst = folder / "records"
    if src.is_dir() and src.resolve() != dst.resolve():
        dst.mkdir(parents=True, exist_ok=True)
        for p in sorted(src.glob("*.json")):
            if p.stem != "report":
                shutil.copyfile(p, dst / p.name)
    if not dst.is_dir():
        return []
    return sorted((load_record(p) for p in dst.glob("*.json") if p.stem != "report"), key=lambda r: r.claim)


def _fmt(v: Any, nd: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, (int, float)):
        return f"{v:.0f}" if abs(v) >= 1000 else format(v, nd)
    return str(v)


def _effect_cell(row: dict) -> str:
    eff = _fmt(row.get("effect"))
    if not eff:
        return ""
    lo, hi = _fmt(row.get("effect_ci_low")), _fmt(row.get("effect_ci_high"))
    if row.get("metric") == "ID~gFID":
        return f"r = {eff} [{lo}, {hi}]" if lo and hi else f"r = {eff} (not independent autoencoders: no interval)"
    if lo and hi:
        return f"{eff} [{lo}, {hi}]"
    if _fmt(row.get("cond_ci_low")):
        return (f"{eff} (one replicate; generator seeds only: [{_fmt(row['cond_ci_low'])}, "
                f"{_fmt(row['cond_ci_high'])}])")
    return f"{eff} (one replicate, no interval)"


def claims_markdown(rows: list[dict]) -> str:
    """The compact claims table (README and report): claim, paper ref, ours vs comparator, effect [95% CI], k, the
    paper's effect, primary, verdict. Numbers only from ``rows`` (results.csv)."""
    lines = ["| claim | paper | ours (subject vs comparator) | effect [interval] | k | paper effect | primary | "
             "verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("ours") is None and r["verdict"] == "not testable at this scale":
            ours = f"not reached ({r['subject']})" if "to_base_final" in str(r.get("metric")) else "no value"
        elif r["verdict"] == "measurement":
            ours = f"{_fmt(r.get('ours'))} ({r['subject']})"
        elif r.get("comparator"):
            ours = f"{_fmt(r.get('ours'))} ({r['subject']}) vs {_fmt(r.get('comparator_value'))} ({r['comparator']})"
        else:
            ours = _fmt(r.get("ours"))
        cells = [r["claim"], r.get("ref") or "", ours, _effect_cell(r), _fmt(r.get("n_replicates")),
                 _fmt(r.get("paper_effect")), "yes" if r.get("primary") in (True, "True", "true", 1) else "",
                 r["verdict"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def results_rows(records: list[RunRecord]) -> list[dict]:
    """One verdict row per claim of :data:`claims.CLAIMS` (checked by :func:`claims.check_rows`)."""
    rows = evaluate(records)
    check_rows(rows)
    return rows


def write_report(profile: str, folder: Path, root: Path | None = None) -> Path:
    """Build ``folder/results.{csv,md}`` (one verdict row per claim), ``folder/measurements.{csv,md}`` (every metric)
    and ``folder/report.md`` from the result records of ``profile`` only (copied first into ``folder/records/``, see
    :func:`collect_records`). Each record's verdict line in ``report.md`` is read from ``results.csv``'s rows
    (:func:`claims.record_verdict` with ``rows``). The verdict stored in a record is its notebook's, judged with the
    records that existed when it ran; ``results.csv`` and ``report.md`` hold the run's verdicts.

    Raises:
        FileNotFoundError: when the profile has no records yet (run its notebooks first).
    """
    records = collect_records(profile, folder, root)
    if not records:
        raise FileNotFoundError(f"no result records for profile {profile!r} in {(root or RUNS_DIR) / profile} or "
                                f"{folder / 'records'}; run `make reproduce PROFILE={profile}` first")
    rows = results_rows(records)
    res = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_text(folder / "results.csv", res.to_csv(index=False))
    atomic_write_text(folder / "results.md", claims_markdown(rows))
    df = records_table(records)
    save_table(df, "measurements", folder)
    lines = [f"# EQ-VAE reproduction report — profile `{profile}`", "",
             "Built only from the result records of this profile's notebooks (`records/`) and the claim table "
             "(`eqvae_lib/experiment/claims.py`); verdict rules in `eqvae_lib/experiment/verdicts.py`. Our numbers "
             "come from small-scale "
             "runs (see each record's scale); the paper's are ImageNet/OpenImages 256 px with SD-VAE and Inception "
             "features. Compare directions and ratios, not absolute values.", "",
             "**All results are conditional on one base autoencoder.** A replicate is one fine-tune with seed s plus "
             "the generators trained on it with seed s; an interval is a t interval over k paired replicate "
             "differences (primary claims: Holm-adjusted over the fixed family of 6). One replicate (k = 1) gives no "
             "interval and the verdict `not testable at this scale`; an interval over generator seeds on one "
             "fine-tune is shown beside it as *conditional* (generator noise only). An effect whose interval "
             "contains the null value is *no measurable difference*.", ""]
    if profile == "smoke":
        lines += ["**Smoke profile: the numbers and verdicts below are meaningless** (512 images, a few steps per "
                  "model). They exist to test the pipeline end to end. For results, run `make reproduce` (profile "
                  "`cpu`).", ""]
    origins = sorted({r.origin for r in records if r.origin})
    if origins:
        lines += ["Records' origin: " + "; ".join(origins), ""]
    lines += ["## Verdicts per claim", "", claims_markdown(rows), verdict_tally(rows), "",
              "## Not reproduced at this scale", ""]
    lines += [f"- **{r['claim']}** ({r['verdict']}): {r['verdict_text']}" for r in rows
              if r["verdict"] not in ("reproduced", "measurement")]
    for r in records:
        word, text = record_verdict(r, records, rows)  # from results.csv's own rows: the same verdicts
        sub = df[df.claim == r.claim].drop(columns=["claim"])
        scale = r.scale if (r.scale or "").startswith("Scale:") else f"Scale: {r.scale or 'n/a'}"  # scale_note's form
        wall = f"{(r.wall_time_s or 0) / 60:.1f} min" if r.wall_time_s is not None else "n/a"
        lines += ["", f"## {r.claim}: {r.title}", "", scale + "  ", f"Verdict: **{word}** — {text}  ",
                  f"Provenance: commit `{r.git_commit}`, wall time {wall}, seeds {r.seeds}, inputs "
                  + ", ".join(f"{k}={v}" for k, v in r.inputs.items()), "", to_markdown(sub)]
    index_path = folder / "index.json"
    if index_path.exists():
        lines += ["## Figures", ""]
        lines += [f"- `{name}.png` — {caption}" for name, caption in json.loads(index_path.read_text()).items()]
    path = folder / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# --- re-derivation of the committed reference runs from their tables (issue #14, item 7) ---

_LEGACY_COLUMNS = ["claim", "subject", "metric", "ours", "unit", "paper", "source", "notes"]
_PROV = re.compile(r"^Provenance: commit `(?P<commit>[^`]*)`, wall time (?P<wall>[\d.]+) min, seeds (?P<seeds>\[[^]]*\]),"
                   r" inputs ?(?P<inputs>.*)$")


def records_from_tables(profile: str, folder: Path) -> list[RunRecord]:
    """Rebuild the result records of a committed reference run from its committed tables, for runs whose JSON records
    were not committed: metrics from ``folder/measurements.csv`` (or a ``results.csv`` still in the per-metric
    format), title / scale / provenance from ``folder/report.md``, the sample-count parameters (``eval_n``, ``id_n``,
    ``gen_fid_n``, ``inception_n``) from ``profiles/<profile>.yaml``. Each record's ``origin`` says so; the old verdict
    words are dropped (they are recomputed from the claim table). The seeds are what the tables say (report.md's
    provenance line, a metric's ``seed`` column) or nothing: today's ``replicate_seeds`` are never stamped onto
    protocol-v1 runs (they ran generator seeds on ONE fine-tune).

    Raises:
        FileNotFoundError: neither table exists in ``folder``.
    """
    src = next((p for p in (folder / "measurements.csv", folder / "results.csv")
                if p.is_file() and list(pd.read_csv(p, nrows=0).columns)[:8] == _LEGACY_COLUMNS), None)
    if src is None:
        raise FileNotFoundError(f"no per-metric table (measurements.csv, or results.csv with columns "
                                f"{_LEGACY_COLUMNS}) in {folder}")
    df = pd.read_csv(src, keep_default_na=False, na_values=[""])
    meta: dict[str, dict] = {}
    report = folder / "report.md"
    if report.is_file():
        claim = None
        for line in report.read_text().splitlines():
            m = re.match(r"^## (\w+): (.+)$", line)
            if m:
                claim = m.group(1)
                meta[claim] = dict(title=m.group(2))
            elif claim and line.startswith("Scale:"):
                meta[claim]["scale"] = line.strip()
            elif claim and line.startswith("Provenance:"):
                p = _PROV.match(line.strip())
                if p:
                    meta[claim].update(commit=p["commit"], wall=float(p["wall"]) * 60, seeds=json.loads(p["seeds"]),
                                       inputs=dict(kv.split("=", 1) for kv in p["inputs"].split(", ") if "=" in kv))
    prof = load_profile(profile)
    params = {k: prof[k] for k in ("eval_n", "id_n", "gen_fid_n", "inception_n") if k in prof}
    out = []
    for claim, part in df.groupby("claim", sort=True):
        info = meta.get(claim, {})
        rec = RunRecord(claim, info.get("title", claim), profile, params=dict(params), seeds=info.get("seeds", []),
                        inputs=info.get("inputs", {}), scale=info.get("scale", ""),
                        git_commit=info.get("commit", "unknown"),
                        started=0.0,
                        origin=f"re-derived from the committed per-metric table of figures/{folder.name} (results.csv "
                               f"before issue #14, measurements.csv since) and its report.md: the run's JSON records "
                               f"were not committed; start time unknown; sample-count parameters from "
                               f"profiles/{profile}.yaml")
        rec.wall_time_s = info.get("wall")
        for row in part.itertuples(index=False):
            def val(v: Any) -> Any:
                return None if isinstance(v, float) and math.isnan(v) else v

            seed = _float(getattr(row, "seed", None))
            rec.metrics.append(Metric(str(row.metric), _float(row.ours), str(val(row.unit) or ""),
                                      str(val(row.subject) or ""), _float(row.paper), str(val(row.source) or ""),
                                      str(val(row.notes) or ""), None if seed is None or math.isnan(seed)
                                      else int(seed)))
        out.append(rec)
    return out


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def save_records_beside_figures(records: Iterable[RunRecord], folder: Path) -> list[Path]:
    """Write records (with their computed verdicts) to ``folder/records/<claim>.json`` without touching their wall
    time; returns the paths."""
    paths = []
    records = list(records)
    rows = evaluate(records)
    for r in records:
        r.set_verdict(*record_verdict(r, records, rows))
        path = folder / "records" / f"{r.claim}.json"
        atomic_write_json(path, asdict(r))
        paths.append(path)
    return paths


# --- README results tables (between markers) ---

def verdict_tally(rows: list[dict]) -> str:
    """One sentence counting the verdicts of ``rows`` (results.csv rows), primary claims first, e.g. ``"Verdicts of
    the 6 primary claims: 4 reproduced, 2 within noise. Of all 20 comparisons: …"``; measurements and claims not
    run are not comparisons and are left out. Words in the order of :data:`VERDICT_WORDS`."""
    def count(rs: list[dict]) -> str:
        return ", ".join(f"{n} {w}" for w in VERDICT_WORDS if (n := sum(r["verdict"] == w for r in rs)))
    comparisons = [r for r in rows if r["verdict"] not in ("measurement", "not run in this profile")]
    primary = [r for r in comparisons if r.get("primary") in (True, "True", "true", 1)]
    if not comparisons:
        return "No comparison in this profile's results."
    return ((f"Verdicts of the {len(primary)} primary claims: {count(primary)}. " if primary else "")
            + f"Of all {len(comparisons)} comparisons: {count(comparisons)}.")


def readme_block(profile: str, rows: list[dict]) -> str:
    """The README's results block for ``profile``: the markers, the claims table built from ``rows``, the count of its
    verdicts (:func:`verdict_tally`; claims not run in this profile are named in one line below it) and nothing typed
    by hand."""
    shown = [r for r in rows if r["verdict"] != "not run in this profile"]
    not_run = [r["claim"] for r in rows if r["verdict"] == "not run in this profile"]
    tail = f"\n{verdict_tally(rows)}\n" + (f"\nNot run in this profile: {', '.join(not_run)}.\n" if not_run else "")
    return (f"<!-- results:{profile} -->\n"
            f"<!-- generated by `python -m eqvae_lib report --profile {profile} --readme` from "
            f"figures/{profile}/results.csv; do not edit by hand -->\n" + claims_markdown(shown) + tail
            + f"<!-- /results:{profile} -->")


def read_results_csv(path: Path | io.StringIO) -> list[dict]:
    """Rows of a ``results.csv`` (a path or an open text buffer) as dicts with numbers as floats (empty cells →
    ``None``)."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    rows = []
    for rec in df.to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
    for r in rows:
        r["primary"] = r.get("primary") in (True, "True", "true", 1)
    return rows


# --- README wall-time tables (between markers), from the records' own clocks ---

#: the largest gap (s) between one notebook's end and the next one's start for both to count as one run of
#: ``make reproduce`` (papermill starts a kernel per notebook: seconds); a notebook that started more than this before
#: the previous one ended (out of order, or overlapping) breaks the run too
ONE_RUN_GAP_S = 300.0
#: metric a notebook adds (subject ``"notebook"``) when its training result contains the work of earlier runs of the
#: notebook: resumed from their checkpoint after an interruption, or loaded finished from the cache (value: how many
#: earlier runs; :func:`earlier_runs`). Its record's clock then covers the last run only.
EARLIER_RUNS_METRIC = "earlier_runs"
#: notebook 00's throughput rows shown beside the times (subject of ``stage_throughput``: label)
THROUGHPUT_SHOWN = {"ae_pretrain": "AE pretraining step without the GAN", "ae_pretrain_gan": "with the GAN",
                    "gen_train_sit": "SiT training", "gen_train_dit": "DiT training"}


def earlier_runs(log_path: str | Path, started: float) -> int:
    """How many earlier runs the training result logged in ``log_path`` (the ``log.jsonl`` of
    :func:`eqvae_lib.train_ae.train_autoencoder`) contains, seen from a notebook run that started at ``started`` (Unix
    time, the record's start): the log's ``{"kind": "event", "event": "resume"}`` lines after its last ``"start"``
    event (each continued an interrupted run; a run started over with ``resume=False`` appends to the old log), plus
    one when the log was last written before ``started`` (the training finished in an earlier run and this one loaded
    it from the cache). 0 for a training run from empty caches within this run.

    Raises:
        FileNotFoundError: ``log_path`` does not exist.
        ValueError: a line of ``log_path`` is not JSON (the message names the file and the line).
    """
    path = Path(log_path)
    loaded = path.stat().st_mtime < started
    n = 0
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{log_path}, line {i}: not JSON ({e}); is this a training log of the kit?") from None
        if row.get("kind") == "event" and row.get("event") == "start":
            n = 0
        n += row.get("kind") == "event" and row.get("event") == "resume"
    return n + loaded


def notebook_times(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per notebook of :data:`CLAIMS` with a record, in run order: ``notebook``, ``claim``, ``measured_min``
    (the record's own clock: from its creation in the notebook's second cell, after the imports and the config, to
    ``save`` in its last; ``NaN`` for a record re-derived from tables, whose clock is unknown), ``projected_min`` and
    ``projected_at_most`` (notebook 00's ``projected_wall_time`` for that notebook from empty caches, and whether it
    is a cap, i.e. its notes start with "at most"; ``NaN`` where none), ``started`` (UTC, ``YYYY-MM-DD HH:MM``),
    ``started_s`` (Unix time, s), ``gap_before_s`` (seconds between the previous measured notebook's end and this
    one's start, negative when it started before that end; ``NaN`` for the first or an unknown clock),
    ``earlier_runs`` (the record's :data:`EARLIER_RUNS_METRIC`: earlier runs whose training this one continued or
    loaded; 0 when absent),
    ``host`` and ``commit`` (12 hex, ``-dirty`` kept)."""
    by_claim = {r.claim: r for r in records}
    design = by_claim.get("design")
    projected = {m.subject: m for m in design.metrics if m.name == "projected_wall_time"} if design else {}
    rows, prev_end = [], None
    for claim, (notebook, _) in CLAIMS.items():
        r = by_claim.get(claim)
        if r is None:
            continue
        measured = not r.origin and r.wall_time_s is not None and r.started > 0
        gap = r.started - prev_end if measured and prev_end is not None else math.nan
        if measured:  # a record without a clock in between is skipped: the gap spans it
            prev_end = r.started + r.wall_time_s
        proj = projected.get(notebook)
        rows.append(dict(notebook=notebook, claim=claim, measured_min=r.wall_time_s / 60 if measured else math.nan,
                         projected_min=math.nan if proj is None or proj.value is None else float(proj.value),
                         projected_at_most=bool(proj is not None and proj.notes.startswith("at most")),
                         started=time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.started)) if measured else "",
                         started_s=r.started if measured else math.nan, gap_before_s=gap,
                         earlier_runs=_earlier_runs(r), host=r.host,
                         commit=r.git_commit[:12] + ("-dirty" if r.git_commit.endswith("-dirty") else "")))
    return pd.DataFrame(rows, columns=["notebook", "claim", "measured_min", "projected_min", "projected_at_most",
                                       "started", "started_s", "gap_before_s", "earlier_runs", "host",
                                       "commit"])


def _earlier_runs(r: RunRecord) -> int:
    """The record's :data:`EARLIER_RUNS_METRIC` (subject ``"notebook"``); 0 when absent or not a finite number."""
    v = next((m.value for m in r.metrics if m.name == EARLIER_RUNS_METRIC and m.subject == "notebook"), None)
    return int(v) if v is not None and math.isfinite(v) else 0


def times_block(profile: str, records: list[RunRecord]) -> str:
    """The README's wall-time block for ``profile`` (markers ``<!-- times:PROFILE -->``): per notebook the measured
    wall time of the committed record beside notebook 00's projection from empty caches (``≤`` for a cap), the
    machines and notebook 00's throughput, and the total. The total is called ONE run only when every notebook with a
    record has a clock, none says its training contains earlier runs (:data:`EARLIER_RUNS_METRIC`, recorded by
    notebook 01 for the base's training) and each started within :data:`ONE_RUN_GAP_S` after the previous one's end
    (not before it); otherwise it is the sum of separate runs, called an estimate, because the records do not store
    which caches each run found (notebook 01's base aside). A notebook with earlier runs is marked as timed for its
    last run only. Records re-derived from tables are never shown as measured. Nothing typed by hand."""
    df = notebook_times(records)
    lines = [f"<!-- times:{profile} -->",
             f"<!-- generated by `python -m eqvae_lib report --profile {profile} --readme` from "
             f"figures/{profile}/records/*.json (each record's own clock); do not edit by hand -->"]
    if df.empty:
        lines.append(f"No records of profile `{profile}` yet.")
        return "\n".join(lines + [f"<!-- /times:{profile} -->"])
    table = pd.DataFrame({
        "notebook": "`" + df.notebook + "`",
        "wall time, measured (min)": [
            "unknown (re-derived record, no clock)" if math.isnan(v)
            else f"{v:.1f}" + (f" (last of {n + 1} runs)" if n else "")
            for v, n in zip(df.measured_min, df.earlier_runs)],
        "projected by notebook 00 from empty caches (min)": [
            "" if math.isnan(v) else ("≤ " if most else "") + f"{v:.1f}"
            for v, most in zip(df.projected_min, df.projected_at_most)],
        "started (UTC)": df.started, "commit": "`" + df.commit + "`"})
    lines += ["", to_markdown(table).rstrip("\n"), ""]
    measured = df[df.measured_min.notna()]
    design = next((r for r in records if r.claim == "design"), None)
    if len(measured):
        hosts = sorted(set(measured.host))
        line = f"Machine{'s' if len(hosts) > 1 else ''} of the measured notebooks: {', '.join(hosts)}."
        if design is not None and not design.origin:
            rates = [f"{THROUGHPUT_SHOWN[m.subject]} {m.value:.0f} {m.unit}" for m in design.metrics
                     if m.name == "stage_throughput" and m.subject in THROUGHPUT_SHOWN and m.value is not None
                     and math.isfinite(m.value)]
            if rates:
                line += (f" Throughput on {design.host} as notebook 00 recorded it (measured by notebook 00 or by the "
                         "`make project` just before it): " + ", ".join(rates) + ".")
        lines.append(line)
        total = measured.measured_min.sum()
        gaps = measured.gap_before_s.dropna()
        breaks = int(((gaps > ONE_RUN_GAP_S) | (gaps < -ONE_RUN_GAP_S)).sum())
        unclocked = df.notebook[df.measured_min.isna()].tolist()
        reused = measured[measured.earlier_runs > 0]
        if breaks == 0 and not unclocked and reused.empty:
            end = (measured.started_s + 60 * measured.measured_min).max()
            span = (end - measured.started_s.min()) / 60
            lines.append(f"One run of {len(measured)} notebooks, back to back: {total:.0f} min in the notebooks, "
                         f"{span:.0f} min from the first notebook's start to the last one's end.")
        else:
            lines.append(f"Sum of the wall times of the {len(measured)} measured notebooks: {total:.0f} min, from "
                         + (f"at least {breaks + 1 + int(reused.earlier_runs.sum())} separate runs" if len(reused)
                            else f"{breaks + 1} separate runs" if breaks else "one run")
                         + (f"; without a clock: {', '.join(unclocked)}" if unclocked else "")
                         + ("; timed for their last run only, their training continued or loaded from earlier runs "
                            "that are not in the sum (too low by the time of those runs): "
                            + ", ".join(f"`{nb}` ({n} earlier run{'s' if n > 1 else ''})"
                                        for nb, n in zip(reused.notebook, reused.earlier_runs)) if len(reused) else "")
                         + ". An estimate of one run from empty caches, not a measurement of one: it holds only if "
                         "each notebook ran once, on the caches of the notebooks before it (the records do not store "
                         "which caches a run found).")
    missing = [nb for c, (nb, _) in CLAIMS.items() if c not in set(df.claim)]
    if missing:
        lines.append("No record (not run in this profile, or not yet): " + ", ".join(f"`{m}`" for m in missing) + ".")
    commits = sorted(set(df.commit))
    if len(commits) > 1:
        lines.append("The notebooks ran at different commits: " + ", ".join(f"`{c}`" for c in commits) + ".")
    return "\n".join(lines + [f"<!-- /times:{profile} -->"])


def replace_marked_block(text: str, name: str, block: str, where: str | Path = "README") -> str:
    """``text`` with the span from ``<!-- NAME -->`` to ``<!-- /NAME -->`` (markers included) replaced by ``block``
    (which brings its own markers), e.g. ``name = "times:cpu"`` or ``"plateau-pilot"``.

    Raises:
        ValueError: ``text`` (read from ``where``) has no such markers.
    """
    pat = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    if not pat.search(text):
        raise ValueError(f"{where} has no '<!-- {name} -->' ... '<!-- /{name} -->' markers")
    return pat.sub(lambda _: block, text)


def update_readme(profile: str, readme: Path | None = None, folder: Path | None = None) -> bool:
    """Replace the README blocks of ``profile`` between their markers: ``<!-- results:PROFILE -->`` … (the claims
    table built from ``figures/<profile>/results.csv``) and ``<!-- times:PROFILE -->`` … (:func:`times_block`, from
    ``figures/<profile>/records/``). Returns True when the README changed.

    Raises:
        ValueError: the README lacks either pair of markers (add them where the tables belong), or a row of
            ``results.csv`` has a word outside the verdict words or a ``reproduced`` its interval does not support
            (:func:`claims.check_rows`).
    """
    readme = readme or REPO_ROOT / "README.md"
    folder = folder or FIGURES_DIR / profile
    text = readme.read_text()
    rows = read_results_csv(folder / "results.csv")
    check_rows(rows)  # verdict words only, and no 'reproduced' without its interval
    new = replace_marked_block(text, f"results:{profile}", readme_block(profile, rows), readme)
    rdir = records_dir(profile, folder)
    records = [load_record(p) for p in sorted(rdir.glob("*.json")) if p.stem != "report"] if rdir.is_dir() else []
    new = replace_marked_block(new, f"times:{profile}", times_block(profile, records), readme)
    if new != text:
        atomic_write_text(readme, new)
    return new != text


# --- a user's run against the committed reference (issue #14, item 6) ---

def _prediction_band(lo: float, hi: float, k_ref: Any, user: dict | None, ref: dict) -> tuple[float, float]:
    """The reference interval [lo, hi] of a mean over ``k_ref`` replicates widened to the band of a new mean over the
    user's k replicates (see :func:`compare_to_reference`)."""
    k_ref = int(float(k_ref)) if k_ref not in (None, "") else 1
    k_user = int(float(user.get("n_replicates") or 1)) if user else 1
    widen = math.sqrt(1 + k_ref / max(k_user, 1))
    log = str(ref.get("null_value")) in ("1", "1.0") and float(lo) > 0
    a, b = (math.log(float(lo)), math.log(float(hi))) if log else (float(lo), float(hi))
    mid, half = (a + b) / 2, (b - a) / 2 * widen
    return (math.exp(mid - half), math.exp(mid + half)) if log else (mid - half, mid + half)


def _same_key(v: Any) -> str:
    """A definition column of a results row as text (``None``/NaN/empty → ``""``)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def compare_to_reference(user_rows: list[dict], reference_rows: list[dict]) -> list[dict]:
    """Claim by claim, does the user's effect lie inside the band the reference run predicts for it?

    The reference interval is the claim's replicate interval (``effect_ci_low/high``, k = ``n_replicates``) where
    there is one, else the generator-seed interval conditional on one fine-tune (``cond_ci_low/high``, k =
    ``cond_k``, marked as such). A confidence interval of the reference's *mean* is too narrow for another run's
    effect, so it is widened to the prediction band of a new mean of k_user replicates (``n_replicates`` of the user's
    row, default 1): half-width × √(1 + k/k_user) around the interval's centre (t interval: half-width = t·sd/√k);
    ratio claims (null value 1) on the log scale. Returns rows with
    claim, reference_effect, reference_low, reference_high, interval (``replicates``/``generator seeds only``/
    ``none``), user_effect, relative_difference ((user − reference) / |reference|: where the reference has no
    interval, this says how close a re-run came) and ``agreement``: ``inside`` / ``outside`` / ``no reference
    interval`` / ``not in your run`` / ``not in the reference`` / ``definition changed since the reference run``
    (the two rows of one claim id differ in metric, subject or comparator: different quantities, never compared).
    """
    users = {r["claim"]: r for r in user_rows}
    out = []
    for ref in reference_rows:
        c = ref["claim"]
        u = users.get(c)
        ue = None if u is None else u.get("effect")
        if ref.get("verdict") == "measurement":
            ue = None if u is None else u.get("ours")
            re_, lo, hi, kind = ref.get("ours"), None, None, "none"
        elif ref.get("effect_ci_low") is not None and ref.get("effect_ci_high") is not None:
            re_, kind = ref.get("effect"), "replicates"
            lo, hi = _prediction_band(ref["effect_ci_low"], ref["effect_ci_high"], ref.get("n_replicates"), u, ref)
        elif ref.get("cond_ci_low") is not None and ref.get("cond_ci_high") is not None:
            re_, kind = ref.get("effect"), "generator seeds only"
            lo, hi = _prediction_band(ref["cond_ci_low"], ref["cond_ci_high"], ref.get("cond_k"), u, ref)
        else:
            re_, lo, hi, kind = ref.get("effect"), None, None, "none"
        changed = u is not None and any(_same_key(u.get(k)) != _same_key(ref.get(k))
                                        for k in ("metric", "subject", "comparator"))
        if changed:
            agree = "definition changed since the reference run"
        elif re_ is None and ue is None:
            agree = "not in the reference" if u is not None else "not in your run"
        elif ue is None:
            agree = "not in your run"
        elif re_ is None:
            agree = "not in the reference"
        elif lo is None:
            agree = "no reference interval"
        else:
            agree = "inside" if lo <= ue <= hi else "outside"
        rel = (ue - re_) / abs(re_) if ue is not None and re_ not in (None, 0) else None
        out.append(dict(claim=c, reference_effect=re_, reference_low=lo, reference_high=hi, interval=kind,
                        user_effect=ue, relative_difference=rel, agreement=agree))
    in_reference = {ref["claim"] for ref in reference_rows}
    for u in user_rows:  # claims of your run that the reference never had (e.g. a v2 run against v1 references)
        if u["claim"] not in in_reference:
            ue = u.get("ours") if u.get("verdict") == "measurement" else u.get("effect")
            out.append(dict(claim=u["claim"], reference_effect=None, reference_low=None, reference_high=None,
                            interval="none", user_effect=ue, relative_difference=None,
                            agreement="not in the reference"))
    return out


def committed_results(profile: str, root: Path = REPO_ROOT) -> tuple[list[dict], str]:
    """The reference rows of ``figures/<profile>/results.csv`` as committed at git ``HEAD`` of ``root`` — not the
    working file, which ``make reproduce`` overwrites with your own run's results. Returns ``(rows, source)``;
    ``source`` names the file and commit. Outside a git checkout (or without git) the working file is read and
    ``source`` says that it may be your own run's.

    Raises:
        FileNotFoundError: the file is neither committed at HEAD nor present in the working tree.
        ValueError: the CSV cannot be parsed."""
    rel = f"figures/{profile}/results.csv"
    try:
        shown = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=root, capture_output=True, text=True, timeout=30)
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        shown = head = None
    if shown is not None and shown.returncode == 0:
        return read_results_csv(io.StringIO(shown.stdout)), f"{rel} as committed at {head.stdout.strip()}"
    path = Path(root) / rel
    if shown is not None and head.returncode == 0:  # a git checkout that does not hold the file at HEAD
        raise FileNotFoundError(f"{rel} is not committed at HEAD of {root}: no reference for profile {profile!r}; "
                                "pass --reference DIR (a folder holding a results.csv)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no reference results; pass --reference DIR")
    return read_results_csv(path), (f"{path} (working file, no git: if `make reproduce` rewrote it, it is your own "
                                    "run; pass --reference with a copy of the committed folder)")


def cli_compare_reference(argv: list[str]) -> int:
    """``python -m eqvae_lib compare-reference --profile cpu [--records DIR | --results CSV] [--reference DIR]``:
    print, claim by claim, whether your run's effect lies inside the committed reference interval. Returns 0, or 2
    when an input is missing."""
    p = argparse.ArgumentParser(prog="python -m eqvae_lib compare-reference",
                                description="Compare your run's effects with the committed reference intervals.")
    p.add_argument("--profile", default="cpu", choices=PROFILES)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--records", type=Path, help="folder of your result records (default runs/<profile>/records)")
    g.add_argument("--results", type=Path, help="your results.csv (instead of records)")
    p.add_argument("--reference", type=Path, help="reference folder holding a results.csv (default: "
                   "figures/<profile>/results.csv as committed at git HEAD, not as your run rewrote it)")
    args = p.parse_args(argv)
    try:
        if args.reference:
            source = args.reference / "results.csv"
            reference = read_results_csv(source)
        else:
            reference, source = committed_results(args.profile)
        print(f"reference: {source}")
        if args.results:
            user = read_results_csv(args.results)
        else:
            folder = args.records or RUNS_DIR / args.profile / "records"
            recs = [load_record(q) for q in sorted(Path(folder).glob("*.json")) if q.stem != "report"]
            if not recs:
                raise FileNotFoundError(f"no result records in {folder}; run the notebooks or pass --results")
            user = results_rows(recs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = pd.DataFrame(compare_to_reference(user, reference))
    print(to_markdown(table))
    counts = table.agreement.value_counts().to_dict()
    print("summary: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


def cli_report(argv: list[str]) -> int:
    """``python -m eqvae_lib report [--profile cpu] [--from-tables] [--readme]``: rebuild
    ``figures/<profile>/report.md``, ``results.*`` and ``measurements.*`` from the profile's result records
    (``runs/<profile>/records`` copied to ``figures/<profile>/records``). ``--from-tables`` first re-derives the records
    of a committed reference run from its committed tables (see :func:`records_from_tables`); ``--readme`` then
    rewrites the README's results block and wall-time block of the profile (:func:`update_readme`). Returns 0, or 2
    when the profile has no records."""
    p = argparse.ArgumentParser(prog="python -m eqvae_lib report", description="Rebuild the report of a profile "
                                "from its result records (runs/<profile>/records/*.json, figures/<profile>/records).")
    p.add_argument("--profile", default="cpu", choices=PROFILES)
    p.add_argument("--from-tables", action="store_true", help="re-derive the records from the committed tables")
    p.add_argument("--readme", action="store_true", help="rewrite the README's results table and wall-time table of the profile")
    p.add_argument("--overwrite-reference", action="store_true", help="rebuild the committed reference report of "
                   "the profile with today's claim set although this checkout has no run of its own")
    args = p.parse_args(argv)
    folder = FIGURES_DIR / args.profile
    own = (RUNS_DIR / args.profile / "records").is_dir()
    if not own and not args.overwrite_reference:
        print(f"error: {RUNS_DIR / args.profile / 'records'} does not exist: {folder} holds only the committed "
              "reference run, and rebuilding it with today's claim set rewrites its verdicts (claims whose "
              "definition changed since read 'not run'). Run the notebooks first, or pass --overwrite-reference "
              f"(undo with `git checkout {folder.relative_to(REPO_ROOT)} README.md`)", file=sys.stderr)
        return 2
    try:
        if args.from_tables:
            save_records_beside_figures(records_from_tables(args.profile, folder), folder)
        path = write_report(args.profile, folder)
        if args.readme:
            update_readme(args.profile)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
