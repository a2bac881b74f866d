"""Snapshots, membership changes and backups on real `kv serve` processes.

A low `snapshot_entries` makes every node compact its log within a few hundred writes,
so a node added later can only catch up by InstallSnapshot. A writer runs through every
membership change and must lose no acknowledged write.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, free_ports, wait_until
from tests.integration.writer import Writer

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]

TUNING = {"election_ticks": 30, "snapshot_entries": 60}


def started(cluster_factory, size: int = 3, **tuning: int) -> Cluster:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(size, **{**TUNING, **tuning})
    cluster.start()
    cluster.wait_healthy(timeout=20.0)
    return cluster


def fill(cluster: Cluster, count: int, prefix: str = "k") -> None:
    leader = cluster.wait_leader()
    for i in range(count):
        reply = cluster.put(leader, f"{prefix}{i}", b"v%d" % i)
        assert reply.status == 200, reply.body


def members(cluster: Cluster) -> dict[str, str]:
    """id -> role, as the leader lists them."""
    result = cluster.kv("member", "list", "--json", "--endpoints", cluster.endpoints())
    assert result.returncode == 0, result.stderr
    return {m["id"]: m["role"] for m in json.loads(result.stdout)["members"]}


def add_member(cluster: Cluster, node_id: str) -> None:
    node = cluster.nodes[node_id]
    result = cluster.kv(
        "member",
        "add",
        node_id,
        "--peer-url",
        node.peer_url,
        "--client-url",
        node.client_url,
        "--endpoints",
        cluster.endpoints([n for n in cluster.nodes if n != node_id]),
    )
    assert result.returncode == 0, (result.stdout, result.stderr, cluster.logs())
    assert f"{node_id} is a voter" in result.stdout


def remove_member(cluster: Cluster, node_id: str) -> None:
    cluster.gone.add(node_id)
    result = cluster.kv("member", "remove", node_id, "--json", "--endpoints", cluster.endpoints())
    assert result.returncode == 0, (result.stdout, result.stderr, cluster.logs())
    assert node_id not in {m["id"] for m in json.loads(result.stdout)["members"]}
    if cluster.nodes[node_id].running:
        assert_exits_as_removed(cluster, node_id)


def assert_exits_as_removed(cluster: Cluster, node_id: str) -> None:
    """A removed node learns it (from its log or from a peer's 410) and exits by itself
    with the exit code reserved for that (kvstore.server.EXIT_REMOVED)."""
    assert cluster.wait_exit(node_id, timeout=20.0) == 3
    assert "was removed from the cluster" in cluster.nodes[node_id].log_path.read_text()


def test_the_log_is_compacted_on_every_node(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = started(cluster_factory)
    fill(cluster, 200)

    def compacted() -> bool:
        return all(
            cluster.status(n)["first_index"] > 1 and cluster.status(n)["log_size"] <= 120
            for n in cluster.nodes
        )

    wait_until(compacted, 10, "every node to truncate its log")
    result = cluster.kv("status", "--json", "--endpoints", cluster.endpoints())
    rows = json.loads(result.stdout)
    assert all(row["snapshot_index"] == row["first_index"] - 1 > 0 for row in rows)
    table = cluster.kv("status", "--endpoints", cluster.endpoints()).stdout
    assert "SNAPSHOT" in table.splitlines()[0] and "LOG" in table.splitlines()[0]
    # A restart starts from the snapshot and keeps every key.
    cluster.stop("n1")
    cluster.start("n1")
    cluster.wait_healthy()
    wait_until(lambda: cluster.get("n1", "k199", stale=True).body == b"v199", 10, "n1 to replay")
    assert cluster.get("n1", "k7", stale=True).body == b"v7"


def test_add_by_snapshot_remove_a_follower_then_restart_everything(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = started(cluster_factory)
    fill(cluster, 300)
    writer = Writer(cluster)
    writer.start()
    try:
        # n4 is in the file like any node; --join alone keeps it from founding a cluster.
        cluster.add_node("n4", mark_join=False)
        cluster.start("n4", join=True)
        wait_until(lambda: cluster.status("n4"), 10, "n4 to answer")
        assert cluster.status("n4")["members"] == []  # waits to be added, serves nothing
        add_member(cluster, "n4")
        log_text = cluster.nodes["n4"].log_path.read_text()
        assert "installed a snapshot from the leader" in log_text  # caught up by snapshot
        assert cluster.status("n4")["first_index"] > 1
        assert members(cluster) == {"n1": "voter", "n2": "voter", "n3": "voter", "n4": "voter"}

        # Remove a follower while it is down; restarted, it must not disrupt the others
        # (no votes for non-members), and is told by them (410) that it was removed.
        leader = cluster.wait_leader()
        follower = next(n for n in ("n1", "n2", "n3") if n != leader)
        cluster.stop(follower)
        remove_member(cluster, follower)
        assert set(members(cluster)) == {"n1", "n2", "n3", "n4"} - {follower}
        term = cluster.status(leader)["term"]
        cluster.start(follower)
        assert_exits_as_removed(cluster, follower)
        assert cluster.status(leader)["term"] == term and cluster.wait_leader() == leader
    finally:
        writer.stop()
    writer.check(cluster.wait_leader())
    assert cluster.get("n4", "k299").body == b"v299"

    cluster.stop_all()
    cluster.start()
    cluster.wait_healthy(timeout=20.0)
    assert set(members(cluster)) == {"n1", "n2", "n3", "n4"} - {follower}
    writer.check(cluster.wait_leader())
    assert cluster.get("n4", "k0").body == b"v0"


def test_removing_the_leader_hands_leadership_over_first(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = started(cluster_factory)
    fill(cluster, 100)
    writer = Writer(cluster)
    writer.start()
    try:
        cluster.add_node("n4")  # `join = true` in cluster.toml: no --join needed
        cluster.start("n4")
        add_member(cluster, "n4")
        leader = cluster.wait_leader()
        term = cluster.status(leader)["term"]
        remove_member(cluster, leader)
        new_leader = cluster.wait_leader()
        assert new_leader != leader
        assert cluster.status(new_leader)["term"] > term
        assert leader not in members(cluster)
    finally:
        writer.stop()
    writer.check(cluster.wait_leader())


def test_membership_errors_are_json_with_stable_codes(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = started(cluster_factory)
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    cases = [
        ("DELETE", "/v1/members/nope", None, 404, "not_a_member"),
        ("POST", "/v1/members", b"{}", 400, "bad_member"),
        ("POST", "/v1/members", b'{"id": "x", "client_url": "ftp://a", "peer_url": "b"}', 400),
        ("POST", "/v1/members", json.dumps(_same_urls(cluster, "n2", "n9")).encode(), 400),
        ("POST", "/v1/members", json.dumps(_same_urls(cluster, "n2", "n2")).encode(), 200),
    ]
    for method, path, body, status, *code in cases:
        reply = cluster.http(follower, method, path, body=body)
        assert reply.status == status, (method, path, reply.body)
        if code:
            assert reply.json()["error"] == code[0]
    result = cluster.kv("member", "remove", "nope", "--endpoints", cluster.endpoints())
    assert result.returncode == 1 and "not_a_member" in result.stderr

    # A node that never catches up (nothing listens there) stays a learner, and says so.
    ghost_client, ghost_peer = free_ports(2)
    ghost = {
        "id": "ghost",
        "client_url": f"http://127.0.0.1:{ghost_client}",
        "peer_url": f"http://127.0.0.1:{ghost_peer}",
    }
    reply = cluster.http(follower, "POST", "/v1/members?timeout=1", body=json.dumps(ghost).encode())
    assert reply.status == 504 and reply.json()["state"] == "learner", reply.body
    assert members(cluster)["ghost"] == "learner"
    assert cluster.put(leader, "still", b"writable").status == 200  # learners are no quorum
    removed = cluster.kv("member", "remove", "ghost", "--endpoints", cluster.endpoints())
    assert removed.returncode == 0, removed.stderr
    assert members(cluster) == {"n1": "voter", "n2": "voter", "n3": "voter"}


def _same_urls(cluster: Cluster, of: str, node_id: str) -> dict[str, str]:
    node = cluster.nodes[of]
    return {"id": node_id, "client_url": node.client_url, "peer_url": node.peer_url}


def test_backup_restores_into_a_new_cluster(cluster_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = started(cluster_factory)
    leader = source.wait_leader()
    for i in range(150):
        assert source.put(leader, f"k{i % 50}", b"v%d" % i).status == 200  # versions up to 3
    assert source.http(leader, "DELETE", "/v1/kv/k3").status == 200
    backup = tmp_path / "backup.kvsnap"
    saved = source.kv("snapshot", "save", str(backup), "--endpoints", source.endpoints(["n2"]))
    assert saved.returncode == 0, saved.stderr
    assert "saved snapshot at index" in saved.stdout
    expected = {}
    for i in range(50):
        reply = source.get(leader, f"k{i}")
        expected[f"k{i}"] = (reply.status, reply.body, reply.headers.get("X-KV-Version"))
    source.stop_all()

    target: Cluster = cluster_factory(3, **TUNING)
    damaged = tmp_path / "damaged.kvsnap"
    damaged.write_bytes(backup.read_bytes()[:-1] + b"\0")
    refused = target.kv("snapshot", "restore", str(damaged), "--config", str(target.config_path))
    assert refused.returncode == 1 and "SHA-256" in refused.stderr
    restored = target.kv("snapshot", "restore", str(backup), "--config", str(target.config_path))
    assert restored.returncode == 0, restored.stderr
    again = target.kv("snapshot", "restore", str(backup), "--config", str(target.config_path))
    assert again.returncode == 1 and "not empty" in again.stderr
    target.start()
    new_leader = target.wait_healthy(timeout=20.0)
    for key, (status, body, version) in expected.items():
        reply = target.get(new_leader, key)
        assert (reply.status, reply.body, reply.headers.get("X-KV-Version")) == (
            status,
            body,
            version,
        ), key
    assert target.put(new_leader, "after", b"x").status == 200
    assert members(target) == {"n1": "voter", "n2": "voter", "n3": "voter"}
