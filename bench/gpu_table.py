"""The README's GPU table from a ``bench_gpu.py`` JSON.

``python bench/gpu_table.py bench/results/bench_gpu_loops_X.json`` (or the earlier ``bench_gpu_h200.json``) prints it (markdown); ``--readme README.md`` replaces the lines between ``<!-- gpu-table:start -->`` and
``<!-- gpu-table:end -->`` in that file instead (atomic write; an error names the file when the markers are missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

START, END = "<!-- gpu-table:start -->", "<!-- gpu-table:end -->"
NAMES = {"old_eager": "old loop (8bf3814), eager", "new_eager": "new loop, eager", "new_compiled": "new loop, compiled"}


def _num(x, fmt: str) -> str:
    """``fmt.format(x)`` for a finite number, else an em dash (missing, NaN, or a string such as "NaN")."""
    return fmt.format(x) if isinstance(x, (int, float)) and x == x else "—"


def table(res: dict) -> str:
    """Markdown: one row per (model, variant) with step time, throughput, TFLOP/s, fraction of peak, peak memory."""
    peak = res.get("peak_bf16_dense_tflops")
    lines = [f"Measured on one {res['device']} (dense bf16 peak {peak if peak else '?'} TFLOP/s), torch "
             f"{res['torch']}, commit {str(res['git_commit'])[:12]}, by `python bench/bench_gpu.py`; old loop = "
             f"commit {res.get('old_commit')}.", "",
             "| model | loop | step time | throughput | TFLOP/s | of bf16 peak | speed-up vs old | peak memory |",
             "|---|---|---|---|---|---|---|---|"]
    for mid, row in res["models"].items():
        for v, r in row["variants"].items():
            name = NAMES.get(v, v)
            if "samples_per_s" not in r:
                why = r.get("skipped") or r.get("error", "")
                lines.append(f"| {row['label']} | {name} | — | not measured: {why[:80]} | | | | |")
                continue
            frac = _num(r.get("fraction_of_peak"), "{:.0%}")
            sp = _num(row.get(f"speedup_{v}_over_old"), "{:.2f}x")
            lines.append(f"| {row['label']} | {name} | {_num(r['step_s'] * 1e3, '{:.0f} ms')} | "
                         f"{_num(r['samples_per_s'], '{:.0f}')} {row['unit']} | "
                         f"{_num(r.get('tflops_per_s'), '{:.0f}')} | {frac} | {sp} | {_num(r.get('peak_mem_GiB'), '{:.1f} GiB')} |")
    return "\n".join(lines) + "\n"


def legacy_table(res: dict) -> str:
    """Markdown of a result file of the earlier ``bench_gpu.py`` (keys ``gen``/``sampling``/``ae``, old loops only,
    no FLOP count): what was measured and what it means for the paper's run on that one GPU."""
    lines = [f"Measured on one {res['device']} (torch {res['torch']}, commit {str(res['git_commit'])[:12]}, "
             f"{res['date'][:10]}), old loops only, bf16 autocast, eager, by the earlier `bench/bench_gpu.py`.", "",
             "| what | measured | the paper's run on this one GPU |", "|---|---|---|"]
    for r in res.get("gen", []):
        lines.append(f"| {r['model']} training, batch 256 | {r['latents_per_s']:.0f} latents/s ({r['step_ms']:.0f} "
                     f"ms/step, {_num(r.get('peak_mem_GiB'), '{:.0f} GiB')}) | 400K steps: "
                     f"{r['hours_400k_steps']:.1f} h |")
    for r in res.get("sampling", []):
        lines.append(f"| {r['model']} sampling, {r['sampler'].upper()}, batch {r['batch']} | "
                     f"{r['images_per_s']:.1f} samples/s | 50K samples for gFID: {r['minutes_50k']:.0f} min |")
    for r in res.get("ae", []):
        lines.append(f"| EQ fine-tuning of {r['model']}, 256 px, micro-batch {r['micro_batch']}, without the LPIPS "
                     f"term | {r['images_per_s']:.0f} img/s | 5 epochs × 10K steps at batch 160: "
                     f"{r['hours_5x10k_steps_batch160']:.0f} h |")
    return "\n".join(lines) + "\n"


def render(res: dict) -> str:
    """The table of a result file of either format."""
    return table(res) if "models" in res else legacy_table(res)


def replace_in(readme: Path, text: str) -> None:
    """Put ``text`` between the markers of ``readme``. Raises ValueError naming the file when they are missing."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from eqvae_lib.io import atomic_write_text
    s = readme.read_text()
    if START not in s or END not in s or s.index(START) > s.index(END):
        raise ValueError(f"{readme}: add the lines {START!r} and {END!r} where the GPU table goes")
    head, rest = s.split(START, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(readme, head + START + "\n" + text + END + tail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", help="a bench_gpu.py result file")
    p.add_argument("--readme", help="replace the table between the markers in this file")
    args = p.parse_args(argv)
    text = render(json.loads(Path(args.json).read_text()))
    if args.readme:
        replace_in(Path(args.readme), text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
