"""The import contract: dependencies point down. No module imports one that (through any chain)
imports it back, and the low layers never reach up to the ones built on them.

Every import counts: at module level, inside functions (a lazy import hides a cycle, it does
not remove it) and under `if TYPE_CHECKING:`. The graph is read from the source with `ast`, so
the check needs no optional extra installed and imports nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "maml_bench"

#: Low layers and what they must never import (a prefix matches the package and its modules).
#: Read top down: the core knows nothing of the suite; models, environments and tasks know
#: nothing of the algorithms; algorithms know nothing of experiments or how runs are run; nothing
#: but the command line knows the command line.
FORBIDDEN = {
    "maml_bench.core": ["maml_bench.models", "maml_bench.tasks", "maml_bench.rl",
                        "maml_bench.algorithms", "maml_bench.experiments", "maml_bench.runner",
                        "maml_bench.config", "maml_bench.report"],
    "maml_bench.models": ["maml_bench.tasks", "maml_bench.algorithms", "maml_bench.experiments",
                          "maml_bench.runner"],
    "maml_bench.rl": ["maml_bench.tasks", "maml_bench.algorithms", "maml_bench.experiments",
                      "maml_bench.runner"],
    "maml_bench.tasks": ["maml_bench.algorithms", "maml_bench.experiments", "maml_bench.runner"],
    "maml_bench.algorithms": ["maml_bench.experiments", "maml_bench.runner",
                              "maml_bench.executors", "maml_bench.engines"],
    "maml_bench.distributed": ["maml_bench.core", "maml_bench.algorithms", "maml_bench.runner"],
    "maml_bench.results": ["maml_bench.runner", "maml_bench.report"],
}
UPPER = ["maml_bench.cli", "maml_bench.report.experiment", "maml_bench.profile",
         "maml_bench.engines", "maml_bench.executors", "maml_bench.preflight", "maml_bench.grid"]
for low in FORBIDDEN:
    FORBIDDEN[low] += UPPER
# Only the command line imports the command line (the modules of maml_bench.cli import each
# other: one per subcommand, beside the parser in its __init__).
FORBIDDEN_EVERYWHERE = ["maml_bench.cli"]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the suite's modules it imports (a name inside a module maps to the module)."""

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                found = owner(target) if target.startswith("maml_bench") else None
                if found and found != module:
                    graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


GRAPH = import_graph(modules())


def test_the_graph_is_read():
    """The reader finds the imports it checks (a broken reader would pass every contract)."""
    assert "maml_bench.core.functional" in GRAPH["maml_bench.algorithms.maml"]
    assert "maml_bench.runner" in GRAPH["maml_bench.cli.run"]  # lazy, inside a function
    assert "maml_bench.run_spec" in GRAPH["maml_bench.devices"]  # under TYPE_CHECKING


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("low", sorted(FORBIDDEN))
def test_low_layers_do_not_reach_up(low):
    wrong = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if _under(m, low)
                   for d in deps for up in FORBIDDEN[low] if _under(d, up))
    assert wrong == []


def test_only_the_command_line_imports_it():
    wrong = sorted(f"{m} imports {d}" for m, deps in GRAPH.items()
                   if not _under(m, "maml_bench.cli") for d in deps
                   for up in FORBIDDEN_EVERYWHERE if _under(d, up))
    assert wrong == []

