"""A founder never silently starts a new history (issue 10, item 4): on an empty data
directory it needs an explicit first start (`--initial-cluster`, which `kv cluster up`
passes when every founder's directory is empty); a wiped or unseeded founder refuses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, child_env, run_serve

pytestmark = pytest.mark.integration


def _refuses(config: Path, node_id: str) -> str:
    try:
        result = run_serve(config, node_id, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{node_id} started on an empty data directory without being told to")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_a_founder_on_an_empty_dir_needs_an_explicit_first_start(
    cluster_factory: type[Cluster],
) -> None:
    cluster = cluster_factory()
    text = _refuses(cluster.config_path, "n1")
    assert "--initial-cluster" in text and "--join" in text and "kv member remove" in text
    assert not (cluster.root / "data" / "n1" / "raft").exists() or not any(
        (cluster.root / "data" / "n1" / "raft").glob("*.log")
    )


def test_a_wiped_founder_refuses_while_the_cluster_runs(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    assert cluster.put(leader, "k", b"v").status == 200
    victim = next(n for n in cluster.nodes if n != leader)
    cluster.stop(victim)
    shutil.rmtree(cluster.root / "data" / victim)
    text = _refuses(cluster.config_path, victim)
    assert "--join" in text
    assert cluster.put(leader, "k2", b"v").status == 200


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
    for node_id in ("n2", "n3"):  # an unseeded majority must not found a history of its own
        assert "--initial-cluster" in _refuses(fresh.config_path, node_id)
