"""Atomic writes, hashes and result records."""

import json
import math
import shutil
import subprocess

import pytest
import torch

from eqvae_lib import io
from eqvae_lib.experiment.records import RunRecord, load_record, load_records, to_markdown, write_report


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "a.json"
    io.atomic_write_json(path, {"x": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(path) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind


def test_json_non_finite_values_round_trip_through_records(tmp_path):
    rec = RunRecord("c1", "t", "smoke", params={"a": 1})
    rec.add("psnr", math.inf, "dB", subject="ae")
    rec.add("x", math.nan)
    rec.set_verdict("measurement", "ok")
    back = load_record(rec.save(tmp_path))
    assert back.get("psnr", "ae") == math.inf and math.isnan(back.get("x"))
    assert back.wall_time_s is not None and back.wall_time_s >= 0
    with pytest.raises(ValueError, match="verdict"):
        rec.set_verdict("great", "")


def test_state_dict_hash_depends_on_values_and_handles_0d_and_batchnorm():
    a, b = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    assert io.state_dict_hash(a) == io.state_dict_hash(b)  # includes the 0-d num_batches_tracked
    with torch.no_grad():
        b.weight[0] += 1e-3
    assert io.state_dict_hash(a) != io.state_dict_hash(b)
    assert io.sha256_tensor(torch.tensor(1.0)) != io.sha256_tensor(torch.tensor(2.0))
    assert io.sha256_tensor(torch.zeros(2, 3)) != io.sha256_tensor(torch.zeros(3, 2))  # shape matters


def test_report_lists_not_reproduced_claims(tmp_path):
    for claim, scale in (("table1", "Scale: tiny test"), ("fig7", "8 px toy")):  # scale_note's form, or a bare text
        r = RunRecord(claim, f"claim {claim}", "smoke")
        r.add("delta_R", 0.5, subject="eq")
        r.add("delta_R", 1.0, subject="base")
        r.set_verdict("measurement", f"because {claim}")
        r.scale = scale
        r.save(tmp_path)
    assert [r.claim for r in load_records("smoke", tmp_path)] == ["fig7", "table1"]
    report = write_report("smoke", tmp_path / "fig", root=tmp_path).read_text()
    section = report.split("## Not reproduced at this scale")[1].split("##")[0]
    assert "**table1_delta_R** (not testable at this scale)" in section  # one replicate
    assert "Scale: tiny test  " in report and "Scale: 8 px toy  " in report and "Scale: Scale" not in report
    assert "verdicts below are meaningless" in report  # a smoke report says so
    assert (tmp_path / "fig" / "measurements.csv").read_text().count("\n") == 5  # header + 4 metrics
    assert sorted(p.name for p in (tmp_path / "fig" / "records").iterdir()) == ["fig7.json", "table1.json"]
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        write_report("cpu", tmp_path / "fig-cpu", root=tmp_path)


def test_markdown_table_escapes_pipes():
    import pandas as pd

    md = to_markdown(pd.DataFrame({"a": ["x|y"], "b": [1.23456]}))
    assert "x\\|y" in md and "1.235" in md


def test_git_commit_marks_code_changes_dirty_but_not_figure_outputs(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git not installed")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "report.md").write_text("old\n")
    (tmp_path / "lib.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "init")
    head = git("rev-parse", "HEAD")
    monkeypatch.setattr(io, "REPO_ROOT", tmp_path)
    assert io.git_commit() == head
    (tmp_path / "figures" / "report.md").write_text("new\n")  # a notebook rewrote a committed figure
    assert io.git_commit() == head
    (tmp_path / "lib.py").write_text("x = 2\n")  # the code changed
    assert io.git_commit() == head + "-dirty"


def test_scale_note_names_the_papers_autoencoder_and_only_off_the_paper_profile():
    from eqvae_lib.experiment.plotting import scale_note

    assert scale_note("Fashion-MNIST", 32, "vq-f4 VQ", "cpu-full", paper_ae="VQ-GAN") == (
        "Scale: Fashion-MNIST 32 px, vq-f4 VQ, profile cpu-full (not the paper's ImageNet 256 px / VQ-GAN).")
    assert "SD-VAE" in scale_note("Fashion-MNIST", 32, "small-f4 AE", "cpu")
    assert "not the paper's" not in scale_note("ImageNet", 256, "SD-VAE", "paper", paper_ae="VQ-GAN")
