"""The house's layers: imports between sweeplab's packages point one way, the core types import
nothing of sweeplab, and the public surface loads without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import sweeplab

ROOT = Path(sweeplab.__file__).resolve().parent


def _part(module: str) -> str:
    """The part of sweeplab a module belongs to: its subpackage (``sweeps``, ``tracker``...) or,
    for a top-level module, the module (``core``, ``tasks``, ``cli``)."""
    return module.split(".")[1]


def _runtime_imports(path: Path) -> set[str]:
    """The sweeplab modules ``path`` imports when it runs (function-local imports included;
    imports under ``if TYPE_CHECKING:`` left out: they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # a module imported from its package
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("sweeplab.")}


def _modules() -> dict[str, set[str]]:
    """module -> the sweeplab modules it imports (``from sweeplab.sweeps import storage`` counts
    as importing ``sweeplab.sweeps.storage``)."""
    names = {".".join(("sweeplab", *p.relative_to(ROOT).with_suffix("").parts)) for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(("sweeplab", *path.relative_to(ROOT).with_suffix("").parts))
        if module.endswith(".__init__") or module == "sweeplab.__main__":
            continue
        edges[module] = {name for name in _runtime_imports(path) if name in names and name != module}
    return edges


def _graph() -> dict[str, set[str]]:
    """part -> the other parts it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imported in _modules().items():
        for name in imported:
            if _part(name) != _part(module):
                edges[_part(module)].add(_part(name))
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``edges`` as the list of its parts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_cycle_between_sweeplabs_parts() -> None:
    assert _cycle(_graph()) is None


def test_no_cycle_between_sweeplabs_modules() -> None:
    """Not even through an import inside a function: the driver starts workers, a worker runs
    the driver, and neither imports the other's importer."""
    assert _cycle(_modules()) is None


def test_the_layers_point_one_way() -> None:
    edges = _graph()
    assert edges.get("core", set()) == set()  # the core types import nothing of sweeplab
    for lower in ("trainers", "tracker", "datasets", "core"):
        assert "sweeps" not in edges.get(lower, set()), f"{lower} imports sweeps"
        assert "cli" not in edges.get(lower, set()), f"{lower} imports the command line"
    assert "tasks" not in edges.get("trainers", set())  # a trainer is found by the registry, not the reverse


def test_import_sweeplab_and_its_core_cost_no_torch() -> None:
    code = ("import sys, sweeplab, sweeplab.core, sweeplab.errors; sweeplab.trainer; "
            "print(sorted(m for m in ('torch', 'optuna', 'mlflow', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
