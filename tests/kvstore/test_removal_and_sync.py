"""Two rules no other test guarded (issue 10, item 11): an installed snapshot is
written with sync, and a node whose own log says it was removed stops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from consensus import ConfChange, Entry, MemoryStorage
from consensus.membership import ConfChangeType, bootstrap_change, encode_conf_change
from consensus.types import EntryType, HardState, Membership, SnapshotMeta
from kvstore.runtime.leveldb_storage import LevelDBStorage
from kvstore.runtime.node import NodeRuntime
from kvstore.state.machine import KVStateMachine
from tests.kvstore.test_runtime import _LocalCluster

pytestmark = pytest.mark.timeout(30)


class _SpyDB:
    """Stands in for the plyvel handle and records how every write batch was opened."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.batches: list[dict[str, Any]] = []

    def write_batch(self, **kwargs: Any) -> Any:
        self.batches.append(kwargs)
        return self._db.write_batch(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_an_installed_snapshot_is_written_with_sync(tmp_path: Path) -> None:
    storage = LevelDBStorage(tmp_path / "raft")
    spy = _SpyDB(storage._db)
    storage._db = spy  # type: ignore[assignment]
    try:
        storage.apply_snapshot(SnapshotMeta(5, 2, Membership(("n1",))), KVStateMachine().snapshot())
        assert spy.batches, "apply_snapshot wrote no batch"
        assert all(kw.get("sync") is True for kw in spy.batches), spy.batches
    finally:
        storage._db = spy._db
        storage.close()
    reopened = LevelDBStorage(tmp_path / "raft")
    assert reopened.snapshot_meta() == SnapshotMeta(5, 2, Membership(("n1",)))
    reopened.close()


async def test_a_node_whose_own_log_removes_it_stops(tmp_path: Path) -> None:
    """No peer ever answers 410 here: n3 is alone, and only its log says it is out."""
    cluster = _LocalCluster(tmp_path)
    disk = MemoryStorage()
    founders = ("n1", "n2", "n3")
    disk.save(
        HardState(2, "n1", 3),
        [
            Entry(1, 1, encode_conf_change(bootstrap_change(founders)), EntryType.CONF_CHANGE),
            Entry(2, 2, b"", EntryType.NOOP),
            Entry(
                2,
                3,
                encode_conf_change(ConfChange(ConfChangeType.REMOVE, "n3")),
                EntryType.CONF_CHANGE,
            ),
        ],
    )
    told: list[str] = []
    runtime = NodeRuntime(cluster.config, "n3", disk, on_removed=told.append)
    await runtime.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not told and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert told == ["the log says so"], told
        assert runtime.membership.removed_reason == "the log says so"
    finally:
        await runtime.stop()
        await cluster.http.close()
