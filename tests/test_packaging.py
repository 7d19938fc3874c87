"""The pins agree everywhere: pyproject.toml, environment.yml and requirements.lock."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    pins = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def _pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + [d for ds in project["optional-dependencies"].values() for d in ds]
    return lines, _pins(lines)


def test_every_pyproject_dependency_is_pinned_exactly():
    lines, pins = _pyproject_pins()
    assert len(pins) == len(lines), [l for l in lines if "==" not in l]


def test_environment_yml_pins_equal_pyproject_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "python=3.11" in env["dependencies"]
    _, py_pins = _pyproject_pins()
    assert _pins(pip_section) == py_pins


def test_lock_file_contains_the_pins_at_the_same_versions():
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    _, py_pins = _pyproject_pins()
    mismatched = {k: (v, lock.get(k)) for k, v in py_pins.items() if lock.get(k) != v}
    assert not mismatched, f"requirements.lock disagrees with pyproject.toml: {mismatched}"
