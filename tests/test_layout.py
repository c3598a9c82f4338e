"""The package's shape: no import cycles (function-level imports included) and no
module named like a standard-library module.

The import graph is read from the source with ``ast`` (nothing is imported), so a
cycle hidden in a function body (``from .x import y`` inside ``def``) counts too:
that is how the three cycles this test first found were hidden. The layering rules
themselves are import-linter contracts in ``pyproject.toml`` (``make lint``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "imagebuilder"


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in its body."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from . import x`
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    return {m: _imports(p, root, set(files)) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _without_package_faces(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` importing its own children is no cycle of the design."""
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def test_the_package_has_no_import_cycle() -> None:
    graph = _without_package_faces(import_graph())
    assert len(graph) > 40  # the walk really read the package
    assert cycles(graph) == [], "modules that import each other: move the shared piece down"


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from . import a\n")
    assert cycles(_without_package_faces(import_graph(pkg))) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_shadows_the_standard_library(path: Path) -> None:
    # A tool that puts the package folder on sys.path would import ours instead.
    if path.stem not in ("__init__", "__main__"):
        assert path.stem not in sys.stdlib_module_names, f"rename {path.relative_to(PKG.parent)}"


MAX_LINES = 400


def _module_problems(path: Path) -> list[str]:
    """What the layout rules say of one module: its length and its docstring."""
    text = path.read_text()
    out = []
    lines = len(text.splitlines())
    if lines > MAX_LINES:
        out.append(f"{lines} lines (split it: one job per module, at most {MAX_LINES})")
    if not ast.get_docstring(ast.parse(text)):
        out.append("no docstring saying its role and what it must not do")
    return out


def test_every_module_is_short_and_says_its_role() -> None:
    found = {
        str(p.relative_to(PKG.parent)): problems
        for p in sorted(PKG.rglob("*.py"))
        if p.name != "__main__.py" and (problems := _module_problems(p))
    }
    assert found == {}


def test_the_module_rules_catch_a_long_or_silent_module(tmp_path: Path) -> None:
    long = tmp_path / "long.py"
    long.write_text('"""Role."""\n' + "x = 1\n" * MAX_LINES)
    silent = tmp_path / "silent.py"
    silent.write_text("x = 1\n")
    assert _module_problems(long) == [
        f"{MAX_LINES + 1} lines (split it: one job per module, at most {MAX_LINES})"
    ]
    assert _module_problems(silent) == ["no docstring saying its role and what it must not do"]
