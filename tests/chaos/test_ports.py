"""Ports for local clusters come from below the OS's ephemeral range (kvstore.chaos.ports),
where neither bind(0) nor an outgoing connection can take one between the draw and the
node's bind; a port that is not free is skipped, and one another process (or another
draw) claimed is never handed out twice."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.chaos import ports


def test_drawn_ports_differ_are_free_and_lie_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    drawn = ports.free_ports(6)
    assert len(set(drawn)) == 6
    assert all(ports.LOWEST <= port < low for port in drawn)
    assert all(ports.port_free(port) for port in drawn)


@pytest.fixture
def own_claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Claims in a directory of the test's own: fixed ports never meet other workers'."""
    monkeypatch.setattr(ports, "_claims_dir", lambda: tmp_path)
    return tmp_path


def _candidates(count: int) -> list[int]:
    return [p for p in range(20_000, 20_200) if ports.port_free(p)][:count]


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch, own_claims: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind((ports.HOST, 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        free = [p for p in range(20_000, 20_100) if ports.port_free(p)][:2]
        monkeypatch.setattr(ports, "_next_port", itertools.cycle([busy, *free]))
        assert ports.free_ports(2) == free


def test_no_free_port_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "port_free", lambda port: False)
    with pytest.raises(RuntimeError, match="no 2 free ports below the ephemeral range"):
        ports.free_ports(2)


_CHILD = """
import itertools, sys
from pathlib import Path
from kvstore.chaos import ports
ports._claims_dir = lambda: Path(sys.argv[1])
ports._next_port = itertools.cycle(int(p) for p in sys.argv[2:])
print(*ports.free_ports(3), flush=True)
sys.stdin.read()
"""


def test_a_port_another_process_drew_is_not_drawn_until_it_exits(
    monkeypatch: pytest.MonkeyPatch, own_claims: Path
) -> None:
    """Two processes walking the same ports (test workers whose walks meet): neither
    listens yet, so only the claim keeps them from being handed the same ones."""
    candidates = _candidates(6)
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(own_claims), *map(str, candidates)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        theirs = [int(p) for p in child.stdout.readline().split()]
        assert theirs == candidates[:3]
        monkeypatch.setattr(ports, "_next_port", itertools.cycle(candidates))
        assert ports.free_ports(3) == candidates[3:]
        child.stdin.close()
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()
    assert ports.free_ports(3) == theirs, "the kernel drops an exited process's claims"


def test_a_claim_lasts_claim_s_within_a_process_too(
    monkeypatch: pytest.MonkeyPatch, own_claims: Path
) -> None:
    """A walk that comes back to a port it drew (each draw starts it afresh here) while
    the node it was for may still be starting skips it."""
    candidates = _candidates(4)

    def draw_from_the_start() -> list[int]:
        monkeypatch.setattr(ports, "_next_port", itertools.cycle(candidates))
        return ports.free_ports(2)

    assert draw_from_the_start() == candidates[:2]
    assert draw_from_the_start() == candidates[2:], "claimed and not yet bound: not again"
    monkeypatch.setattr(ports, "CLAIM_S", 0.0)
    assert draw_from_the_start() == candidates[:2], "claims older than CLAIM_S are released"


def test_a_claims_directory_someone_else_made_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link planted where the directory goes would have the claims made elsewhere."""
    monkeypatch.setattr(ports.tempfile, "gettempdir", lambda: str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"kvstore-ports-{ports.os.getuid()}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match="not a directory of this user's own"):
        ports.free_ports(1)
