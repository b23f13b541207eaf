"""The package's shape: no import cycles among dialer's modules, and no module imports
another's private names.

A cycle counts top-level imports only (those that run when the module is imported);
imports inside functions and under ``if TYPE_CHECKING:`` do not run then. Importing
``dialer.a.b`` is an edge to ``dialer.a.b`` alone: that Python first runs the package
``dialer.a`` is not an edge of the importing module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dialer"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported (not function bodies, not
    ``if TYPE_CHECKING:`` blocks)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from top_level(node.body)
            yield from top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from top_level(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from top_level(node.body)


def _base(name: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = name if modules()[name].name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imported(name: str, node: ast.stmt, known: set[str]) -> Iterator[tuple[str, str | None]]:
    """(module, name taken from it or None) for each dialer module an import statement uses."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in known:
                yield alias.name, None
    elif isinstance(node, ast.ImportFrom):
        base = _base(name, node)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in known:
                yield sub, None
            elif base in known:
                yield base, alias.name


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in top_level(tree.body):
            for target, _ in imported(name, node, known):
                if target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_reads_imports_as_python_runs_them() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import dialer.clock\n"
        "from dialer.lifecycle import moves, observe\n"
        "from dialer.http.context import AppContext\n"
        "if TYPE_CHECKING:\n"
        "    from dialer.runtime import Runtime\n"
        "def f():\n"
        "    from dialer.daemon import main\n"
    )
    known = set(modules())
    found = {t for node in top_level(ast.parse(source).body) for t in imported("dialer.x", node, known)}
    assert found == {("dialer.clock", None), ("dialer.lifecycle.moves", None),
                     ("dialer.lifecycle.observe", None), ("dialer.http.context", "AppContext")}


def test_dialer_modules_import_each_other_without_cycles() -> None:
    edges = graph()
    assert sum(len(v) for v in edges.values()) > 100  # the graph was really read
    assert cycles(edges) == []


def test_no_module_imports_another_modules_private_names() -> None:
    """``_name`` is for its own module; a name others need is public (and documented)."""
    mods = modules()
    known = set(mods)
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    found = []
    for path in sorted(sources):
        name = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):  # anywhere, functions included
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, taken in imported(name, node, known) if name in known else _from_outside(node, known):
                private = [p for p in [*target.split("."), taken or ""]
                           if p.startswith("_") and not p.startswith("__")]
                if private and target != name:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target} {taken or ''}".strip())
    assert found == []


def _from_outside(node: ast.Import | ast.ImportFrom, known: set[str]) -> Iterator[tuple[str, str | None]]:
    """What a test or benchmark takes from dialer (its own relative imports aside)."""
    if isinstance(node, ast.ImportFrom) and node.level:
        return
    for alias in node.names:
        if isinstance(node, ast.Import):
            if alias.name.startswith("dialer"):
                yield alias.name, None
        elif (node.module or "").startswith("dialer"):
            sub = f"{node.module}.{alias.name}"
            yield (sub, None) if sub in known else (node.module or "", alias.name)
