"""The layout is the architecture: imports run one way, downward, and the client
installs alone. These tests read the source (AST) and import the client in a clean
interpreter; they fail on the first upward import, circle or server dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("consensus", "kvstore")
MAX_MODULE_LINES = 500

LAYERS = {
    # module prefix: prefixes (of our own packages) it may import
    "consensus": {"consensus"},
    "kvstore.config": set(),
    "kvstore.client": {"kvstore.client", "kvstore.config"},
    "kvstore.state": {"kvstore.state", "consensus"},
    "kvstore.peers": {"kvstore.peers", "consensus"},
    "kvstore.runtime": {
        "kvstore.runtime",
        "kvstore.peers",
        "kvstore.state",
        "kvstore.config",
        "consensus",
    },
    "kvstore.api": {
        "kvstore.api",
        "kvstore.runtime",
        "kvstore.peers",
        "kvstore.state",
        "kvstore.config",
        "kvstore.client.http_session",
        "consensus",
    },
}
"""What each layer may import. Everything below kvstore.server and the two entry
packages (kvstore.cli, kvstore.chaos) is listed; those may import anything below."""

SERVER_ONLY = ("consensus", "kvstore.runtime", "kvstore.api", "kvstore.peers", "kvstore.state")
HEAVY = ("plyvel", "msgpack", "matplotlib", "numpy", "PIL", "uvloop")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def own_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that `name` imports, at any depth of its body (including
    imports under TYPE_CHECKING and inside functions: a circle is a circle)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for target in targets:
            if target in known and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: own_imports(name, path, known) for name, path in found.items()}


def layer_of(module: str) -> str | None:
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def test_imports_run_downward() -> None:
    wrong = []
    for module, targets in graph().items():
        layer = layer_of(module)
        if layer is None:
            continue
        for target in targets:
            allowed = LAYERS[layer]
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_no_import_circles() -> None:
    edges = graph()
    # package __init__ modules re-export their children; an edge into a package's own
    # __init__ from a child is not a circle of the code, so leave those out
    for module, targets in edges.items():
        edges[module] = {t for t in targets if not module.startswith(t + ".")}
    circles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                circles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert circles == []


def test_no_module_is_over_the_size_limit() -> None:
    big = {
        str(path.relative_to(ROOT)): n
        for path in modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert big == {}


@pytest.mark.parametrize("entry", ["kvstore", "kvstore.client"])
def test_importing_the_client_loads_nothing_of_the_server(entry: str) -> None:
    code = (
        f"import sys, {entry}\n"
        f"print('\\n'.join(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        f"or m.startswith({SERVER_ONLY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == []
    from kvstore import KV, AsyncKV  # the package root offers the two clients

    assert KV.__module__ == "kvstore.client.sync_client"
    assert AsyncKV.__module__ == "kvstore.client.async_client"
