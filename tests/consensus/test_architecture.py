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
