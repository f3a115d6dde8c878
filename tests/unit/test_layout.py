"""The newcomer's measures of the source tree, as assertions with precise failure messages.

Import cycles, package docstrings, module length, the runner's dispatch, ``dict[str, Any]``
outside JSON boundaries, the stage tuples, and who may reach into the pipeline's rooms.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imageport.pipeline.stages import COPY_IMAGE_STAGES, IMPORT_STAGES

ROOT = Path(__file__).resolve().parents[2] / "src"
PACKAGE = ROOT / "imageport"
PIPELINE = PACKAGE / "pipeline"
MAX_LINES = 400

#: Folders that hold Python files but are not packages, on purpose: alembic loads its
#: environment and revision scripts by path (pyproject.toml ignores INP001 there).
NOT_PACKAGES = frozenset({"records/migrations", "records/migrations/versions"})

#: What code outside the pipeline may import from it: the package's names, and the observer
#: protocol (worker metrics implement it).
PIPELINE_PUBLIC = frozenset({"imageport.pipeline", "imageport.pipeline.observer"})

_ANY_DICTS = frozenset(
    {"dict[str, Any]", "dict[str, typing.Any]", "Dict[str, Any]", "typing.Dict[str, typing.Any]"}
)


# The source tree as modules


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _is_package_dir(folder: Path) -> bool:
    """Whether ``folder`` and every folder above it up to ``src/imageport`` has __init__.py."""
    while True:
        if not (folder / "__init__.py").is_file():
            return False
        if folder == PACKAGE:
            return True
        folder = folder.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _python_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _modules() -> dict[str, Path]:
    """Every importable module under src/imageport, by dotted name."""
    return {_module_name(p): p for p in _python_files() if _is_package_dir(p.parent)}


MODULES = _modules()


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to an imageport module."""

    source: str
    target: str
    line: int
    text: str
    type_checking: bool


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str | None:
    """The imageport module ``name`` is, or the nearest module above it; None if not ours."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


class _ImportCollector(ast.NodeVisitor):
    """Every import of one module, at module level and inside functions and classes."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[Import] = []
        self._type_checking = 0

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, target: str | None, node: ast.stmt) -> None:
        if target is not None and target != self.module:
            self.found.append(
                Import(self.module, target, node.lineno, ast.unparse(node), self._type_checking > 0)
            )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(_resolve(alias.name), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join([*base, node.module] if node.module else base)
        else:
            origin = node.module or ""
        if not origin.startswith("imageport"):
            return
        for alias in node.names:
            submodule = f"{origin}.{alias.name}"
            # ``from pkg import name``: the submodule when ``name`` is one, else pkg/__init__.
            self._add(submodule if submodule in MODULES else _resolve(origin), node)


def _imports() -> list[Import]:
    found: list[Import] = []
    for name, path in MODULES.items():
        collector = _ImportCollector(name, path.name == "__init__.py")
        collector.visit(_parse(path))
        found.extend(collector.found)
    return found


IMPORTS = _imports()


class _Tarjan:
    """Tarjan's strongly connected components, iterative (no recursion limit on deep chains)."""

    def __init__(self, graph: dict[str, set[str]]) -> None:
        self.graph = graph
        self.index: dict[str, int] = {}
        self.low: dict[str, int] = {}
        self.stack: list[str] = []
        self.on_stack: set[str] = set()
        self.components: list[list[str]] = []

    def _enter(self, node: str) -> tuple[str, Iterator[str]]:
        self.index[node] = self.low[node] = len(self.index)
        self.stack.append(node)
        self.on_stack.add(node)
        return node, iter(sorted(self.graph.get(node, ())))

    def _close(self, node: str) -> None:
        component = []
        while True:
            member = self.stack.pop()
            self.on_stack.discard(member)
            component.append(member)
            if member == node:
                break
        self.components.append(sorted(component))

    def run(self) -> list[list[str]]:
        for root in sorted(self.graph):
            if root in self.index:
                continue
            work = [self._enter(root)]
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is None:
                    work.pop()
                    if work:
                        parent = work[-1][0]
                        self.low[parent] = min(self.low[parent], self.low[node])
                    if self.low[node] == self.index[node]:
                        self._close(node)
                elif child not in self.index:
                    work.append(self._enter(child))
                elif child in self.on_stack:
                    self.low[node] = min(self.low[node], self.index[child])
        return self.components


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    return _Tarjan(graph).run()


def import_cycles(extra: tuple[Import, ...] = ()) -> list[tuple[list[str], list[Import]]]:
    """Every strongly connected component of the runtime import graph with more than one
    module, with the imports that form it (``extra`` adds imports, for the self-check)."""
    runtime = [i for i in (*IMPORTS, *extra) if not i.type_checking]
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in runtime:
        graph[imp.source].add(imp.target)
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) > 1:
            members = set(component)
            edges = [i for i in runtime if i.source in members and i.target in members]
            cycles.append((component, edges))
    return cycles


def test_the_import_graph_is_complete_enough_to_trust():
    # Guards against a resolver that silently finds nothing (every check below would pass).
    assert len(MODULES) > 50
    edges = {(i.source, i.target) for i in IMPORTS}
    assert ("imageport.pipeline.runner", "imageport.pipeline.heartbeat") in edges
    assert ("imageport.pipeline.stages", "imageport.pipeline.stages.conversion") in edges
    assert ("imageport.cli.admin", "imageport.pipeline") in edges
    # ``from imageport.records import ImageStatus, repository``: the package and the module.
    assert ("imageport.pipeline.runner", "imageport.records") in edges
    assert ("imageport.pipeline.runner", "imageport.records.repository") in edges


def test_strongly_connected_components_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    found = sorted(_strongly_connected(graph))
    assert found == [["a", "b", "c"], ["d", "e"], ["f"]]


def test_a_submodule_importing_its_package_names_is_a_cycle():
    # ``from imageport.pipeline import Services`` inside the pipeline reaches pipeline/__init__,
    # which imports the submodule back: the check must see that as a cycle.
    context = "imageport.pipeline.context"
    text = "from imageport.pipeline import Services"
    back = Import(context, "imageport.pipeline", 1, text, type_checking=False)
    cycles = [members for members, _ in import_cycles((back,))]
    assert any({context, "imageport.pipeline"} <= set(members) for members in cycles)


def test_no_import_cycles():
    cycles = import_cycles()
    report = []
    for component, edges in cycles:
        report.append(f"cycle of {len(component)} modules: {', '.join(component)}")
        report.extend(
            f"    {e.source} -> {e.target}  ({_rel(MODULES[e.source])}:{e.line}: {e.text})"
            for e in edges
        )
    assert not cycles, "import cycles in src/imageport:\n" + "\n".join(report)


# Packages explain themselves


def _package_dirs() -> list[Path]:
    return sorted(
        d
        for d in [PACKAGE, *PACKAGE.rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
    )


def test_every_package_has_an_init_whose_docstring_explains_it():
    problems = []
    for folder in _package_dirs():
        rel = folder.relative_to(PACKAGE).as_posix()
        init = folder / "__init__.py"
        if rel in NOT_PACKAGES:
            assert not init.exists(), f"{_rel(init)} exists: drop {rel} from NOT_PACKAGES"
            continue
        if not init.is_file():
            problems.append(f"{_rel(folder)}/ has no __init__.py")
            continue
        doc = ast.get_docstring(_parse(init))
        first = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
        if not first:
            problems.append(f"{_rel(init)} has no docstring")
        elif not first.endswith((".", "…")):
            problems.append(f"{_rel(init)}: its docstring's first line is no sentence: {first!r}")
    assert not problems, "packages that do not explain themselves:\n" + "\n".join(problems)


# Long modules say why


def _line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def _says_why_it_is_long(doc: str | None) -> bool:
    """The docstring has a sentence with the word "long" and a reason (several words)."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split()))
    return any(re.search(r"\blong\b", s, re.IGNORECASE) and len(s.split()) >= 8 for s in sentences)


def long_modules() -> dict[str, int]:
    """Every Python file under src/imageport over MAX_LINES lines, with its line count."""
    return {_rel(p): n for p in _python_files() if (n := _line_count(p)) > MAX_LINES}


def test_long_modules_say_why_they_are_long():
    unexplained = [
        f"{name}: {lines} lines, and its docstring does not say why it is long"
        for name, lines in long_modules().items()
        if not _says_why_it_is_long(ast.get_docstring(_parse(ROOT / name)))
    ]
    assert not unexplained, (
        f"modules over {MAX_LINES} lines without a reason ('This module is long because …'):\n"
        + "\n".join(unexplained)
    )


# The runner calls stages through their protocol


def _names_used(tree: ast.AST) -> list[tuple[str, int]]:
    """Every name and attribute used in ``tree``, and every imported name, with its line."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.append((node.id, node.lineno))
        elif isinstance(node, ast.Attribute):
            found.append((node.attr, node.lineno))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            found.extend((alias.name.rpartition(".")[2], node.lineno) for alias in node.names)
    return found


def test_runner_has_no_getattr():
    runner = PIPELINE / "runner.py"
    uses = [line for name, line in _names_used(_parse(runner)) if name == "getattr"]
    assert "getattr" not in runner.read_text(encoding="utf-8"), (
        f"{_rel(runner)} uses getattr (lines {uses}): call stages through the Stage protocol"
    )


def test_pipeline_does_not_use_module_type():
    uses = [
        f"{_rel(path)}:{line}"
        for path in sorted(PIPELINE.rglob("*.py"))
        for name, line in _names_used(_parse(path))
        if name == "ModuleType"
    ]
    assert not uses, f"types.ModuleType used in the pipeline: {', '.join(uses)}"


# dict[str, Any] only at JSON boundaries


def _any_dicts(tree: ast.AST) -> list[int]:
    """Lines of every ``dict[str, Any]`` in ``tree``, quoted annotations included."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and ast.unparse(node) in _ANY_DICTS:
            lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                inner = ast.parse(node.value, mode="eval")
            except SyntaxError:
                continue
            lines.extend(node.lineno for _ in _any_dicts(inner))
    return lines


def any_dict_counts(root: Path = PACKAGE) -> dict[str, int]:
    """``dict[str, Any]`` occurrences per module under ``root`` (modules with none left out)."""
    counts = Counter()
    for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
        if found := _any_dicts(_parse(path)):
            counts[_rel(path)] = len(found)
    return dict(counts)


def test_any_dict_counter_counts_annotations():
    source = "from typing import Any\ndef f(a: dict[str, Any], b: 'dict[str, Any]') -> int: ..."
    assert len(_any_dicts(ast.parse(source))) == 2


def test_no_untyped_dicts_in_stages_or_runner():
    offenders = []
    for path in sorted([*(PIPELINE / "stages").rglob("*.py"), PIPELINE / "runner.py"]):
        offenders.extend(f"{_rel(path)}:{line}" for line in _any_dicts(_parse(path)))
    assert not offenders, (
        "dict[str, Any] in the stages or the runner (they pass typed outputs; dicts belong at "
        "JSON boundaries): " + ", ".join(offenders)
    )


# The stages


@pytest.mark.parametrize("stages", [IMPORT_STAGES, COPY_IMAGE_STAGES], ids=["import", "copy"])
def test_stage_tuples_are_consistent(stages):
    names = [stage.name for stage in stages]
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    assert not duplicates, f"stage names repeat in {names}: {duplicates}"
    for stage in stages:
        kind = type(stage).__name__
        assert stage.name == stage.output_type.STAGE, (
            f"{kind}.output_type is {stage.output_type.__name__}, recorded under stage "
            f"{stage.output_type.STAGE!r}, but the stage is named {stage.name!r}"
        )
        missing = [m for m in ("run", "still_valid", "restore") if not callable(getattr(stage, m))]
        assert not missing, f"stage {stage.name!r} ({kind}) lacks callable {missing}"


# Nothing outside the pipeline reaches into its rooms


def pipeline_import_violations() -> list[str]:
    """Imports of pipeline sub-modules from outside the pipeline (TYPE_CHECKING ones too)."""
    return [
        f"{_rel(MODULES[i.source])}:{i.line}: {i.text}  (reaches {i.target})"
        for i in IMPORTS
        if not i.source.startswith("imageport.pipeline")
        and i.target.startswith("imageport.pipeline")
        and i.target not in PIPELINE_PUBLIC
    ]


def test_only_the_pipeline_package_is_imported_from_outside():
    violations = pipeline_import_violations()
    assert not violations, (
        "modules outside imageport.pipeline import its rooms (use `from imageport.pipeline "
        "import …`):\n" + "\n".join(violations)
    )
