"""A snapshot's keys read a slice at a time while writes continue (issue 17, Scale) give
the same bytes as a stop-the-world snapshot at the same index; and the trigger that
ties snapshots to the log's bytes.

The capture reads the keys as they are now, slice by slice, and undoes with the history
every change applied after the snapshot's index; the history is pinned so that
trimming it meanwhile cannot shift the events it reads (the test shrinks the history's
shrink threshold to make that happen within a few writes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.types import Entry, Membership, SnapshotMeta
from kvstore.runtime import compaction as compaction_module
from kvstore.runtime.compaction import Compactor
from kvstore.runtime.leveldb_storage import LevelDBStorage
from kvstore.runtime.snapshots import LOG_TO_SNAPSHOT_RATIO, snapshot_due
from kvstore.runtime.stats import RuntimeStats
from kvstore.state import history as history_module
from kvstore.state import snapshot as snapshot_module
from kvstore.state.commands import Delete, Put, Txn, TxnDeleteRange, TxnPut, encode_command
from kvstore.state.keyrange import KeyRange
from kvstore.state.machine import KVStateMachine
from kvstore.state.snapshot_capture import CaptureAborted

KEYS = [f"k{i:02d}" for i in range(24)]

put = st.builds(lambda k, v: Put(k, v), st.sampled_from(KEYS), st.binary(min_size=0, max_size=4))
delete = st.builds(Delete, st.sampled_from(KEYS))
delete_range = st.builds(
    lambda a, b: Txn((), (TxnDeleteRange(KeyRange(min(a, b), max(a, b))),)),
    st.sampled_from(KEYS),
    st.sampled_from(KEYS),
)
txn_put = st.builds(
    lambda a, b: Txn((), tuple(TxnPut(k, b"t") for k in sorted({a, b}))),
    st.sampled_from(KEYS),
    st.sampled_from(KEYS),
)
command = st.one_of(put, put, delete, delete_range, txn_put)


class _Machine:
    def __init__(self) -> None:
        self.sm = KVStateMachine(history_revisions=3)
        self.index = 0

    def apply(self, cmd: object) -> None:
        self.index += 1
        self.sm.apply(Entry(1, self.index, encode_command(cmd)))  # type: ignore[arg-type]


def _incremental(machine: _Machine, slice_keys: int, during: list[list[object]]) -> bytes:
    """The machine's snapshot taken a slice at a time, applying `during[i]` before
    slice i (and the rest before finishing)."""
    view, capture = machine.sm.begin_snapshot(slice_keys)
    pending = list(during)
    while True:
        for cmd in pending.pop(0) if pending else []:
            machine.apply(cmd)
        if capture.step():
            break
    for batch in pending:
        for cmd in batch:
            machine.apply(cmd)
    read, corrections = capture.finish()
    return view.with_keys(read, corrections).serialize()


@settings(max_examples=200, deadline=None)
@given(
    before=st.lists(command, max_size=60),
    during=st.lists(st.lists(command, max_size=8), max_size=12),
    slice_keys=st.integers(1, 7),
    chunk_keys=st.integers(1, 5),
)
def test_a_capture_in_slices_equals_a_snapshot_at_the_same_index(
    before: list[object], during: list[list[object]], slice_keys: int, chunk_keys: int
) -> None:
    """Also with the serializer's chunks a few keys long, so that corrections fall
    across chunk boundaries: the bytes must not depend on where they fell."""
    shrink, chunk = history_module._SHRINK_AT, snapshot_module.CHUNK_KEYS
    history_module._SHRINK_AT = 2  # trimming shifts the list after a few writes
    snapshot_module.CHUNK_KEYS = chunk_keys
    try:
        machine = _Machine()
        for cmd in before:
            machine.apply(cmd)
        expected = machine.sm.snapshot()
        assert _incremental(machine, slice_keys, during) == expected
    finally:
        history_module._SHRINK_AT, snapshot_module.CHUNK_KEYS = shrink, chunk


def test_the_history_trims_again_once_the_capture_is_done() -> None:
    machine = _Machine()
    for i in range(10):
        machine.apply(Put(f"k{i}", b"v"))
    history = machine.sm.history
    _, capture = machine.sm.begin_snapshot()
    for i in range(3000):
        machine.apply(Put("k0", b"%d" % i))
    held = len(history._events)
    assert held > 3000  # pinned: trimmed only logically
    assert len(history) <= 3  # and readers see the window as on every replica
    while not capture.step():
        pass
    capture.finish()
    machine.apply(Put("k0", b"last"))
    assert len(history._events) < held


def test_a_capture_is_abandoned_when_the_state_is_replaced() -> None:
    machine = _Machine()
    for i in range(20):
        machine.apply(Put(f"k{i}", b"v"))
    _, capture = machine.sm.begin_snapshot()
    other = KVStateMachine()
    other.apply(Entry(1, 1, encode_command(Put("x", b"y"))))
    machine.sm.restore(other.snapshot())
    with pytest.raises(CaptureAborted):
        capture.step()


def test_snapshots_follow_the_log_bytes_not_only_the_entry_count() -> None:
    every, snapshot, alone = 10_000, 300_000_000, ("n1",)
    # The entry-count floor still applies, however small the last snapshot.
    assert not snapshot_due(every - 1, 0, every, 10**12, 0, "n1", alone)
    assert snapshot_due(every, 0, every, 0, 0, "n1", alone)
    # Past the floor, a large state waits for a log proportional to it...
    log_needed = int(LOG_TO_SNAPSHOT_RATIO * snapshot)
    assert not snapshot_due(10 * every, 0, every, log_needed - 1, snapshot, "n1", alone)
    assert snapshot_due(10 * every, 0, every, log_needed, snapshot, "n1", alone)


def test_the_snapshot_bytes_written_per_log_byte_do_not_grow_with_the_state() -> None:
    """Simulate a fill of 256-byte writes: the snapshots taken cost, in total, a bounded
    multiple of the log written, whether the state ends at 100k or 1M keys."""
    entry_bytes, every = 300, 10_000

    def snapshot_bytes_per_log_byte(keys: int) -> float:
        last_bytes = last_index = log = total = 0
        for written in range(1, keys + 1):
            log += entry_bytes
            if snapshot_due(written, last_index, every, log, last_bytes, "n2", ("n1", "n2")):
                last_bytes, last_index, log = written * entry_bytes, written, 0
                total += last_bytes
        return total / (keys * entry_bytes)

    small, large = snapshot_bytes_per_log_byte(100_000), snapshot_bytes_per_log_byte(1_000_000)
    # Geometric growth: the snapshots sum to a bounded multiple of the final state
    # (at 1M: 2.3x alone, 2.6-3.3x on the grid of two or three members, which may
    # snapshot up to twice as often while the state grows); a fixed count of entries
    # would make it ~keys/(2 * every) times (50 at 1M).
    assert small <= 4 and large <= 4, (small, large)


async def test_the_compactor_stores_the_state_at_its_index_while_applies_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime's path end to end: slices on the loop between applies, the file
    written in a thread (handing the GIL over between chunks), the commit, the memory
    trimmed; the stored bytes are the stop-the-world ones."""
    calls: list[str] = []
    monkeypatch.setattr(compaction_module, "yield_gil", lambda: calls.append("yield"))
    monkeypatch.setattr(compaction_module, "release_free_memory", lambda: calls.append("trim"))
    monkeypatch.setattr(snapshot_module, "CHUNK_KEYS", 300)
    sm = KVStateMachine()
    storage = LevelDBStorage(tmp_path / "raft")

    def apply(cmd: object) -> None:
        entry = Entry(1, sm.applied_index + 1, encode_command(cmd))  # type: ignore[arg-type]
        storage.save(None, [entry])
        sm.apply(entry)

    for i in range(3000):
        apply(Put(f"k{i % 2000:05d}", b"v%d" % i))
    expected, meta = sm.snapshot(), SnapshotMeta(sm.applied_index, 1, Membership(("n1",)))
    ready = asyncio.Event()
    compactor = Compactor(sm, storage, ready.set, "n1", RuntimeStats(), slice_keys=50)
    prepare, commit = storage.prepare_snapshot, storage.commit_snapshot

    def preparing(meta, fill):  # type: ignore[no-untyped-def]
        calls.append(f"prepare, disk busy: {compactor.disk.busy}")
        return prepare(meta, fill)

    def committing(meta, file):  # type: ignore[no-untyped-def]
        forget = commit(meta, file)
        return lambda: (calls.append(f"forget, disk busy: {compactor.disk.busy}"), forget())

    storage.prepare_snapshot = preparing  # type: ignore[method-assign]
    storage.commit_snapshot = committing  # type: ignore[method-assign]
    try:
        compactor.start(meta)
        i = 0
        while not ready.is_set():
            apply(Delete(f"k{i % 2000:05d}") if i % 3 else Put(f"new{i}", b"x"))
            i += 1
            await asyncio.sleep(0)
        assert i > 40  # the capture really was interleaved with applies
        compactor.store_if_ready()
        assert storage.snapshot_meta() == meta
        assert storage.snapshot_data() == expected
        assert compactor.last is not None and compactor.last["bytes"] == len(expected)
    finally:
        compactor.close()
        storage.close()
    # 2,000 keys in chunks of 300; the Persister is told of the disk work (no save on
    # the loop meanwhile: kvstore.runtime.persist)
    busy = ["prepare, disk busy: True", "forget, disk busy: True"]
    assert calls == busy[:1] + ["yield"] * 7 + busy[1:] + ["trim"]
    assert not compactor.disk.busy


async def test_free_memory_goes_back_every_so_many_bytes_of_log_between_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots come far apart at a million keys: between them the compactor gives the
    freed memory back every TRIM_EVERY_BYTES of log applied, never during a snapshot."""
    trims: list[int] = []
    stats = RuntimeStats()
    monkeypatch.setattr(
        compaction_module, "release_free_memory", lambda: trims.append(stats.applied_bytes)
    )
    sm = KVStateMachine()
    storage = LevelDBStorage(tmp_path / "raft")
    compactor = Compactor(sm, storage, lambda: None, "n1", stats)
    every = compaction_module.TRIM_EVERY_BYTES
    try:
        stats.applied_bytes = every - 1
        compactor.trim_if_due()
        stats.applied_bytes = every
        compactor.trim_if_due()
        compactor.trim_if_due()  # once per interval
        stats.applied_bytes = 2 * every
        compactor.start(SnapshotMeta(0, 0, Membership(("n1",))))
        compactor.trim_if_due()  # a snapshot is being taken: it trims when done
        assert compactor.running
    finally:
        compactor.close()  # waits for the compaction thread
        storage.close()
    assert trims == [every]
