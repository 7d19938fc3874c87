"""Typed, strict configuration: profiles validated against the stage dataclasses, unknown keys refused early."""

import dataclasses
import subprocess
import sys

import pytest

from eqvae_lib.experiment import config as C
from eqvae_lib.experiment.pipeline import loss_config


@pytest.mark.parametrize("name", C.PROFILES)
def test_every_profile_validates_and_every_key_has_one_stage(name):
    cfg = C.load_config(name)
    flat = cfg.flat()
    assert set(flat) == set(C.KEY_STAGE) | {"profile"}
    assert cfg["seed"] == cfg.run.seed and cfg["kl_weight"] == cfg.loss.kl_weight


def test_unknown_override_names_the_key_and_the_closest_valid_keys():
    with pytest.raises(C.ConfigError, match="no_such_key"):
        C.load_config("smoke", {"no_such_key": 1})
    with pytest.raises(C.ConfigError, match=r"'kl_weigth'.*did you mean kl_weight"):
        C.load_config("smoke", {"kl_weigth": 1e-5})


@pytest.mark.parametrize("line, message", [
    ("p_alpha: 1.5", r"p_alpha = 1.5 \(.*bad.yaml\): must lie in \[0.0, 1.0\]"),
    ("family: rot", r"family = 'rot' .*allowed values are 'rotation', 'scale'"),
    ("gen_steps: many", r"gen_steps = 'many' .*expected int"),
    ("gen_stpes: 3", r"gen_stpes.*bad.yaml.*did you mean gen_steps"),
])
def test_type_and_range_errors_name_the_key_the_file_and_the_allowed_values(tmp_path, monkeypatch, line, message):
    monkeypatch.setattr(C, "PROFILES_DIR", tmp_path)
    (tmp_path / "bad.yaml").write_text(line + "\n")
    with pytest.raises(C.ConfigError, match=message):
        C.load_config("bad")


def test_loss_knobs_that_were_ignored_now_reach_the_loss_config():
    P = C.load_config("smoke", {"kl_weight": 1e-5, "disc_weight": 0.25, "explicit_lambda": 0.3})
    cfg = loss_config(P, "explicit")
    assert (cfg.kl_weight, cfg.disc_weight, cfg.explicit_lambda) == (1e-5, 0.25, 0.3)
    default = loss_config(C.load_config("smoke"), "eq")
    assert default.kl_weight == 1e-6  # LossConfig's default, the only place it is written
    assert P.record()["stages"]["loss"]["kl_weight"] == 1e-5 and P.record()["overrides"]["kl_weight"] == 1e-5


def test_papermill_style_values_are_parsed_and_ints_become_floats():
    P = C.load_config("smoke", {"replicate_seeds": "[0, 1, 2]", "gen_steps": 9, "gen_eval_steps": "[3, 9]",
                                "gen_lr": 1})
    assert P.run.replicate_seeds == [0, 1, 2] and P.gen.gen_steps == 9 and isinstance(P.gen.gen_lr, float)
    assert P.gen.gen_eval_steps == [3, 9]


def test_inherit_reads_the_base_profile_first():
    full, cpu = C.load_config("cpu-full"), C.load_config("cpu")
    assert full.gen.gen_methods == ["sit", "dit"] and cpu.gen.gen_methods == ["sit"]
    assert full.data.n_train == cpu.data.n_train
    assert "cpu.yaml" in full.source and "cpu-full.yaml" in full.source


def test_notebook_config_takes_knobs_and_refuses_unknown_globals():
    ns = {"profile": None, "p_alpha": None, "finetune_epochs": 1, "In": [], "_oh": {}}
    P = C.notebook_config("smoke", ns)
    assert P.finetune.finetune_epochs == 1 and P.loss.p_alpha == C.load_config("smoke").loss.p_alpha
    assert set(P.knobs) == {"p_alpha", "finetune_epochs"}
    with pytest.raises(C.ConfigError, match="no_such_key"):
        C.notebook_config("smoke", {"profile": None, "no_such_key": 1})
    # a re-run in JupyterLab: the notebook's own variables are there; a near-miss of a key is still refused
    ns.update(runs={}, same=True)
    assert C.notebook_config("smoke", ns).finetune.finetune_epochs == 1
    ns["finetune_epoch"] = 2
    with pytest.raises(C.ConfigError, match="finetune_epoch"):
        C.notebook_config("smoke", ns)


def test_config_lookup_is_strict_and_has_no_silent_default():
    P = C.load_config("smoke")
    with pytest.raises(KeyError, match="eval_m"):
        P["eval_m"]
    assert not hasattr(P, "get")
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.loss.kl_weight = 1.0


def test_cli_check_fails_fast_on_an_unknown_override():
    env = {"EQVAE_PROFILE": "smoke", "PYTHONPATH": str(C.REPO_ROOT)}
    bad = subprocess.run([sys.executable, "-m", "eqvae_lib", "config", "check", "-p", "no_such_key", "1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "no_such_key" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "eqvae_lib", "config", "check", "-p", "kl_weight", "1e-5"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("key, value", [("p_alpha", float("nan")), ("gen_lr", float("inf"))])
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(C.ConfigError, match=f"{key} = .*finite"):
        C.load_config("smoke", {key: value})


@pytest.mark.parametrize("key, replacement", [("pretrain_max_minutes", "pretrain_max_steps"),
                                              ("vq_pretrain_max_minutes", "vq_pretrain_max_steps"),
                                              ("gen_seeds", "replicate_seeds")])
def test_a_removed_key_of_an_old_profile_says_what_replaces_it(tmp_path, monkeypatch, key, replacement):
    monkeypatch.setattr(C, "PROFILES_DIR", tmp_path)
    (tmp_path / "old.yaml").write_text(f"inherit: smoke\n{key}: 3\n")
    with pytest.raises(C.ConfigError, match=f"{key}.*removed.*{replacement}"):
        C.load_config("old")


@pytest.mark.parametrize("seeds", [[], [0, 0]])
def test_replicate_seeds_must_be_distinct_and_not_empty(seeds):
    with pytest.raises(C.ConfigError, match="replicate_seeds"):
        C.load_config("smoke", {"replicate_seeds": seeds})


@pytest.mark.parametrize("args, named", [(["-p", "kl_weight"], "takes a NAME and a VALUE"),
                                         (["gen_stepz", "5"], "expected -p NAME VALUE"),
                                         (["-p", "kl_weight", "1e-5", "extra"], "expected -p NAME VALUE"),
                                         (["-p", "no_such_key", "1"], "no_such_key")])
def test_check_overrides_refuses_what_make_reproduce_would_misread(args, named):
    from eqvae_lib.experiment.config import ConfigError, check_overrides

    with pytest.raises(ConfigError, match=named):
        check_overrides(args)
    check_overrides(["-p", "kl_weight", "1e-5", "-r", "dataset", "fashion-mnist"])  # valid pairs pass


@pytest.mark.parametrize("overrides, message", [
    ({"gen_steps": 1000}, r"gen_eval_steps = \[300, 600, 900, 1200, 1500\] \(.*cpu.yaml\): \[1200, 1500\] lie beyond "
                          r"gen_steps = 1000 \(override\).*-p gen_eval_steps '\[300, 600, 900\]'"),
    ({"finetune_epochs": 2}, r"fig5_epochs = \[1, 3\].*\[3\] lie beyond finetune_epochs = 2"),
    ({"maskgit_epochs": 4}, r"maskgit_eval_epochs = \[1, 2, 4, 6\].*\[6\] lie beyond maskgit_epochs = 4"),
])
def test_a_shortened_run_refuses_evaluation_points_it_would_never_reach(overrides, message):
    with pytest.raises(C.ConfigError, match=message):
        C.load_config("cpu", overrides)
    # with the evaluation points moved inside the run, the same override is accepted
    key = {"gen_steps": "gen_eval_steps", "finetune_epochs": "fig5_epochs", "maskgit_epochs": "maskgit_eval_epochs"}
    (end_key, end), = overrides.items()
    P = C.load_config("cpu", {**overrides, key[end_key]: [end]})
    assert P.flat()[key[end_key]] == [end]
