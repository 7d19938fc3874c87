"""The import graph of eqvae_lib: no cycles, and the method library never imports the experiment layer."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "eqvae_lib"
#: the experiment layer (configs/profiles, train-or-load caches, records, verdicts, report, plotting, paper values)
EXPERIMENT = {"eqvae_lib.config", "eqvae_lib.pipeline", "eqvae_lib.records", "eqvae_lib.plotting",
              "eqvae_lib.paper_values", "eqvae_lib.claims", "eqvae_lib.verdicts", "eqvae_lib.report",
              "eqvae_lib.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


def import_graph() -> dict[str, set[str]]:
    """module -> kit modules it imports (at the top or inside functions; ``from . import x`` resolved to x)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name and t.startswith("eqvae_lib"):
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d == "eqvae_lib":
                continue  # the package __init__ only sets warnings
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


def test_the_graph_walker_finds_what_it_should():
    g = import_graph()
    assert "eqvae_lib.losses" in g["eqvae_lib.train_ae"] and "eqvae_lib.runtime" in g["eqvae_lib.io"]
    assert "eqvae_lib.metrics.batching" in g["eqvae_lib.metrics.fid"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_method_library_never_imports_the_experiment_layer():
    upward = {(m, d) for m, deps in import_graph().items() if m not in EXPERIMENT for d in deps if d in EXPERIMENT}
    assert not upward, "method library imports the experiment layer: " + ", ".join(f"{m} -> {d}" for m, d in sorted(upward))
