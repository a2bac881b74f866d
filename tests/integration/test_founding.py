"""A founder never silently starts a new history (issue 10, item 4), yet plain
`kv serve` on fresh directories founds a cluster: a pristine founder asks its peers
(`GET /raft/seen`) and refuses when one has seen an earlier incarnation of its id (a
wiped disk) or was seeded by `kv snapshot restore` while it was not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, child_env, request, run_serve, wait_until
from tests.integration.test_membership import add_member, remove_member

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]


def _refuses(config: Path, node_id: str) -> str:
    try:
        result = run_serve(config, node_id, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{node_id} founded a cluster on an empty data directory")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    data = config.parent / "data" / node_id
    assert not (data / "raft").exists()  # no trace: no log, no incarnation
    return result.stderr


def _seen(cluster: Cluster, holder: str) -> dict[str, str]:
    path = cluster.root / "data" / holder / "seen_incarnations.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _incarnation(cluster: Cluster, node_id: str) -> str:
    return (cluster.root / "data" / node_id / "raft" / "INCARNATION").read_text().strip()


def victim_of(cluster: Cluster, leader: str) -> str:
    return next(n for n in cluster.nodes if n != leader)


def _wait_known(cluster: Cluster, node_id: str) -> None:
    """Until some peer has recorded `node_id`'s current incarnation."""
    own = _incarnation(cluster, node_id)
    peers = [n for n in cluster.nodes if n != node_id]
    wait_until(
        lambda: any(_seen(cluster, p).get(node_id) == own for p in peers),
        15,
        f"a peer to record {node_id}'s incarnation",
    )


def test_plain_serve_on_fresh_dirs_founds_a_cluster(cluster_factory: type[Cluster]) -> None:
    """The contract's and the benchmark's way: every founder at once, no flag."""
    cluster = cluster_factory()
    cluster.start(initial=False)
    try:
        leader = cluster.wait_healthy(timeout=30)
    except TimeoutError:
        pytest.fail(f"plain kv serve did not found a cluster:\n{cluster.logs()}")
    assert cluster.put(leader, "k", b"v").status == 200
    assert cluster.get(leader, "k").body == b"v"
    incarnations = {n: _incarnation(cluster, n) for n in cluster.nodes}
    assert len(set(incarnations.values())) == 3
    for node_id in cluster.nodes:
        _wait_known(cluster, node_id)


def test_a_wiped_founder_refuses_while_the_cluster_runs(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    assert cluster.put(leader, "k", b"v").status == 200
    victim = next(n for n in cluster.nodes if n != leader)
    _wait_known(cluster, victim)
    cluster.stop(victim)
    shutil.rmtree(cluster.root / "data" / victim)
    text = _refuses(cluster.config_path, victim)
    assert "earlier incarnation" in text and "--join" in text and "kv member remove" in text
    leader = cluster.wait_leader()
    assert cluster.put(leader, "k2", b"v").status == 200
    assert cluster.get(leader, "k").body == b"v"


def test_remove_wipe_join_add_still_works(cluster: Cluster) -> None:
    """README "Replacing a disk": removal makes every member forget the old incarnation."""
    leader = cluster.wait_leader()
    assert cluster.put(leader, "k", b"v").status == 200
    victim = next(n for n in cluster.nodes if n != leader)
    _wait_known(cluster, victim)
    old = _incarnation(cluster, victim)
    remove_member(cluster, victim)
    survivors = [n for n in cluster.nodes if n != victim]
    wait_until(
        lambda: all(victim not in _seen(cluster, n) for n in survivors),
        15,
        "the survivors to forget the removed member's incarnation",
    )
    shutil.rmtree(cluster.root / "data" / victim)
    cluster.gone.discard(victim)
    cluster.start(victim, join=True)
    add_member(cluster, victim)
    wait_until(lambda: cluster.get(victim, "k", stale=True).body == b"v", 20, "the new disk")
    assert _incarnation(cluster, victim) != old
    _wait_known(cluster, victim)  # and a second wipe of the new disk refuses again
    cluster.stop(victim)
    shutil.rmtree(cluster.root / "data" / victim)
    assert "earlier incarnation" in _refuses(cluster.config_path, victim)


def test_a_partially_restored_cluster_cannot_start_its_unseeded_founders(
    cluster: Cluster, cluster_factory: type[Cluster]
) -> None:
    leader = cluster.wait_leader()
    assert cluster.put(leader, "k", b"v").status == 200
    backup = cluster.root / "backup.kvsnap"
    saved = cluster.kv("snapshot", "save", str(backup), "--endpoints", cluster.endpoints())
    assert saved.returncode == 0, saved.stderr
    fresh = cluster_factory()
    seeded = subprocess.run(
        [
            *(sys.executable, "-m", "kvstore.cli.main", "snapshot", "restore", str(backup)),
            *("--config", str(fresh.config_path), "--node", "n1"),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=fresh.root,
        timeout=60,
    )
    assert seeded.returncode == 0, seeded.stderr
    fresh.start("n1", initial=False)  # seeded: it starts, and tells its peers so
    wait_until(lambda: fresh.status("n1"), 20, "the seeded n1 to answer")
    for node_id in ("n2", "n3"):  # an unseeded majority must not found a history of its own
        text = _refuses(fresh.config_path, node_id)
        assert "seeded by `kv snapshot restore`" in text and f"--node {node_id}" in text


def test_with_a_cluster_secret_the_question_is_authenticated(
    cluster_factory: type[Cluster],
) -> None:
    """Plain starts found a secret cluster too (the probe signs its question); an
    unsigned question is refused, and a wiped founder still learns of its old life."""
    cluster = cluster_factory(election_ticks=30)  # type: ignore[call-arg]
    cluster.extra_toml = '\n[peer_auth]\nsecret = "founding-secret-' + "y" * 24 + '"\n'
    cluster.write_config()
    cluster.start(initial=False)
    leader = cluster.wait_healthy(timeout=30)
    assert cluster.put(leader, "k", b"v").status == 200
    peer_url = cluster.nodes[leader].peer_url
    claims = {"X-Raft-Cluster": "test", "X-Raft-Sender": victim_of(cluster, leader)}
    unsigned = request(peer_url, "GET", "/raft/seen?node=n1", headers=claims)
    assert unsigned.status == 401, unsigned.body
    victim = victim_of(cluster, leader)
    _wait_known(cluster, victim)
    cluster.stop(victim)
    shutil.rmtree(cluster.root / "data" / victim)
    assert "earlier incarnation" in _refuses(cluster.config_path, victim)


def test_the_question_follows_the_contract_query_rule(cluster: Cluster) -> None:
    peer_url = cluster.nodes["n1"].peer_url
    seen = request(peer_url, "GET", "/raft/seen?node=n2")
    assert seen.status == 200 and seen.json()["node"] == "n2"
    assert seen.json()["restored"] is False
    for query, named in (("node=n2&node=n3", "'node'"), ("node=n2&x=1", "'x'")):
        reply = request(peer_url, "GET", f"/raft/seen?{query}")
        assert reply.status == 400 and named in reply.json()["message"], reply.body
    assert request(peer_url, "GET", "/raft/seen").json()["error"] == "bad_node"
