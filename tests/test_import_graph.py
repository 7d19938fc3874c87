"""The layout of eqvae_lib: the method library never imports the experiment layer (``eqvae_lib.experiment``), the
kit's modules import each other without cycles, and kit imports sit at the top of files.

The graph is read here with ``ast`` (nothing is imported), independently of the code-version walker of
``experiment/pipeline.py``, so a fault of that walker cannot hide a fault of the layout. Every import counts: at the
top of a file, inside a function, ``import eqvae_lib.x``, ``from . import x``, ``from ..x import y``, and a string
that is exactly a kit module's name (``importlib.import_module("eqvae_lib.x")``, the command table of ``__main__``).
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "eqvae_lib"
#: the experiment layer: configs/profiles, train-or-load caches, records, claims and verdicts, report, plotting, paper
#: values, projection (README "The library")
EXPERIMENT = "eqvae_lib.experiment"
#: the command line sits above both layers: it may import either
TOP = {"eqvae_lib.__main__"}
#: kit imports that stay inside a function, each with the reason (README: imports at the top of files)
IN_FUNCTION_ALLOWED: dict[tuple[str, str], str] = {}


def module_paths(pkg: Path) -> dict[str, Path]:
    """Dotted module name (``eqvae_lib.metrics.fid``; a package is its ``__init__``) -> file."""
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The kit module that ``target`` (a dotted name, maybe ``module.attribute``) names, or None (not the kit's)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(kit module, line, inside a function or class)`` for every kit import of one module."""
    pkg_of = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_of.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names]  # a submodule, else resolved to ``mod`` below
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            targets = [node.value]  # importlib.import_module("eqvae_lib.x"), or a dispatch table of such names
        for t in targets:
            dep = _resolve(t, modules)
            if dep and dep != name:
                out.append((dep, node.lineno, id(node) in nested))
    return out


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """module -> the kit modules it imports (anywhere in the file)."""
    modules = module_paths(pkg)
    return {m: {d for d, _, _ in imports_of(m, p, modules)} for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first = last), or None (depth-first search). A module importing its own
    package's ``__init__`` (``from . import x`` in a package that re-exports x) is an edge like any other."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def in_experiment(m: str) -> bool:
    return m == EXPERIMENT or m.startswith(EXPERIMENT + ".")


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(library module, experiment module)`` for every import from the method library into the experiment layer."""
    return sorted((m, d) for m, deps in graph.items() if not in_experiment(m) and m not in TOP
                  for d in deps if in_experiment(d))


def in_function_imports(pkg: Path = PKG) -> list[tuple[str, str, int]]:
    """``(module, kit module, line)`` for every kit import inside a function or class body."""
    modules = module_paths(pkg)
    return sorted({(m, d, line) for m, p in modules.items() for d, line, inner in imports_of(m, p, modules) if inner})


#: modules whose in-function imports (of any package) are not yet either moved to the top or marked ``# lazy: why``
#: (empty: every module is clean; the test fails on an entry that is clean, so the set cannot go stale)
LAZY_PENDING: set[str] = set()


def unexplained_lazy_imports(pkg: Path = PKG) -> dict[str, list[int]]:
    """module -> lines of import statements (of any package) inside a function or class that carry no ``# lazy:``
    reason, on the statement's first line or on a comment line directly above it (over further import lines)."""
    out = {}
    for name, path in module_paths(pkg).items():
        text = path.read_text()
        lines, tree = text.splitlines(), ast.parse(text)
        bad = []
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for n in ast.walk(node):
                if n is node or not isinstance(n, (ast.Import, ast.ImportFrom)):
                    continue
                j = n.lineno - 1
                while j > 0 and lines[j - 1].strip().startswith(("import ", "from ")):
                    j -= 1
                if "# lazy:" not in lines[n.lineno - 1] and not (j > 0 and lines[j - 1].strip().startswith("# lazy:")):
                    bad.append(n.lineno)
        if bad:
            out[name] = sorted(set(bad))
    return out


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "eqvae_lib"


def test_the_checks_catch_what_they_should(tmp_path):
    """A synthetic package with one fault of each kind: the checks name it (so a pass below means something)."""
    pkg = _write(tmp_path, {
        "eqvae_lib/__init__.py": "",
        "eqvae_lib/__main__.py": "import importlib\nCOMMANDS = {'report': 'eqvae_lib.experiment.records'}\n",
        "eqvae_lib/losses.py": "from .transforms import T\n",
        "eqvae_lib/transforms.py": "def f():\n    from . import losses\n",  # cycle through a function body
        "eqvae_lib/metrics/__init__.py": "from .fid import fid\n",
        "eqvae_lib/metrics/fid.py": "from ..experiment.config import Config\n",  # upward
        "eqvae_lib/data.py": "import eqvae_lib.experiment.pipeline as p\n",  # upward, absolute
        "eqvae_lib/experiment/__init__.py": "",
        "eqvae_lib/experiment/config.py": "from ..losses import T\n",  # downward: fine
        "eqvae_lib/experiment/pipeline.py": "from .config import Config\nfrom eqvae_lib.metrics import fid\n",
        "eqvae_lib/experiment/records.py": "",
    })
    g = import_graph(pkg)
    assert g["eqvae_lib.experiment.pipeline"] == {"eqvae_lib.experiment.config", "eqvae_lib.metrics.fid"}
    assert g["eqvae_lib.__main__"] == {"eqvae_lib.experiment.records"}
    assert find_cycle(g) == ["eqvae_lib.losses", "eqvae_lib.transforms", "eqvae_lib.losses"]
    assert upward_imports(g) == [("eqvae_lib.data", "eqvae_lib.experiment.pipeline"),
                                 ("eqvae_lib.metrics.fid", "eqvae_lib.experiment.config")]
    assert in_function_imports(pkg) == [("eqvae_lib.transforms", "eqvae_lib.losses", 2)]
    _write(tmp_path, {"eqvae_lib/io.py": "def f():\n    import json\n    # lazy: why\n    import csv\n    import gzip\n"
                                         "    import yaml  # lazy: why\n"})
    assert unexplained_lazy_imports(pkg) == {"eqvae_lib.transforms": [2], "eqvae_lib.io": [2]}
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_real_graph_is_read():
    g = import_graph()
    assert "eqvae_lib.losses" in g["eqvae_lib.train_ae"] and "eqvae_lib.runtime" in g["eqvae_lib.io"]
    assert "eqvae_lib.metrics.batching" in g["eqvae_lib.metrics.fid_inputs"]
    assert {"eqvae_lib.metrics.extractors", "eqvae_lib.metrics.fid_inputs"} <= g["eqvae_lib.metrics.fid"]
    assert "eqvae_lib.experiment.config" in g["eqvae_lib.experiment.pipeline"]
    assert "eqvae_lib.experiment.records" in g["eqvae_lib.__main__"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_method_library_never_imports_the_experiment_layer():
    upward = upward_imports(import_graph())
    assert not upward, ("method library imports the experiment layer (move the code into eqvae_lib/experiment/, or "
                        "pass the value in as an argument): " + ", ".join(f"{m} -> {d}" for m, d in upward))


@pytest.mark.parametrize("name", ["config", "pipeline", "records", "claims", "verdicts", "projection", "plotting",
                                  "paper_values"])
def test_the_experiment_modules_live_in_the_experiment_subpackage(name):
    assert (PKG / "experiment" / f"{name}.py").is_file() and not (PKG / f"{name}.py").exists()


def test_kit_imports_sit_at_the_top_of_files():
    found = in_function_imports()
    unexplained = [(m, d, line) for m, d, line in found if (m, d) not in IN_FUNCTION_ALLOWED]
    assert not unexplained, ("kit imports inside functions (move them to the top of the file, or list them in "
                             "IN_FUNCTION_ALLOWED with the reason): "
                             + ", ".join(f"{m}:{line} -> {d}" for m, d, line in unexplained))
    stale = set(IN_FUNCTION_ALLOWED) - {(m, d) for m, d, _ in found}
    assert not stale, f"IN_FUNCTION_ALLOWED lists imports that are gone: {sorted(stale)}"


def test_imports_inside_functions_say_why():
    """Any import left inside a function (a package that costs seconds to import and that few callers need) says so
    with ``# lazy: reason`` (README: imports at the top of files)."""
    found = unexplained_lazy_imports()
    unexplained = {m: lines for m, lines in found.items() if m not in LAZY_PENDING}
    assert not unexplained, ("imports inside functions without a '# lazy: reason' (move them to the top of the file, "
                             f"or give the reason): {unexplained}")
    clean = sorted(LAZY_PENDING - set(found))
    assert not clean, f"LAZY_PENDING lists modules that are clean now: remove {clean}"
