"""House rules of the notebooks (executing them is `make nb-test`, nbval under the smoke profile)."""

from pathlib import Path

import nbformat
import pytest

from eqvae_lib.records import CLAIMS

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
    assert "notebook_params(profile, globals())" in source
    if path.stem != "99_report":
        assert "rec.save()" in source and "rec.set_verdict(" in source
    long_cells = [c.source.count("\n") + 1 for c in code if c.source.count("\n") + 1 > 45]
    assert not long_cells, f"cells of {long_cells} lines: move logic into eqvae_lib"
