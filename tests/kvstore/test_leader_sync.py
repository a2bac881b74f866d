"""While the leader's own fsync runs (in its worker thread), a commit its followers reach
goes out at once (kvstore.runtime.persist, RaftNode.early_messages): a write forwarded
by a follower is answered before the leader's disk is done, and the leader itself
applies the entry only once its own copy is durable."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from consensus import Entry, HardState
from consensus.storage import WritableStorage
from tests.kvstore.test_runtime import _LocalCluster

pytestmark = pytest.mark.timeout(60)


class _HeldDisk:
    """The leader's storage, whose synced writes of entries wait until released."""

    def __init__(self, disk: WritableStorage) -> None:
        self.disk = disk
        self.release = threading.Event()
        self.holding = threading.Event()

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        if entries:
            self.holding.set()
            self.release.wait(10)
        self.disk.save(hard_state, entries)


async def test_a_forwarded_write_is_answered_while_the_leaders_fsync_still_runs(
    tmp_path: Path,
) -> None:
    cluster = _LocalCluster(tmp_path, tick_ms=10, election_ticks=60)  # no election meanwhile
    for node_id in ("n1", "n2", "n3"):
        await cluster.start(node_id)
    try:
        leader_id = await cluster.leader()
        status, _, _ = await cluster.call(leader_id, "PUT", "/v1/kv/warm", b"up")
        assert status == 200
        leader = cluster.nodes[leader_id].runtime
        leader.persister.quick_saves = 0  # a lone entry goes to the worker (not proved quick)
        held = _HeldDisk(leader.persister.storage)
        leader.persister.storage = held  # type: ignore[assignment]
        origin = next(n for n in cluster.nodes if n != leader_id)
        try:
            async with asyncio.timeout(5):
                status, _, body = await cluster.call(origin, "PUT", "/v1/kv/k", b"v")
            assert status == 200, body
            # The answer may come before the worker thread starts the sync (busy machine).
            assert await asyncio.to_thread(held.holding.wait, 5), "the leader never synced"
            assert not held.release.is_set()
            assert leader.is_leader and cluster.nodes[origin].runtime.leader_id == leader_id
            written = cluster.nodes[origin].runtime.sm.applied_index
            assert leader.sm.applied_index < written, "applied before its own copy is durable"
        finally:
            held.release.set()
        async with asyncio.timeout(5):
            while leader.sm.applied_index < written:
                await asyncio.sleep(0.005)
        status, _, body = await cluster.call(leader_id, "GET", "/v1/kv/k")
        assert (status, body) == (200, b"v")
    finally:
        await cluster.close()
