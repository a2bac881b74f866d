"""Operating a real cluster: `/metrics` moves under a workload, `/readyz` follows the
node's contact with the quorum, `/livez` does not.

In the `integration` xdist group with the other real-cluster tests (see test_cluster.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Cluster, child_env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]


def scrape(cluster: Cluster, node: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics, keyed by (name, sorted labels); also checks
    that the body parses as the Prometheus text format."""
    reply = cluster.http(node, "GET", "/metrics")
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_during_a_workload(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    before = scrape(cluster, leader)
    before_follower = scrape(cluster, follower)
    done = threading.Event()
    errors: list[str] = []

    def workload() -> None:
        for i in range(60):
            reply = cluster.put(leader if i % 2 else follower, f"m{i % 7}", b"x" * 100)
            if reply.status != 200:
                errors.append(f"put {i}: {reply.status} {reply.body!r}")
        cluster.get(leader, "missing-key")
        done.set()

    thread = threading.Thread(target=workload)
    thread.start()
    scrapes = []
    while not done.is_set():  # scrape while the writes go on: counters never go back
        scrapes.append(value(scrape(cluster, leader), "kv_raft_proposals_total"))
    thread.join(timeout=60)
    assert not errors, errors
    assert scrapes == sorted(scrapes)
    after = scrape(cluster, leader)

    def moved(name: str, at_least: float, **labels: str) -> None:
        delta = value(after, name, **labels) - value(before, name, **labels)
        assert delta >= at_least, (name, labels, delta)

    # The leader's client port saw its own 30 puts; the follower's 30 reach it over the
    # peer link, so they count on the follower's port (checked below) and as proposals.
    moved("kv_http_requests_total", 30, op="put", outcome="ok")
    moved("kv_http_request_duration_seconds_count", 30, op="put", outcome="ok")
    moved("kv_http_request_duration_seconds_bucket", 30, op="put", outcome="ok", le="+Inf")
    moved("kv_http_request_duration_seconds_sum", 1e-6, op="put", outcome="ok")
    moved("kv_http_requests_total", 1, op="get", outcome="not_found")
    moved("kv_raft_proposals_total", 30)  # the leader's own; forwarded ones are the core's
    moved("kv_raft_last_log_index", 60)
    moved("kv_raft_applied_entries_total", 60)
    moved("kv_raft_commit_latency_seconds_count", 30)
    moved("kv_storage_fsync_duration_seconds_count", 1)
    moved("kv_storage_fsync_batch_entries_sum", 60)
    moved("kv_state_revision", 60)
    # A histogram fills: its buckets are cumulative and end at the count.
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in after.items()
        if name == "kv_raft_commit_latency_seconds_bucket"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == value(
        after, "kv_raft_commit_latency_seconds_count"
    )
    assert counts[0] < counts[-1] or counts[0] > 0
    status = cluster.status(leader)
    assert value(after, "kv_raft_term") == status["term"]
    assert value(after, "kv_raft_role", role="leader") == 1
    assert ("kv_watchers", ()) in after
    for peer in cluster.nodes:
        if peer != leader:
            assert value(after, "kv_peer_link_up", peer=peer) == 1
            assert ("kv_replication_lag_entries", (("peer", peer),)) in after
    follower_after = scrape(cluster, follower)
    assert value(follower_after, "kv_raft_role", role="follower") == 1
    assert value(follower_after, "kv_raft_proposals_total") == 0  # it forwards, never proposes
    assert value(follower_after, "kv_raft_applied_index") > value(
        before_follower, "kv_raft_applied_index"
    )
    assert value(follower_after, "kv_http_requests_total", op="put", outcome="ok") >= 30


def test_readyz_follows_contact_with_the_quorum(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    lonely = next(n for n in cluster.nodes if n != leader)
    others = [n for n in cluster.nodes if n != lonely]
    for node in cluster.nodes:
        wait_until(
            lambda n=node: cluster.http(n, "GET", "/readyz").status == 200, 10, f"{node} ready"
        )
    ready = cluster.http(lonely, "GET", "/readyz").json()
    assert ready["ready"] is True and ready["leader"] == leader
    for node in others:
        cluster.pause(node)
    try:
        reply = wait_until(
            lambda: (r := cluster.http(lonely, "GET", "/readyz", timeout=2)).status == 503 and r,
            10,
            f"{lonely} to turn unready when cut off",
        )
        assert reply.json()["error"] == "not_ready", reply.body
        live = cluster.http(lonely, "GET", "/livez")
        assert live.status == 200 and live.json()["live"] is True  # alive, just not ready
    finally:
        for node in others:
            cluster.resume(node)
    wait_until(
        lambda: cluster.http(lonely, "GET", "/readyz").status == 200, 15, f"{lonely} ready again"
    )
    for path in ("/readyz?verbose=1", "/livez?x=1", "/metrics?name=kv_raft_term"):
        reply = cluster.http(lonely, "GET", path)
        assert reply.status == 400 and reply.json()["error"] == "bad_query", (path, reply.body)


def test_kv_status_watch_refreshes_until_interrupted(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "kvstore.cli.main", "status", "--watch", "0.2"),
            *("--endpoints", cluster.endpoints()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while sum(line.startswith("kv status, every 0.2s") for line in lines) < 3:
            line = proc.stdout.readline()
            assert line, (
                f"kv status --watch ended early: {proc.stderr.read() if proc.stderr else ''}"
            )
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    tables = "".join(lines).split("kv status, every 0.2s")[1:3]
    for table in tables:  # each refresh is the whole table
        rows = [r for r in table.splitlines() if r.startswith("n")]
        assert sorted(r.split()[0] for r in rows) == sorted(cluster.nodes)
        assert [r.split()[1] for r in rows].count("leader") == 1
        assert any(r.split()[0] == leader and r.split()[1] == "leader" for r in rows)


def test_watchers_gauge_counts_open_watches(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    answers = []
    poll = threading.Thread(
        target=lambda: answers.append(
            cluster.http(leader, "GET", "/v1/watch?key=watched&wait=20", timeout=30)
        )
    )
    poll.start()
    try:
        wait_until(
            lambda: value(scrape(cluster, leader), "kv_watchers") == 1, 10, "one watcher counted"
        )
    finally:
        assert cluster.put(leader, "watched", b"1").status == 200  # ends the long poll
        poll.join(timeout=30)
    assert answers and answers[0].status == 200, answers
    wait_until(lambda: value(scrape(cluster, leader), "kv_watchers") == 0, 10, "watch closed")
