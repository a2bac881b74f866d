"""`kv` against real nodes when the operator got something wrong: a peer port given as a
client endpoint, a member added whose process is not running."""

from __future__ import annotations

import json
import time

import pytest

from kvstore.cli.client_commands import EXIT_UNAVAILABLE
from kvstore.client import KV
from tests.integration.harness import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]


def test_a_peer_port_is_not_a_pyraftkv_endpoint(cluster: Cluster) -> None:
    peer = cluster.nodes["n1"].peer_url
    for args in (["get", "k"], ["put", "k", "v"], ["status"], ["member", "list"]):
        done = cluster.kv(*args, "--endpoints", peer, "--timeout", "3")
        assert done.returncode == EXIT_UNAVAILABLE, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert f"{peer}: not a pyraftkv endpoint" in done.stderr, (args, done.stderr)
        assert "key not found" not in done.stderr


def member_ids(cluster: Cluster) -> dict[str, str]:
    done = cluster.kv("member", "list", "--json", "--endpoints", cluster.endpoints())
    assert done.returncode == 0, done.stderr
    return {m["id"]: m["role"] for m in json.loads(done.stdout)["members"]}


def test_adding_a_node_that_is_not_running_says_it_is_unreachable(cluster: Cluster) -> None:
    node = cluster.add_node("n4")  # in cluster.toml, never started
    eps = cluster.endpoints(["n1", "n2", "n3"])
    add = ["member", "add", "n4", "--peer-url", node.peer_url, "--client-url", node.client_url]
    started = time.monotonic()
    done = cluster.kv(*add, "--endpoints", eps, "--timeout", "30")
    assert time.monotonic() - started < 15, done.stderr  # told early, not after 30 s
    assert done.returncode == 1, (done.stdout, done.stderr)
    line = done.stderr.strip()
    assert "Traceback" not in line and len(line.splitlines()) == 1
    assert "n4 is unreachable from the leader" in line and node.peer_url in line
    assert "kv member remove n4" in line and "caught up" not in line
    assert member_ids(cluster).get("n4") == "learner"

    done = cluster.kv(*add, "--remove-if-unreachable", "--endpoints", eps, "--timeout", "30")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "the learner n4 was removed again" in done.stderr
    assert "n4" not in member_ids(cluster)


def test_the_blocking_client_lists_members_and_takes_a_snapshot(cluster: Cluster) -> None:
    with KV(cluster.endpoints(), timeout=10) as kv:
        kv.put("snap/a", b"1")
        members = kv.members()
        assert {m.id for m in members.members} == {"n1", "n2", "n3"}
        assert members.leader == cluster.wait_leader()
        assert kv.snapshot()[:1]  # the backup bytes; `kv snapshot save` checks the format
