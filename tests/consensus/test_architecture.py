"""The core must stay sans-I/O: no clock, sockets, event loop, threads or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import consensus

FORBIDDEN = {"asyncio", "socket", "time", "threading", "plyvel", "aiohttp", "selectors"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_import_no_io_clock_or_threads() -> None:
    package = Path(consensus.__file__).parent
    offenders = {
        path.name: sorted(imported_modules(path) & FORBIDDEN)
        for path in package.glob("*.py")
        if imported_modules(path) & FORBIDDEN
    }
    assert offenders == {}


def test_core_uses_only_injected_randomness() -> None:
    """`random` may be imported for the type of the injected generator, never called."""
    package = Path(consensus.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            is_attribute = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            if is_attribute and node.value.id == "random":
                assert node.attr == "Random", f"{path.name} calls random.{node.attr}"


MAX_MODULE_LINES = 500
"""A module longer than this is doing two jobs: split it along a narrow interface."""


def consensus_imports(path: Path, package: Path) -> set[str]:
    """Modules of the package that `path` imports, under TYPE_CHECKING included: a
    type-only import is still a dependency, and a circle of them still couples the two
    modules both ways. Names are module stems; "__init__" stands for the package itself,
    which `from consensus import X` loads unless X is a module of its own."""
    modules = {p.stem for p in package.glob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package.name:
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                parts = node.module.split(".")
                if parts[0] != package.name:
                    continue
            elif node.level == 1:  # relative import from within the package
                parts = [package.name, *(node.module.split(".") if node.module else [])]
            else:
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from consensus import a, b: modules, or names of the package
                for alias in node.names:
                    found.add(alias.name if alias.name in modules else "__init__")
    found.discard(path.stem)
    return found & modules


def import_cycles(package: Path) -> list[list[str]]:
    """Every circle of imports among the package's modules, each once (as found by a
    depth-first search from its alphabetically first module)."""
    graph = {p.stem: consensus_imports(p, package) for p in package.glob("*.py")}
    cycles: list[list[str]] = []

    def visit(start: str, node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target == start:
                cycles.append([*path, start])
            elif target > start and target not in path:
                visit(start, target, [*path, target])

    for start in sorted(graph):
        visit(start, start, [start])
    return cycles


def test_no_import_cycles_in_the_core() -> None:
    """No two modules of consensus depend on each other, even only for type hints:
    a part that needs another's state gets it through parameters, not by importing
    its owner back (the leader's side once did, as a mixin of RaftNode)."""
    package = Path(consensus.__file__).parent
    assert import_cycles(package) == []


def test_the_cycle_check_finds_cycles(tmp_path: Path) -> None:
    package = tmp_path / "consensus"
    package.mkdir()
    (package / "__init__.py").write_text("from consensus.a import A\n")
    (package / "a.py").write_text("from consensus import quorum\nA = 1\n")
    (package / "quorum.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from consensus.b import B\n"
    )
    (package / "b.py").write_text("from consensus import A\n")
    assert import_cycles(package) == [
        ["__init__", "a", "quorum", "b", "__init__"],
    ]
    (package / "__init__.py").write_text("")
    (package / "b.py").write_text("from . import a\n")
    assert import_cycles(package) == [["a", "quorum", "b", "a"]]


def test_core_modules_stay_small() -> None:
    package = Path(consensus.__file__).parent
    sizes = {path.name: len(path.read_text().splitlines()) for path in package.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
