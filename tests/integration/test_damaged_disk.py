"""The operator's damaged-disk scenario, with real processes (issue 10, item 9): kill -9
a follower, cut its newest LevelDB .log file to half, restart it. LevelDB itself would
open the shortened log without a word; the node must refuse, naming the path and what
to do."""

from __future__ import annotations

import pytest

from tests.integration.harness import Cluster, wait_until

pytestmark = pytest.mark.integration


def test_a_follower_whose_log_was_cut_refuses_to_start(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    for i in range(400):
        assert cluster.put(leader, f"k{i}", b"v" * 50).status == 200
    # The follower's committed watermark lags its log by up to half a second of writes:
    # keep writing until it records most of them.
    raft_dir = cluster.root / "data" / follower / "raft"
    writes = iter(range(10_000))

    def watermark_reached() -> bool:
        assert cluster.put(leader, f"late{next(writes)}", b"v").status == 200
        recorded = (raft_dir / "COMMITTED").read_text().split()
        return int(recorded[1]) >= 300

    wait_until(watermark_reached, 20, "the follower's watermark to pass 300")
    cluster.kill9(follower)
    newest = max(raft_dir.glob("*.log"), key=lambda p: int(p.stem))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])

    cluster.start(follower)
    assert cluster.wait_exit(follower, timeout=30) == 2
    text = cluster.nodes[follower].log_path.read_text()
    assert "Traceback" not in text, text
    assert str(raft_dir) in text and "had committed up to" in text, text
    assert "kv member remove" in text and "--join" in text, text
    # The rest of the cluster keeps serving.
    assert cluster.put(leader, "after", b"x").status == 200
