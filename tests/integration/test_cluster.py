"""A real three-node cluster over HTTP: the contract's promises under crashes and pauses.

Each test starts its own `kv serve` processes (see harness.py). They all run in one
xdist group: three Python processes per test already fill a small machine, and
elections under CPU starvation would turn timing into flakiness.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys

import msgpack
import pytest

from tests.integration.harness import Cluster, request, run_serve, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]


def followers(cluster: Cluster, leader: str) -> list[str]:
    return [n for n in cluster.nodes if n != leader]


def put_ok(cluster: Cluster, node: str, key: str, value: bytes) -> dict[str, int]:
    """A write that must succeed; retried only on 503, which means it was never proposed."""
    replies = []

    def attempt() -> bool:
        replies.append(cluster.put(node, key, value))
        return replies[-1].status != 503

    wait_until(attempt, 10, f"a write of {key!r} that is not 503")
    assert replies[-1].status == 200, (replies[-1].status, replies[-1].body)
    return replies[-1].json()


def value_on(cluster: Cluster, node: str, key: str, stale: bool = False) -> bytes | None:
    reply = cluster.get(node, key, stale=stale)
    if reply.status == 404:
        return None
    assert reply.status == 200, (reply.status, reply.body)
    return reply.body


def write_until_ok(
    cluster: Cluster, nodes: list[str], key: str, value: bytes, timeout: float
) -> str:
    """Retry a write on the given nodes until one acknowledges it; returns that node."""
    attempts = itertools.cycle(nodes)

    def attempt() -> str | None:
        node = next(attempts)
        reply = cluster.put(node, key, value, timeout=3.0)
        return node if reply.status == 200 else None

    return wait_until(attempt, timeout, f"a write of {key!r} to succeed", interval=0.05)


# ---------------------------------------------------------------------- the API


def test_put_get_delete_and_cas_on_every_node(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    for i, node in enumerate(cluster.nodes):
        key = f"key-{i}"
        first = put_ok(cluster, node, key, b"one")
        second = put_ok(cluster, node, key, b"two")
        assert second["version"] == first["version"] + 1 == 2
        assert second["revision"] > first["revision"]
        for reader in cluster.nodes:
            reply = cluster.get(reader, key)
            assert reply.status == 200 and reply.body == b"two"
            assert reply.headers["X-KV-Version"] == "2"
            assert reply.headers["X-KV-Mod-Revision"] == str(second["revision"])
            assert reply.headers["X-KV-Leader"] == leader

    follower = followers(cluster, leader)[0]
    reply = cluster.put(follower, "cas", b"a", headers={})
    assert reply.status == 200 and reply.headers["X-KV-Leader"] == leader
    created = cluster.http(follower, "PUT", "/v1/kv/new?prev_version=0", body=b"x")
    assert created.status == 200 and created.json()["version"] == 1
    again = cluster.http(leader, "PUT", "/v1/kv/new?prev_version=0", body=b"y")
    assert again.status == 409
    assert again.json() == {**again.json(), "error": "version_mismatch", "version": 1}
    swapped = cluster.http(follower, "PUT", "/v1/kv/new?prev_version=1", body=b"z")
    assert swapped.status == 200 and swapped.json()["version"] == 2

    wrong = cluster.http(follower, "DELETE", "/v1/kv/new?prev_version=1")
    assert wrong.status == 409 and wrong.json()["version"] == 2
    deleted = cluster.http(follower, "DELETE", "/v1/kv/new")
    assert deleted.status == 200 and "revision" in deleted.json()
    for node in cluster.nodes:
        missing = cluster.get(node, "new")
        assert missing.status == 404 and missing.json()["error"] == "not_found"
    assert cluster.http(leader, "DELETE", "/v1/kv/new").status == 404

    # A stale read on a follower converges without a quorum round.
    wait_until(lambda: value_on(cluster, follower, "key-0", stale=True) == b"two", 5, "stale read")


def test_keys_are_percent_decoded_utf8(cluster: Cluster) -> None:
    node = next(iter(cluster.nodes))
    put_ok(cluster, node, "caf%C3%A9%2Fmenu%20du%20jour", b"v")  # "café/menu du jour"
    assert value_on(cluster, node, "caf%c3%a9%2fmenu%20du%20jour") == b"v"
    assert value_on(cluster, node, "caf%C3%A9/menu%20du%20jour") == b"v"
    assert value_on(cluster, node, "cafe/menu%20du%20jour") is None


def test_exactly_once_headers(cluster: Cluster) -> None:
    node = next(iter(cluster.nodes))
    headers = {"X-KV-Client-Id": "client-a", "X-KV-Seq": "1", "X-KV-First-Outstanding": "1"}
    first = cluster.put(node, "once", b"1", headers=headers)
    retry = cluster.put(node, "once", b"1", headers=headers)
    assert first.status == retry.status == 200
    assert first.json() == retry.json()  # the retry got the stored result, not a new write
    assert cluster.get(node, "once").headers["X-KV-Version"] == "1"
    for bad in (
        {"X-KV-Seq": "1"},
        {"X-KV-Client-Id": "c", "X-KV-Seq": "zero"},
        {"X-KV-Client-Id": "c", "X-KV-Seq": "0"},
        {"X-KV-Client-Id": "c", "X-KV-Seq": "2", "X-KV-First-Outstanding": "3"},
    ):
        reply = cluster.put(node, "once", b"2", headers=bad)
        assert reply.status == 400, bad
        assert reply.json()["error"] == "bad_header"


def test_bad_input_is_rejected_and_the_node_keeps_serving(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    node = followers(cluster, leader)[0]
    cases = [
        ("GET", "/v1/kv/bad%zzkey", None, 400, "bad_key"),
        ("GET", "/v1/kv/bad%2", None, 400, "bad_key"),
        ("PUT", "/v1/kv/%ff%fe", b"v", 400, "bad_key"),
        ("GET", "/v1/kv/", None, 400, "bad_range"),  # a range needs prefix or start
        ("PUT", "/v1/kv/" + "k" * 1025, b"v", 400, "key_too_large"),
        ("PUT", "/v1/kv/k?prev_version=-1", b"v", 400, "bad_prev_version"),
        ("PUT", "/v1/kv/k?prev_version=abc", b"v", 400, "bad_prev_version"),
        ("GET", "/v1/kv/k?consistency=sometimes", None, 400, "bad_consistency"),
        ("PUT", "/v1/kv/big", b"x" * (1024 * 1024 + 1), 413, "value_too_large"),
    ]
    for method, path, body, status, code in cases:
        reply = cluster.http(node, method, path, body=body)
        assert reply.status == status, (path[:40], reply.status, reply.body[:200])
        assert reply.json()["error"] == code and reply.json()["message"]
    put_ok(cluster, node, "k" * 1024, b"x" * (1024 * 1024))  # the limits themselves are fine

    peer = cluster.nodes[node].peer_url
    good = msgpack.packb([[0, 1, "n1", node, 0, 0, False, False]])
    for body in (b"garbage", b"\x91\x93", good[:-3], msgpack.packb({"a": 1}), b""):
        reply = request(peer, "POST", "/raft/messages", body=body)
        assert reply.status == 400, (body, reply.status, reply.body)
        assert reply.json()["error"] and reply.json()["message"]
    wrong = msgpack.packb([[0, 1, "n1", "n9", 0, 0, False, False]])
    assert request(peer, "POST", "/raft/messages", body=wrong).status == 400

    put_ok(cluster, node, "still", b"alive")
    assert value_on(cluster, node, "still") == b"alive"
    assert cluster.status(node)["leader"] is not None


def test_status_reports_members(cluster: Cluster) -> None:
    def agreed() -> dict[str, dict[str, object]] | None:
        views = {node_id: cluster.status(node_id) for node_id in cluster.nodes}
        leaders = {view["leader"] for view in views.values()}
        return views if len(leaders) == 1 and None not in leaders else None

    views = wait_until(agreed, 10, "every node to name the same leader")
    for node_id, node in cluster.nodes.items():
        status = views[node_id]
        leader = status["leader"]
        assert status["id"] == node_id
        assert status["role"] == ("leader" if node_id == leader else "follower")
        for field in ("term", "commit_index", "applied_index", "last_index"):
            assert isinstance(status[field], int)
        members = {m["id"]: m for m in status["members"]}
        assert set(members) == set(cluster.nodes)
        assert members[node_id]["client_url"] == node.client_url
        assert members[node_id]["peer_url"] == node.peer_url


# ---------------------------------------------------------------------- faults


def test_leader_crash_keeps_acknowledged_writes(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    acked = {f"before-{i}": f"v{i}".encode() for i in range(20)}
    for key, value in acked.items():
        put_ok(cluster, leader, key, value)

    cluster.kill9(leader)
    survivors = followers(cluster, leader)
    new_leader = cluster.wait_leader(timeout=5.0, among=survivors)
    assert new_leader != leader
    write_until_ok(cluster, survivors, "after", b"crash", timeout=5.0)
    for key, value in acked.items():
        assert value_on(cluster, survivors[0], key) == value

    cluster.start(leader)  # restart: it must catch up from the new leader
    wait_until(lambda: value_on(cluster, leader, "after", stale=True) == b"crash", 15, "catch-up")
    for key, value in acked.items():
        assert value_on(cluster, leader, key, stale=True) == value


def test_full_restart_keeps_all_data(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    data = {f"k{i}": f"value-{i}".encode() for i in range(30)}
    for i, (key, value) in enumerate(data.items()):
        put_ok(cluster, list(cluster.nodes)[i % 3], key, value)
    cluster.http(leader, "DELETE", "/v1/kv/k0")
    del data["k0"]

    for node_id in cluster.nodes:
        assert cluster.stop(node_id) == 0, cluster.logs()
    cluster.start()
    cluster.wait_healthy()
    for node_id in cluster.nodes:
        for key, value in data.items():
            assert value_on(cluster, node_id, key) == value
        assert value_on(cluster, node_id, "k0") is None
    put_ok(cluster, leader, "k1", b"new")
    assert cluster.get(leader, "k1").headers["X-KV-Version"] == "2"


def test_paused_leader_steps_down_and_never_serves_a_stale_read(cluster: Cluster) -> None:
    old = cluster.wait_leader()
    put_ok(cluster, old, "x", b"old")
    cluster.pause(old)
    survivors = followers(cluster, old)
    new = cluster.wait_leader(timeout=10.0, among=survivors)
    assert new != old
    write_until_ok(cluster, survivors, "x", b"new", timeout=5.0)

    cluster.resume(old)
    # The very first linearizable read on the old leader must see the new value.
    assert value_on(cluster, old, "x") == b"new"
    wait_until(lambda: cluster.status(old)["role"] == "follower", 5, "old leader to step down")
    assert cluster.status(old)["leader"] == new
    assert value_on(cluster, old, "x") == b"new"


def test_sigterm_exits_cleanly(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    put_ok(cluster, leader, "k", b"v")
    assert cluster.stop(leader) == 0
    survivors = followers(cluster, leader)
    cluster.wait_leader(timeout=5.0, among=survivors)
    write_until_ok(cluster, survivors, "k2", b"v2", timeout=5.0)


# ---------------------------------------------------------------------- config errors


GOOD_NODES = """
[[nodes]]
id = "n1"
client_url = "http://127.0.0.1:{p1}"
peer_url = "http://127.0.0.1:{p2}"
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[cluster]\nname = "t"\ndata_dir = "d"\ncolour = "blue"\n' + GOOD_NODES, "colour"),
        (
            '[cluster]\nname = "t"\ndata_dir = "d"\n' + GOOD_NODES + GOOD_NODES,
            "duplicate node id",
        ),
        (
            '[cluster]\nname = "t"\ndata_dir = "d"\n'
            + GOOD_NODES
            + GOOD_NODES.replace('"n1"', '"n2"').replace("{p2}", "{p3}"),
            "already used",
        ),
        (
            '[cluster]\nname = "t"\ndata_dir = "d"\n' + GOOD_NODES.replace("http://", "ftp://"),
            "client_url",
        ),
        (
            '[cluster]\nname = "t"\ndata_dir = "d"\n' + GOOD_NODES + "[tuning]\ntick_ms = -1\n",
            "tuning.tick_ms",
        ),
    ],
    ids=["unknown-key", "duplicate-id", "duplicate-port", "bad-url", "bad-tuning"],
)
def test_config_errors_exit_2_with_one_line(tmp_path, text: str, expected: str) -> None:
    from tests.integration.harness import free_ports

    p1, p2, p3 = free_ports(3)
    config = tmp_path / "cluster.toml"
    config.write_text(text.format(p1=p1, p2=p2, p3=p3))
    result = run_serve(config, "n1")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_data_dir_that_is_a_file_and_unknown_node(tmp_path) -> None:
    from tests.integration.harness import free_ports

    p1, p2 = free_ports(2)
    (tmp_path / "d").write_text("not a directory")
    config = tmp_path / "cluster.toml"
    config.write_text('[cluster]\nname = "t"\ndata_dir = "d"\n' + GOOD_NODES.format(p1=p1, p2=p2))
    result = run_serve(config, "n1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "d" in result.stderr and "director" in result.stderr
    unknown = run_serve(config, "n7")
    assert unknown.returncode == 2 and "n7" in unknown.stderr
    missing = run_serve(tmp_path / "nope.toml", "n1")
    assert missing.returncode == 2 and "nope.toml" in missing.stderr


def test_a_second_process_cannot_use_a_running_nodes_data_dir(cluster: Cluster) -> None:
    node_id = next(iter(cluster.nodes))
    result = run_serve(cluster.config_path, node_id)
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr
    assert "in use" in result.stderr or "cannot listen" in result.stderr
    assert cluster.status(node_id)["id"] == node_id  # the running node is unharmed


def test_cluster_up_starts_and_stops_every_node(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.harness import child_env

    c = cluster_factory()
    pids: list[int] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore.cli.main", "cluster", "up", "--config", str(c.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=child_env(),
        cwd=c.root,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("leader:"):
                break
        assert any(line.startswith("leader:") for line in lines), lines
        pids += [int(line.split("pid ")[1].split()[0]) for line in lines if " pid " in line]
        assert len(pids) == 3
        first = next(iter(c.nodes))
        put_ok(c, first, "k", b"v")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        for pid in pids:  # every child is gone
            wait_until(lambda p=pid: not _alive(p), 10, f"node pid {pid} to exit")
    finally:
        if proc.poll() is None:  # SIGTERM lets `cluster up` stop its children first
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
