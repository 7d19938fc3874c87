"""Cache keys that cannot serve stale results: config, inputs, code version and lock file are all in the key."""

import dataclasses
import shutil

import pytest

from eqvae_lib.experiment import config as C
from eqvae_lib.experiment import pipeline
from eqvae_lib.train_ae import AETrainConfig

PKG = C.REPO_ROOT / "eqvae_lib"


def _ae_key(cfg: AETrainConfig, inputs=None, exclude=()):
    return pipeline.artefact_key("ae", {"train": dataclasses.asdict(cfg)}, inputs or {"train": "abc"}, exclude=exclude)


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.7 + 0.01  # stays a probability when it was one
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, tuple):
        return tuple(v + 0.01 for v in value)
    return 1 if value is None else None


def test_every_result_field_of_the_training_config_is_in_the_key():
    base = AETrainConfig(max_epochs=1)
    k0 = pipeline.hash_obj(_ae_key(base))
    for f in dataclasses.fields(AETrainConfig):
        if f.name == "loss":
            continue
        other = dataclasses.replace(base, **{f.name: _changed(getattr(base, f.name))})
        k1 = pipeline.hash_obj(_ae_key(other))
        if f.name in pipeline.NOT_IN_KEY:
            assert k1 == k0, f"{f.name} cannot change a result and must stay out of the key"
        else:
            assert k1 != k0, f"{f.name} changes the model but not the key"


def test_every_loss_knob_is_in_the_key():
    base = AETrainConfig(max_epochs=1)
    k0 = pipeline.hash_obj(_ae_key(base))
    for f in dataclasses.fields(base.loss):
        if f.name in ("objective", "perceptual", "family", "interpolation", "scale_grid"):
            continue  # validated choices; covered by the objective below
        loss = dataclasses.replace(base.loss, **{f.name: _changed(getattr(base.loss, f.name))})
        assert pipeline.hash_obj(_ae_key(dataclasses.replace(base, loss=loss))) != k0, f.name
    loss = dataclasses.replace(base.loss, objective="plain")
    assert pipeline.hash_obj(_ae_key(dataclasses.replace(base, loss=loss))) != k0


def test_continued_finetune_epochs_stay_out_of_the_key_and_inputs_are_in():
    a, b = AETrainConfig(max_epochs=1), AETrainConfig(max_epochs=5)
    assert _ae_key(a, exclude=("max_epochs",)) == _ae_key(b, exclude=("max_epochs",))
    assert _ae_key(a, {"train": "abc"}) != _ae_key(a, {"train": "abd"})
    assert _ae_key(a, {"train": "abc", "base": "w1"}) != _ae_key(a, {"train": "abc", "base": "w2"})


def _copy_package(tmp_path):
    dst = tmp_path / "eqvae_lib"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_code_version_follows_behaviour_not_comments_docstrings_or_plotting(tmp_path):
    root = _copy_package(tmp_path)
    v = {s: pipeline.code_version(s, str(root)) for s in pipeline.STAGE_ROOTS}
    assert v["ae"] == pipeline.code_version("ae")  # the copy has the same code
    losses = root / "losses.py"
    src = losses.read_text()
    # a comment and a docstring edit do not count
    losses.write_text(src.replace('"""Every knob of the autoencoder objective', '"""Every knob (reworded) of the objective')
                      + "\n# a comment\n")
    pipeline.code_version.cache_clear()
    assert pipeline.code_version("ae", str(root)) == v["ae"]
    # a behaviour edit does: every stage that trains with the loss gets a new key, the others do not
    losses.write_text(src.replace("kl_weight: float = 1e-6", "kl_weight: float = 2e-6"))
    pipeline.code_version.cache_clear()
    assert "kl_weight: float = 1e-6" in src
    assert pipeline.code_version("ae", str(root)) != v["ae"] and pipeline.code_version("vq", str(root)) != v["vq"]
    assert pipeline.code_version("gen", str(root)) == v["gen"]
    # training and metric code
    for rel, stage in (("train_ae.py", "ae"), ("metrics/reconstruction.py", "ae-metrics"), ("train_gen.py", "gen"),
                       ("maskgit.py", "maskgit"), ("train_maskgit.py", "maskgit"), ("training.py", "ae"),
                       ("training.py", "gen"), ("data.py", "latents"), ("metrics/extractors.py", "fid")):
        f = root / rel
        f.write_text(f.read_text() + "\n_EXTRA = 1\n")
        pipeline.code_version.cache_clear()
        assert pipeline.code_version(stage, str(root)) != v[stage], rel
    # plotting / report / records / config never count
    for rel in ("experiment/plotting.py", "experiment/records.py", "experiment/paper_values.py", "experiment/config.py",
                "experiment/claims.py", "__main__.py"):
        assert all(rel not in pipeline.stage_modules(s) for s in pipeline.STAGE_ROOTS)
    # the builder itself counts: how it derives seeds or picks the posterior mean decides the artefact
    builder = root / "experiment" / "pipeline.py"
    builder.write_text(builder.read_text().replace('"dit_eval": 10_000', '"dit_eval": 10_001'))
    pipeline.code_version.cache_clear()
    assert all(pipeline.code_version(s, str(root)) != v[s] for s in pipeline.STAGE_ROOTS)
    # a module a stage imports counts without being listed: the RNG rule changes every training result
    rng = root / "rng.py"
    rng.write_text(rng.read_text() + "\n_EXTRA = 1\n")
    pipeline.code_version.cache_clear()
    for stage in ("ae", "vq", "gen", "maskgit"):
        assert "rng.py" in pipeline.stage_modules(stage)
        assert pipeline.code_version(stage, str(root)) != v[stage], stage
    pipeline.code_version.cache_clear()


def test_lock_file_is_in_the_key():
    key = pipeline.artefact_key("ae", {}, {})
    assert key["lock"] == pipeline.lock_hash() != "none" and key["code"] == pipeline.code_version("ae")


def test_old_cache_layout_is_refused_with_what_to_delete(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "CACHE", tmp_path)
    a = pipeline.cache_dir("x", {"lr": 1e-4, "seed": 0})
    assert a == pipeline.cache_dir("x", {"seed": 0, "lr": 1e-4}) and a.parent.parent.name == pipeline.LAYOUT
    assert a != pipeline.cache_dir("x", {"lr": 2e-4, "seed": 0}) and (a / "key.json").is_file()
    (tmp_path / "ae-eq" / "0123").mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"old layout.*rm -rf .*ae-eq"):
        pipeline.cache_dir("x", {"lr": 1e-4, "seed": 0})


def test_kl_weight_override_changes_the_finetune_loss_and_its_key():
    P0, P1 = C.load_config("smoke"), C.load_config("smoke", {"kl_weight": 1e-5})
    keys = []
    for P in (P0, P1):
        cfg = AETrainConfig(loss=pipeline.loss_config(P, "eq", disc_start=0), max_epochs=1)
        keys.append(pipeline.hash_obj(_ae_key(cfg, exclude=("max_epochs",))))
    assert keys[0] != keys[1]


def test_fields_an_objective_never_reads_do_not_enter_its_config():
    P = C.load_config("smoke")
    Q = P.replace(p_alpha=0.3, family="scale", explicit_lambda=0.5)
    assert pipeline.loss_config(Q, "plain") == pipeline.loss_config(P, "plain")  # base AE and plain control reused
    assert pipeline.loss_config(Q, "eq") != pipeline.loss_config(P, "eq")
    assert pipeline.loss_config(Q, "eq").explicit_lambda == pipeline.loss_config(P, "eq").explicit_lambda
    assert pipeline.loss_config(Q, "explicit").explicit_lambda == 0.5
    assert pipeline.loss_config(Q, "explicit").family == "scale"
