"""The audit command on tiny random diffusers autoencoders, including bad input (exit code 2)."""

import json

import pytest
import torch

from eqvae_lib.metrics.audit import cli_audit


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    from eqvae_lib.autoencoders import build_autoencoder, save_autoencoder

    root = tmp_path_factory.mktemp("vaes")
    small = dict(block_out_channels=(16, 16, 16), norm_num_groups=8, latent_channels=2)
    torch.manual_seed(0)
    a = save_autoencoder(build_autoencoder("small-f4", **small), root / "vae_a")
    torch.manual_seed(1)
    b = save_autoencoder(build_autoencoder("small-f4", **small), root / "vae_b")
    rgb = save_autoencoder(build_autoencoder("small-f4", in_channels=3, **small), root / "vae_rgb")
    return {"a": str(a), "b": str(b), "rgb": str(rgb), "root": root}


def test_audit_compare_writes_json_and_png(vaes, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli_audit(["--vae", vaes["a"], "--compare", vaes["b"], "--images", "fashion-mnist", "--n", "10",
                    "--out", str(out), "--no-lpips"])
    assert rc == 0
    rec = json.loads((out / "audit.json").read_text())
    assert (out / "audit.png").stat().st_size > 1000
    assert [r["name"] for r in rec["autoencoders"]] == ["vae_a", "vae_b"]
    r = rec["autoencoders"][0]
    assert r["equivariance"]["latent"] == "mean" and r["reconstruction"]["latent"] == "sample"
    assert set(r["equivariance"]["per_transform"]) == {"rot90", "rot180", "rot270", "s0.25", "s0.50", "s0.75"}
    assert r["equivariance"]["delta_R"] > 0 and r["intrinsic_dimension"]["n_points"] == 10
    assert set(r["decoder_equivariance"]["per_scale"]) == {"0.25", "0.5", "0.75"}
    assert r["downsample_factor"] == 4 and r["weights_hash"] != rec["autoencoders"][1]["weights_hash"]
    assert "Δ_R" in capsys.readouterr().out
    # issue #16: every metric says what it measured (raw latents by default, posterior, model, images)
    for part in ("equivariance", "decoder_equivariance", "reconstruction", "intrinsic_dimension"):
        inp = r[part]["inputs"]
        assert inp["weights_hash"] == r["weights_hash"] and "fashion-mnist test split" in inp["image_set"], part
    assert r["equivariance"]["inputs"]["latent_space"] == "raw" == rec["settings"]["latent_space"]
    assert r["equivariance"]["inputs"]["posterior"] == "posterior mean"
    assert r["reconstruction"]["inputs"]["posterior"] == "posterior sample"
    assert r["equivariance"]["inputs"]["images"]["n"] == 10 and r["equivariance"]["inputs"]["images"]["shape_chw"] == [
        1, 32, 32]
    assert "tau(x) of the same" in r["decoder_equivariance"]["reference"]
    assert rec["image_inputs"]["dataset"] == "fashion-mnist" and rec["image_inputs"]["conversions"]


def test_not_a_model_gives_exit_2(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    rc = cli_audit(["--vae", str(tmp_path / "junk"), "--images", "fashion-mnist", "--n", "4"])
    assert rc == 2 and "could not be loaded" in capsys.readouterr().err


def test_empty_image_folder_gives_exit_2(vaes, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = cli_audit(["--vae", vaes["a"], "--images", str(tmp_path / "empty"), "--n", "4", "--size", "32"])
    assert rc == 2 and "no readable image" in capsys.readouterr().err


def test_wrong_channel_count_gives_exit_2(vaes, tmp_path, capsys):
    from PIL import Image
    import numpy as np

    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    rc = cli_audit(["--vae", vaes["a"], "--images", str(folder), "--n", "4", "--size", "32"])
    err = capsys.readouterr().err
    assert rc == 2 and "3-channel" in err and "expects 1" in err
    rc = cli_audit(["--vae", vaes["a"], "--compare", vaes["rgb"], "--images", "fashion-mnist", "--n", "4"])
    assert rc == 2


def test_bad_scales_and_unknown_images_give_exit_2(vaes, capsys):
    assert cli_audit(["--vae", vaes["a"], "--images", "fashion-mnist", "--scales", "0.3"]) == 2
    assert "whole cells" in capsys.readouterr().err
    assert cli_audit(["--vae", vaes["a"], "--images", "no-such-dataset-or-dir"]) == 2
