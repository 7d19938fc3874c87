"""House rules of the notebooks (executing them is `make nb-test`, nbval under the smoke profile)."""

import ast
import re
from pathlib import Path

import nbformat
import pytest

from eqvae_lib.experiment.config import KEY_STAGE
from eqvae_lib.experiment.records import CLAIMS

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_for_every_claim():
    names = {p.stem for p in NOTEBOOKS}
    assert {nb for nb, _ in CLAIMS.values()} <= names
    assert "99_report" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_parametrised_and_records_its_result(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "profile = None" in code[0].source
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks stripped"
    source = "\n".join(c.source for c in code)
    assert "P = notebook_config(profile, globals())\nP.print_knobs()" in source
    if path.stem != "99_report":
        assert "rec.save()" in source and "rec.set_verdict(" in source
    long_cells = [c.source.count("\n") + 1 for c in code if c.source.count("\n") + 1 > 45]
    assert not long_cells, f"cells of {long_cells} lines: move logic into eqvae_lib"


def _knobs(cell_source: str) -> dict:
    """``{name: value}`` of the assignments of a parameters cell."""
    tree = ast.parse(cell_source)
    return {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_knob_a_notebook_reads_is_in_its_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    knobs = _knobs(code[0].source)
    assert knobs.pop("profile") is None
    assert all(v is None for v in knobs.values()), "knobs default to None (= from the profile)"
    unknown = set(knobs) - set(KEY_STAGE)
    assert not unknown, f"parameters cell names keys no stage knows: {sorted(unknown)}"
    source = "\n".join(c.source for c in code[1:])
    read = set(re.findall(r'P\[["\']([a-z_0-9]+)["\']\]', source)) | set(re.findall(r"\bP\.[a-z_]+\.([a-z_0-9]+)", source))
    missing = read - {"profile"} - set(knobs)
    assert not missing, f"{path.stem} reads {sorted(missing)} but its parameters cell does not list them"
    assert "P.get(" not in source, "no scattered defaults: a key's default lives in its stage dataclass"
    assert "P.print_knobs()" in code[1].source, "the cell after the parameters prints the resolved knobs"
