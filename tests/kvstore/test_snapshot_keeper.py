"""SnapshotKeeper: a second snapshot delivery before the install never knocks the node
out (issue 10, item 2).

A lagging follower holds snapshot S1 (stepped, so the core's next Ready installs it)
when another delivery arrives: an older snapshot from a newer leader, or a stale-term
one from a deposed leader. The core keeps S1 pending; the keeper must still have S1's
data when the Ready asks for it, or the install fails and the node exits.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time

import pytest

from consensus import Config, Entry, MemoryStorage, RaftNode
from consensus.messages import InstallSnapshot
from consensus.types import HardState, Membership, SnapshotMeta
from kvstore.runtime import snapshots as snapshots_module
from kvstore.runtime.compaction import Compactor
from kvstore.runtime.leveldb_storage import LevelDBStorage
from kvstore.runtime.requests import PendingRequests
from kvstore.runtime.snapshots import SnapshotKeeper
from kvstore.runtime.stats import RuntimeStats
from kvstore.state.commands import Put, encode_command
from kvstore.state.machine import KVStateMachine
from kvstore.state.snapshot import ParsedState

VOTERS = ("n1", "n2", "n3")


def _snapshot(index: int, term: int) -> tuple[SnapshotMeta, bytes, ParsedState]:
    """A leader's state after `index` puts, as the transfer would hand it over."""
    sm = KVStateMachine()
    for i in range(1, index + 1):
        sm.apply(Entry(term, i, encode_command(Put(f"k{i}", b"v%d" % i))))
    data = sm.snapshot()
    return SnapshotMeta(index, term, Membership(VOTERS)), data, KVStateMachine.parse(data)


class _Follower:
    def __init__(self) -> None:
        self.storage = MemoryStorage()
        self.node = RaftNode(Config("n2", ()), self.storage, random.Random(1))
        self.sm = KVStateMachine()
        self.keeper = SnapshotKeeper(
            self.node,
            self.sm,
            self.storage,
            PendingRequests(),
            Compactor(self.sm, self.storage, lambda: None, "n2", RuntimeStats()),
            10_000,
            step=lambda msgs: [self.node.step(m) for m in msgs],
            running=lambda: True,
            installed=lambda meta: None,
        )

    def deliver(self, term: int, sender: str, snap: tuple[SnapshotMeta, bytes, ParsedState]):  # type: ignore[no-untyped-def]
        meta, data, parsed = snap
        self.keeper.receive(InstallSnapshot(term, sender, "n2", meta), data, parsed)

    async def run_ready(self) -> SnapshotMeta | None:
        """What the runtime's ready loop does with the snapshot part of a Ready."""
        rd = self.node.ready()
        if rd.snapshot is not None:
            await self.keeper.install(rd.snapshot)
        self.node.advance(rd)
        return rd.snapshot


@pytest.mark.parametrize(
    ("term", "sender", "index", "snap_term"),
    [(4, "n3", 5, 2), (2, "n3", 5, 2), (3, "n1", 10, 3)],
    ids=["older-from-newer-leader", "stale-term", "duplicate"],
)
async def test_a_second_delivery_before_the_install_keeps_the_first(
    term: int, sender: str, index: int, snap_term: int
) -> None:
    follower = _Follower()
    first = _snapshot(10, 3)
    follower.deliver(3, "n1", first)
    follower.deliver(term, sender, _snapshot(index, snap_term))
    installed = await follower.run_ready()  # before the fix: RuntimeError, the node exits
    assert installed == first[0]
    assert follower.sm.applied_index == 10 and follower.sm.get("k10") is not None
    assert follower.storage.snapshot_meta() == first[0]


async def test_a_newer_snapshot_replaces_the_pending_one() -> None:
    follower = _Follower()
    follower.deliver(3, "n1", _snapshot(10, 3))
    newer = _snapshot(20, 4)
    follower.deliver(4, "n3", newer)
    assert await follower.run_ready() == newer[0]
    assert follower.sm.applied_index == 20
    assert follower.keeper.holding() == (), "a snapshot nobody will install is still held"


async def test_held_snapshots_are_released_once_installed() -> None:
    follower = _Follower()
    follower.deliver(3, "n1", _snapshot(10, 3))
    follower.deliver(2, "n3", _snapshot(5, 2))
    assert follower.keeper.holding() == (SnapshotMeta(10, 3, Membership(VOTERS)),)
    await follower.run_ready()
    assert follower.keeper.holding() == ()


async def test_an_installed_state_is_not_walked_by_the_garbage_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The installed key list (a million entries at scale) is frozen, so no collection
    on the loop walks it; and the replaced state's memory is given back."""
    trims: list[None] = []
    monkeypatch.setattr(snapshots_module, "release_free_memory", lambda: trims.append(None))
    follower = _Follower()
    follower.deliver(3, "n1", _snapshot(10, 3))
    try:
        await follower.run_ready()
        keys = follower.sm._space.keys
        assert keys and all(o is not keys for o in gc.get_objects())
        deadline = time.monotonic() + 5
        while not trims and time.monotonic() < deadline:  # it runs in the default executor
            await asyncio.sleep(0.001)
        assert trims == [None]
    finally:
        gc.unfreeze()


async def test_a_leaders_snapshot_is_written_to_disk_off_the_event_loop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The file of an installed snapshot (hundreds of MB at a million keys) is written
    and synced in a worker thread; on the loop it stalled a follower for 1.7 s."""
    follower = _Follower()
    storage = LevelDBStorage(tmp_path / "raft")
    follower.storage = storage
    follower.node = RaftNode(Config("n2", ()), storage, random.Random(1))
    keeper = SnapshotKeeper(
        follower.node,
        follower.sm,
        storage,
        PendingRequests(),
        Compactor(follower.sm, storage, lambda: None, "n2", RuntimeStats()),
        10_000,
        step=lambda msgs: [follower.node.step(m) for m in msgs],
        running=lambda: True,
        installed=lambda meta: None,
    )
    follower.keeper = keeper
    writers: list[str] = []
    busy: list[bool] = []  # whether the Persister was told, in each piece of disk work
    prepare, commit = storage.prepare_snapshot, storage.commit_snapshot

    def recording(meta, fill):  # type: ignore[no-untyped-def]
        writers.append(threading.current_thread().name)
        busy.append(keeper.compactor.disk.busy)
        return prepare(meta, fill)

    def committing(meta, file, sync=False):  # type: ignore[no-untyped-def]
        forget = commit(meta, file, sync=sync)

        def forgetting() -> None:
            busy.append(keeper.compactor.disk.busy)
            forget()

        return forgetting

    storage.prepare_snapshot = recording  # type: ignore[method-assign]
    storage.commit_snapshot = committing  # type: ignore[method-assign]
    meta, data, parsed = _snapshot(10, 3)
    follower.deliver(3, "n1", (meta, data, parsed))
    try:
        assert await follower.run_ready() == meta
        assert writers and writers[0] != threading.main_thread().name
        deadline = time.monotonic() + 5
        while len(busy) < 2 and time.monotonic() < deadline:  # forgetting: an executor's
            await asyncio.sleep(0.001)
        assert busy == [True, True], "no save on the loop while a snapshot is installed"
        assert storage.snapshot_meta() == meta and storage.snapshot_data() == data
        assert follower.sm.get("k10") is not None
    finally:
        # The install deletes the covered entries in the default executor: closing the
        # database under it crashes the process (seen once the install also trims).
        await asyncio.get_running_loop().shutdown_default_executor()
        storage.close()
    assert not keeper.compactor.disk.busy  # the work over, the window closed


async def test_a_restarted_node_begins_no_snapshot_until_it_has_replayed_its_log() -> None:
    """The log committed before a restart is applied again first (every node replays at
    once on shared cores, and the first read waits for it): a snapshot due during the
    replay (here every 10 entries) begins at its end, at index 30."""
    storage = MemoryStorage()
    entries = [Entry(1, i, encode_command(Put(f"k{i}", b"v"))) for i in range(1, 31)]
    storage.save(HardState(term=1, vote="n1", commit=30), entries)
    node = RaftNode(Config("n1", ("n1",), max_batch_bytes=1), storage, random.Random(1))
    sm = KVStateMachine()
    compactor = Compactor(sm, storage, lambda: None, "n1", RuntimeStats())
    keeper = SnapshotKeeper(
        node,
        sm,
        storage,
        PendingRequests(),
        compactor,
        10,
        step=lambda msgs: None,
        running=lambda: True,
        installed=lambda meta: None,
    )
    started: list[int] = []
    try:
        while sm.applied_index < 30:
            rd = node.ready()
            for entry in rd.committed:
                sm.apply(entry)
            node.advance(rd)
            keeper.between_readies()
            if compactor.running and not started:
                started.append(sm.applied_index)
        assert started == [30]
    finally:
        compactor.close()


async def test_an_installed_snapshot_counts_as_the_last_one_for_the_next() -> None:
    """A node that received the whole state (new, or far behind) takes its next snapshot
    by the same bound as after one of its own, not `snapshot_every` entries later."""
    follower = _Follower()
    meta, data, parsed = _snapshot(10, 3)
    follower.deliver(3, "n1", (meta, data, parsed))
    await follower.run_ready()
    compactor = follower.keeper.compactor
    assert (compactor.last_bytes, compactor.log_bytes_since()) == (len(data), 0)
