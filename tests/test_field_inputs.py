"""Issue #16: real-world inputs that used to give silent wrong results — normalisation across export/import, refusals
of non-checkpoints and pickles, path-like arguments, CLI exit codes, permissions under a umask. Every input is made
here, small and synthetic."""

import json
import os
import pickle
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from eqvae_lib import autoencoders as ae
from eqvae_lib import io as kio

REPO = Path(__file__).resolve().parents[1]

# every normalisation flavour: (name, config fields); latent_norm must come back identical after a round trip
FLAVOURS = [
    ("sd-v1", dict(scaling_factor=0.18215)),
    ("sdxl", dict(scaling_factor=0.13025)),
    ("sd3", dict(scaling_factor=1.5305, shift_factor=0.0609)),
    ("kit-per-channel", dict(scaling_factor=1.0, latents_mean=[0.5, -0.25, 0.125, 2.0],
                             latents_std=[1.5, 0.75, 3.0, 0.5])),
]


def _ldm_able(**cfg):
    """A tiny AutoencoderKL the LDM layout can express (mid-block attention), sample_size 256 (≠ the 512 default)."""
    torch.manual_seed(0)
    return ae.build_autoencoder("small-f4", in_channels=3, block_out_channels=(16, 32, 32),
                                mid_block_add_attention=True, sample_size=256, **cfg)


def _same_config(a, b):
    sa, ka = ae.latent_norm(a)
    sb, kb = ae.latent_norm(b)
    assert torch.equal(sa, sb) and torch.equal(ka, kb)
    for k in ("sample_size", "in_channels", "out_channels", "latent_channels", "scaling_factor", "shift_factor",
              "latents_mean", "latents_std", "block_out_channels"):
        va, vb = getattr(a.config, k, None), getattr(b.config, k, None)
        assert (list(va) if isinstance(va, (list, tuple)) else va) == \
               (list(vb) if isinstance(vb, (list, tuple)) else vb), k


@pytest.mark.parametrize("name,cfg", FLAVOURS, ids=[f[0] for f in FLAVOURS])
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors", "folder"])
def test_every_normalisation_round_trips_exactly(tmp_path, name, cfg, suffix):
    vae = _ldm_able(**cfg)
    if suffix == "folder":
        path = ae.save_autoencoder(vae, tmp_path / "m")
    else:
        path = ae.export_ldm_checkpoint(vae, tmp_path / f"m{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ae.AssumedDefaultsWarning)  # the kit's own file: no assumed defaults
        back = ae.load_autoencoder(path)
    assert ae.weights_hash(back) == ae.weights_hash(vae)
    _same_config(back, vae)
    assert back.config.sample_size == 256


def _foreign_kl_f8_file(tmp_path, suffix=".ckpt"):
    """A released-SD-VAE-like LDM file: kl-f8 tensors only, no config (what the kit's export writes, minus it)."""
    torch.manual_seed(0)
    vae = ae.build_autoencoder("kl-f8", scaling_factor=0.13025)
    state = ae.diffusers_to_ldm_state_dict(vae)
    path = tmp_path / f"foreign{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": state}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    return vae, path


@pytest.mark.slow
def test_foreign_file_warns_defaults_and_option_supplies_them(tmp_path):
    vae, path = _foreign_kl_f8_file(tmp_path)
    with pytest.warns(ae.AssumedDefaultsWarning) as rec:
        back = ae.load_autoencoder(path)
    msg = str(rec[0].message)
    assert "\n" not in msg and "scaling_factor=0.18215" in msg and "sample_size=256" in msg and str(path) in msg
    assert back.config.scaling_factor == 0.18215 and back.config.sample_size == 256
    assert ae.weights_hash(back) == ae.weights_hash(vae)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ae.AssumedDefaultsWarning)
        sdxl = ae.load_autoencoder(path, config_overrides={"scaling_factor": 0.13025})
        sd3 = ae.load_autoencoder(path, config_overrides={"scaling_factor": 1.5305, "shift_factor": 0.0609})
    assert ae.latent_norm(sdxl).scale.tolist() == pytest.approx([0.13025] * 4)
    shift, scale = ae.latent_norm(sd3)
    assert shift.tolist() == pytest.approx([0.0609] * 4) and scale.tolist() == pytest.approx([1.5305] * 4)
    with pytest.raises(ValueError, match="latents_mean has 3 entries"):
        ae.load_autoencoder(path, config_overrides={"latents_mean": [0, 0, 0], "latents_std": [1, 1, 1]})
    with pytest.raises(ValueError, match="unknown key"):
        ae.load_autoencoder(path, config_overrides={"scale": 1.0})


def test_finetune_outputs_load_with_the_same_normalisation(tmp_path):
    """End to end: a model with SDXL's scaling factor, fine-tuned by the CLI; model/ and model.ckpt agree."""
    from PIL import Image

    from eqvae_lib.cli_ae import cli_finetune

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    base = _ldm_able(scaling_factor=0.13025)
    ae.save_autoencoder(base, tmp_path / "base")
    rc = cli_finetune(["--vae", str(tmp_path / "base"), "--data", str(tmp_path / "imgs"), "--size", "32",
                       "--batch-size", "2", "--steps", "1", "--perceptual", "none", "--disc-weight", "0",
                       "--val-size", "2", "--val-every", "0", "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    folder = ae.load_autoencoder(tmp_path / "run" / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ae.AssumedDefaultsWarning)
        ckpt = ae.load_autoencoder(tmp_path / "run" / "model.ckpt")
    assert ae.weights_hash(folder) == ae.weights_hash(ckpt)
    _same_config(folder, ckpt)
    assert ae.latent_norm(ckpt).scale.tolist() == pytest.approx([0.13025] * 4) and ckpt.config.sample_size == 256
    rec = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert rec["data"]["n_images"] == 4 and "resize" in rec["data"]["resize_crop"]


# ------------------------------------------------------------------------------------------------ refusals (5)
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _bad_files(tmp_path):
    rnd = tmp_path / "random.ckpt"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    raw = tmp_path / "raw_pickle.ckpt"
    raw.write_bytes(pickle.dumps(_Evil()))
    zipped = tmp_path / "torch_zip_pickle.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": _Evil()}, zipped)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    return {"not_checkpoint": [rnd, bad_st], "pickle": [raw, zipped]}


def test_non_checkpoints_and_pickles_are_refused_in_one_safe_line(tmp_path):
    files = _bad_files(tmp_path)
    for kind, paths in files.items():
        for p in paths:
            with pytest.raises(ae.CheckpointError) as e:
                ae.load_autoencoder(p)
            msg = str(e.value)
            assert "\n" not in msg and str(p) in msg and "weights_only=False" not in msg
            if kind == "pickle":
                assert "pickled Python objects" in msg and "safetensors" in msg
            else:
                assert "not a" in msg and "checkpoint" in msg


def _cli(*args, cwd, env_extra=None, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "eqvae_lib", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_refusals_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    """`audit --vae` / `finetune --vae` on random bytes, pickles and a missing relative or absolute path: exit 2 and
    one line on stderr (main(argv) in-process; one subprocess each below checks there is no traceback either)."""
    from eqvae_lib.__main__ import main

    monkeypatch.chdir(tmp_path)
    files = _bad_files(tmp_path)
    cases = [*files["not_checkpoint"], *files["pickle"], "missing_dir/vae", str(tmp_path / "missing_dir" / "vae")]
    for vae in cases:
        for cmd in (["audit", "--vae", str(vae), "--images", "fashion-mnist"],
                    ["finetune", "--vae", str(vae), "--data", "fashion-mnist", "--steps", "1"]):
            assert main(cmd) == 2, cmd
            err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
            assert len(err) == 1 and "weights_only=False" not in err[0], err
            assert str(vae) in err[0]
            if "missing_dir" in str(vae):
                assert "no such file or folder (a local path" in err[0]


@pytest.mark.slow
def test_cli_subprocess_random_bytes_and_missing_dir(tmp_path):
    rnd = _bad_files(tmp_path)["not_checkpoint"][0]
    for cmd in (["finetune", "--vae", str(rnd), "--data", "fashion-mnist"],
                ["audit", "--vae", "missing_dir/vae", "--images", "fashion-mnist"]):
        r = _cli(*cmd, cwd=tmp_path)
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr


def test_missing_path_like_vae_is_reported_before_the_network(tmp_path, monkeypatch):
    """`missing_dir/vae` (relative) is a missing local path: reported without any hub attempt when the hub cannot
    be reached, and always first."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ae, "_hub_reachable", lambda timeout=3.0: (False, "huggingface.co"))
    calls = []
    monkeypatch.setattr("diffusers.AutoencoderKL.load_config",
                        lambda *a, **k: calls.append(k) or (_ for _ in ()).throw(OSError("not cached")))
    with pytest.raises(FileNotFoundError, match=r"^missing_dir/vae: no such file or folder \(a local path"):
        ae.load_autoencoder("missing_dir/vae")
    assert all(k.get("local_files_only") for k in calls)  # only the local cache was consulted
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        ae.load_autoencoder("runs/vae")  # first component exists here: a path, never a hub id
    assert not ae._is_hub_id("runs/vae") and ae._is_hub_id("stabilityai/sd-vae-ft-ema")
    assert not ae._is_hub_id("a/b/c") and not ae._is_hub_id("x/model.ckpt") and not ae._is_hub_id("./x")


def test_cli_help_documents_conversions():
    from eqvae_lib.metrics.audit import cli_audit
    from eqvae_lib.cli_ae import cli_finetune

    for fn in (cli_audit, cli_finetune):
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert fn(["--help"]) == 0
        text = " ".join(buf.getvalue().split())
        assert "alpha channel" in text and "dropped" in text and "repeated to 3 channels" in text
        assert "16-bit" in text and "resized" in text and "--scaling-factor" in text


# --------------------------------------------------------------------------------------------- permissions (7)
@pytest.mark.parametrize("umask,fmode,dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_follow_the_umask(tmp_path, umask, fmode, dmode):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old = os.umask(umask)
    try:
        assert kio.umask_mode() == fmode and kio.umask_mode(folder=True) == dmode
        kio.atomic_write_json(tmp_path / "rec" / "record.json", {"a": 1})
        kio.atomic_write_text(tmp_path / "t.txt", "x")
        kio.atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "w.pt")
        vae = _ldm_able()
        folder = ae.save_autoencoder(vae, tmp_path / "model")
        ae.export_ldm_checkpoint(vae, tmp_path / "model.safetensors")
        ae.export_ldm_checkpoint(vae, tmp_path / "model.ckpt")
        fig = plt.figure()
        with kio.atomic_path(tmp_path / "fig.png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
    finally:
        os.umask(old)
    files = [tmp_path / "rec" / "record.json", tmp_path / "t.txt", tmp_path / "w.pt", tmp_path / "model.safetensors",
             tmp_path / "model.ckpt", tmp_path / "fig.png", folder / "config.json",
             folder / "diffusion_pytorch_model.safetensors"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == fmode, f
    for d in (tmp_path / "rec", folder):
        assert stat.S_IMODE(d.stat().st_mode) == dmode, d
