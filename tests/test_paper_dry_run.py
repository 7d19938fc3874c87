"""A `paper`-profile dry run on CPU: the real paper path (SD-VAE kl-f8 architecture, an ImageFolder, Inception rFID)
at toy size, through the notebooks themselves (papermill), with a random-weight kl-f8 and a tiny image folder."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from eqvae_lib import autoencoders as ae
from eqvae_lib.experiment.config import REPO_ROOT


@pytest.mark.slow
def test_paper_profile_notebooks_run_on_a_tiny_image_folder(tmp_path):
    papermill = pytest.importorskip("papermill")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 4)):
        for i in range(n):
            d = tmp_path / split / f"class{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(d / f"{i}.png")
    ae.save_autoencoder(ae.build_autoencoder("kl-f8"), tmp_path / "kl-f8")
    overrides = dict(profile="paper", data_root_train=str(tmp_path / "train"), data_root_test=str(tmp_path / "val"),
                     base_vae=str(tmp_path / "kl-f8"), image_size=32, n_test=4, finetune_subset=4,
                     finetune_epochs=1, fig5_epochs=[1], finetune_batch=2, eval_n=4, eval_scales=[0.5], id_n=4,
                     id_bootstrap=2, disc_ndf=8, val_size=2, progress=False)
    # every output of the run (records, figures, caches) stays in tmp_path, never in the user's data/ or runs/
    env = {"EQVAE_RUNS": str(tmp_path / "runs"), "EQVAE_FIGURES": str(tmp_path / "figures"),
           "EQVAE_DATA": str(tmp_path / "data")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for nb in ("02_finetune", "04_table1_reconstruction"):
            papermill.execute_notebook(str(REPO_ROOT / "notebooks" / f"{nb}.ipynb"), str(tmp_path / f"{nb}.ipynb"),
                                       parameters=overrides, cwd=str(REPO_ROOT / "notebooks"), kernel_name="python3",
                                       progress_bar=False)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    rec = json.loads((tmp_path / "runs" / "paper" / "records" / "table1.json").read_text())
    by = {(m["subject"], m["name"]): m for m in rec["metrics"]}
    assert by[("base", "rFID")]["notes"].startswith("FID (Inception")  # the paper path uses Inception features
    assert by[("base", "delta_R")]["paper"] == 0.89 and by[("eq", "delta_R")]["value"] >= 0
    ft = json.loads((tmp_path / "runs" / "paper" / "records" / "table6_finetune.json").read_text())
    steps = {m["subject"]: m["value"] for m in ft["metrics"] if m["name"] == "finetune_steps"}
    assert steps == {"plain": 2.0, "eq": 2.0}  # 4 images, batch 2, 1 epoch: the same budget for both
    assert (tmp_path / "figures" / "paper" / "04_table1_table12.csv").is_file()
    assert (tmp_path / "data" / "cache" / "v2" / "ae-eq").is_dir()  # the fine-tunes were cached in the sandbox
