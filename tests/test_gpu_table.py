"""The README's GPU table is generated from a committed bench_gpu.py result file (bench/gpu_table.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "bench" / "gpu_table.py")
gpu_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_table)


def test_readme_gpu_table_is_generated_from_a_committed_result_file():
    readme = (ROOT / "README.md").read_text()
    block = readme.split(gpu_table.START + "\n", 1)[1].split(gpu_table.END, 1)[0]
    rendered = {p.name: gpu_table.render(json.loads(p.read_text())) for p in (ROOT / "bench" / "results").glob("bench_gpu*.json")}
    assert block in rendered.values(), ("README's GPU table matches no bench/results/*.json: run `python "
                                        "bench/gpu_table.py bench/results/<file>.json --readme README.md`")


def test_new_format_rows_carry_fraction_of_peak_and_speedup():
    res = {"device": "NVIDIA H200", "torch": "2.x", "git_commit": "abc", "old_commit": "8bf3814",
           "peak_bf16_dense_tflops": 989.0,
           "models": {"dit": {"label": "DiT-B/2", "unit": "latents/s", "speedup_new_eager_over_old": 2.0,
                              "variants": {"old_eager": {"step_s": 0.2, "samples_per_s": 1280.0, "tflops_per_s": 176.6,
                                                         "fraction_of_peak": 0.1786, "peak_mem_GiB": 30.0},
                                           "new_eager": {"step_s": 0.1, "samples_per_s": 2560.0,
                                                         "tflops_per_s": 353.3, "fraction_of_peak": 0.3572,
                                                         "peak_mem_GiB": 31.0},
                                           "new_compiled": {"skipped": "over the time budget"}}}}}
    text = gpu_table.render(res)
    assert "| DiT-B/2 | old loop (8bf3814), eager | 200 ms | 1280 latents/s | 177 | 18% |" in text
    assert "| DiT-B/2 | new loop, eager | 100 ms | 2560 latents/s | 353 | 36% | 2.00x | 31.0 GiB |" in text
    assert "not measured: over the time budget" in text


def test_replace_in_refuses_a_file_without_markers(tmp_path):
    f = tmp_path / "README.md"
    f.write_text("no markers here\n")
    with pytest.raises(ValueError, match="gpu-table:start"):
        gpu_table.replace_in(f, "x\n")
    assert f.read_text() == "no markers here\n"
