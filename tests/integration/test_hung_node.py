"""One node SIGSTOPped: every `kv` client command still answers within its --timeout.

A stopped process keeps its listening socket, so the kernel accepts connections and
nobody answers: the worst kind of dead node for a client. These tests put such a node
first in --endpoints (where a naive client goes first) and check that each command
succeeds through the healthy nodes within --timeout plus a small margin, and that with
only the stopped node to ask, each fails within --timeout with a message naming it.

The commands run in this process (click's runner), so the time measured is the
command's own, not the interpreter's start-up, which a loaded machine stretches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvstore.cli.client_commands import EXIT_UNAVAILABLE, EXIT_UNKNOWN
from kvstore.cli.main import cli
from kvstore.client.endpoints import ENV_VAR
from tests.integration.harness import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]

TIMEOUT_S = 4.0
MARGIN_S = 0.5


@pytest.fixture
def paused_follower(cluster: Cluster) -> Iterator[str]:
    """A follower, SIGSTOPped for the whole test (resumed before teardown)."""
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.pause(follower)
    try:
        yield follower
    finally:
        cluster.resume(follower)


def timed_kv(*args: str) -> tuple[float, int, str, str]:
    started = time.monotonic()
    done = CliRunner().invoke(cli, list(args), env={ENV_VAR: ""})
    took = time.monotonic() - started
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return took, done.exit_code, done.stdout, done.stderr


def client_commands(tmp: Path) -> list[list[str]]:
    return [
        ["put", "hung/a", "1"],
        ["get", "hung/a"],
        ["delete", "hung/a"],
        ["status"],
        ["member", "list"],
        ["snapshot", "save", str(tmp / "backup.snap")],
    ]


def test_every_command_succeeds_past_a_paused_first_endpoint(
    cluster: Cluster, paused_follower: str, tmp_path: Path
) -> None:
    others = [n for n in cluster.nodes if n != paused_follower]
    endpoints = cluster.endpoints([paused_follower, *others])  # the stopped node first
    for args in client_commands(tmp_path):
        took, code, out, err = timed_kv(
            *args, "--endpoints", endpoints, "--timeout", str(TIMEOUT_S)
        )
        assert code == 0, (args, out, err)
        assert took < TIMEOUT_S + MARGIN_S, (args, took, err)
        assert "Traceback" not in err
        if args[0] == "status":
            assert "unreachable" in out and cluster.url(paused_follower) in out
    assert (tmp_path / "backup.snap").stat().st_size > 0
    # Membership changes are not hedged: they find the leader first, past the stopped node.
    took, code, _, err = timed_kv(
        "member", "remove", "n9", "--endpoints", endpoints, "--timeout", str(TIMEOUT_S)
    )
    assert (code, took < TIMEOUT_S + MARGIN_S) == (1, True), (took, err)
    assert "not_a_member" in err
    # With the default --timeout (10 s) a read is hedged after a second, not after 6 s.
    took, code, _, err = timed_kv("get", "hung/b", "--endpoints", endpoints)
    assert code == 1 and "key not found" in err
    assert took < 2.5, took


def test_with_only_the_paused_node_each_command_names_it_within_the_timeout(
    cluster: Cluster, paused_follower: str, tmp_path: Path
) -> None:
    url = cluster.url(paused_follower)
    timeout = 1.0
    for args in client_commands(tmp_path):
        took, code, out, err = timed_kv(*args, "--endpoints", url, "--timeout", str(timeout))
        write = args[0] in ("put", "delete")  # may have reached the node: outcome unknown
        assert code == (EXIT_UNKNOWN if write else EXIT_UNAVAILABLE), (args, out, err)
        assert took < timeout + MARGIN_S, (args, took, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (args, err)
        assert url in lines[0] and "no answer within 1 s" in lines[0], (args, err)


def test_with_the_leader_paused_commands_succeed_once_another_is_elected(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The stopped node is the leader: the others elect a new one within about a second,
    and every command gets through within its --timeout, hedging past forwards that
    still hang on the old leader."""
    leader = cluster.wait_leader()
    others = [n for n in cluster.nodes if n != leader]
    endpoints = cluster.endpoints([leader, *others])
    timeout = 10.0
    cluster.pause(leader)
    try:
        for args in client_commands(tmp_path):
            took, code, out, err = timed_kv(*args, "--endpoints", endpoints, "--timeout", "10")
            assert code == 0, (args, out, err)
            assert took < timeout + MARGIN_S, (args, took, err)
    finally:
        cluster.resume(leader)
