"""The import graph of eqvae_lib: no cycles, and the method library never imports the experiment layer."""

from pathlib import Path

from eqvae_lib.pipeline import EXPERIMENT_LAYER, kit_import_graph

PKG = Path(__file__).resolve().parent.parent / "eqvae_lib"
#: the experiment layer (configs/profiles, train-or-load caches, records, verdicts, report, plotting, paper values)
EXPERIMENT = {f"eqvae_lib.{m}" for m in EXPERIMENT_LAYER}


def import_graph() -> dict[str, set[str]]:
    """module -> kit modules it imports (the cache's code version walks the same graph)."""
    return kit_import_graph(PKG)


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
