"""Ports for local clusters come from below the OS's ephemeral range (kvstore.chaos.ports),
where neither bind(0) nor an outgoing connection can take one between the draw and the
node's bind; a port that is not free is skipped."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from kvstore.chaos import ports


def test_drawn_ports_differ_are_free_and_lie_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    drawn = ports.free_ports(6)
    assert len(set(drawn)) == 6
    assert all(ports.LOWEST <= port < low for port in drawn)
    assert all(ports.port_free(port) for port in drawn)


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
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
