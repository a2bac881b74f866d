"""Snapshots stored as files beside the LevelDB log (issue 17, Scale): written by one
thread, committed by a small batch, the covered entries deleted later; a crash between
any two of those steps leaves a log that opens and means the same thing."""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import plyvel
import pytest

from consensus.errors import CompactedError
from consensus.types import Entry, HardState, Membership, SnapshotMeta
from kvstore.runtime import leveldb_storage
from kvstore.runtime.leveldb_storage import CorruptLogError, LevelDBStorage

MEMBERS = Membership(("a", "b", "c"))


def _log(path: Path, count: int) -> LevelDBStorage:
    storage = LevelDBStorage(path)
    storage.save(HardState(2, "a", count), [Entry(2, i, b"e%d" % i) for i in range(1, count + 1)])
    return storage


def _stored_entry_indexes(path: Path) -> list[int]:
    db = plyvel.DB(str(path))
    try:
        return [int.from_bytes(k[1:], "big") for k in db.iterator(prefix=b"e", include_value=False)]
    finally:
        db.close()


def test_a_snapshot_written_in_another_thread_then_committed(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    storage = _log(path, 20)
    meta = SnapshotMeta(12, 2, MEMBERS)
    files = []
    writer = threading.Thread(
        target=lambda: files.append(storage.prepare_snapshot(meta, lambda out: out.write(b"s12")))
    )
    writer.start()
    writer.join()
    assert storage.snapshot_meta() is None  # written, not yet the snapshot
    forget = storage.commit_snapshot(meta, files[0])
    assert (storage.first_index(), storage.last_index()) == (13, 20)
    with pytest.raises(CompactedError):
        storage.entries(12, 14)
    assert _stored_entry_indexes_open(storage) == list(range(1, 21))  # deleted later
    forget()
    assert _stored_entry_indexes_open(storage) == list(range(13, 21))
    storage.close()
    reopened = LevelDBStorage(path)
    try:
        assert reopened.snapshot_meta() == meta
        assert reopened.snapshot_data() == b"s12"
        assert reopened.entries(13, 21) == [Entry(2, i, b"e%d" % i) for i in range(13, 21)]
    finally:
        reopened.close()


def _stored_entry_indexes_open(storage: LevelDBStorage) -> list[int]:
    db = storage._db
    return [int.from_bytes(k[1:], "big") for k in db.iterator(prefix=b"e", include_value=False)]


def test_a_crash_before_the_covered_entries_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    storage = _log(path, 20)
    first = SnapshotMeta(5, 2, MEMBERS)
    storage.commit_snapshot(first, storage.prepare_snapshot(first, lambda o: o.write(b"s5")))()
    second = SnapshotMeta(12, 2, MEMBERS)
    storage.commit_snapshot(second, storage.prepare_snapshot(second, lambda o: o.write(b"s12")))
    (path / "snapshots" / "snapshot-15-2.bin.tmp").write_bytes(b"half a snapshot")
    storage.close()  # "crash": the old entries, the old file and a partial file remain
    reopened = LevelDBStorage(path)
    try:
        assert (reopened.first_index(), reopened.last_index()) == (13, 20)
        assert reopened.snapshot_data() == b"s12"
        assert sorted(p.name for p in (path / "snapshots").iterdir()) == ["snapshot-12-2.bin"]
    finally:
        reopened.close()
    assert _stored_entry_indexes(path) == list(range(13, 21))


def test_a_damaged_snapshot_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    storage = _log(path, 5)
    meta = SnapshotMeta(3, 2, MEMBERS)
    storage.apply_snapshot(meta, b"state at three")
    storage.close()
    (path / "snapshots" / "snapshot-3-2.bin").write_bytes(b"state at thr33")
    reopened = LevelDBStorage(path)
    try:
        with pytest.raises(CorruptLogError, match="checksum mismatch"):
            reopened.snapshot_data()
    finally:
        reopened.close()


def test_a_snapshot_stored_by_an_older_version_is_still_read(tmp_path: Path) -> None:
    """Older versions kept the bytes under b"snapdata"; the next snapshot drops it."""
    path = tmp_path / "raft"
    storage = _log(path, 10)
    storage.apply_snapshot(SnapshotMeta(4, 2, MEMBERS), b"")
    storage.close()
    db = plyvel.DB(str(path))
    old = b"old-format state"
    db.put(b"snapdata", zlib.crc32(old).to_bytes(4, "big") + old)
    db.delete(b"snapfile")
    db.close()
    reopened = LevelDBStorage(path)
    try:
        assert reopened.snapshot_data() == old
        meta = SnapshotMeta(8, 2, MEMBERS)
        reopened.commit_snapshot(meta, reopened.prepare_snapshot(meta, lambda o: o.write(b"new")))
        assert reopened.snapshot_data() == b"new"
        assert reopened._db.get(b"snapdata") is None
    finally:
        reopened.close()


def test_close_waits_for_a_running_deletion_and_a_later_one_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the database under a worker thread's deletion crashed the process."""
    path = tmp_path / "raft"
    storage = _log(path, 20)
    meta = SnapshotMeta(12, 2, MEMBERS)
    forget = storage.commit_snapshot(meta, storage.prepare_snapshot(meta, lambda o: o.write(b"s")))
    deleting, release = threading.Event(), threading.Event()
    delete = storage._delete_entries

    def held_delete(lo: int, hi: int, sync: bool = False) -> None:
        deleting.set()
        assert release.wait(10)
        delete(lo, hi, sync)

    monkeypatch.setattr(storage, "_delete_entries", held_delete)
    worker = threading.Thread(target=forget)
    worker.start()
    assert deleting.wait(10)
    closer = threading.Thread(target=storage.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive(), "the database was closed under a running deletion"
    release.set()
    worker.join(10)
    closer.join(10)
    assert storage._db.closed
    assert _stored_entry_indexes(path) == list(range(13, 21))
    forget()  # a deletion that starts after the close does nothing, and does not crash


def test_the_covered_entries_are_deleted_in_short_batches_handing_over_the_gil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a million keys a snapshot covers ~100,000 entries; deleting them in one Python
    loop in a worker thread held the GIL for long stretches (stalls of up to 331 ms with
    the loop's own CPU at 3 ms), and the loop's own log writes queued behind the batch."""
    path = tmp_path / "raft"
    storage = _log(path, 2_600)
    meta = SnapshotMeta(2_500, 2, MEMBERS)
    forget = storage.commit_snapshot(meta, storage.prepare_snapshot(meta, lambda o: o.write(b"s")))
    yields: list[int] = []
    monkeypatch.setattr(
        leveldb_storage, "yield_gil", lambda: yields.append(len(_undeleted(storage)))
    )
    forget()
    assert yields == [1_500, 500]
    storage.close()
    assert _stored_entry_indexes(path) == list(range(2_501, 2_601))


def _undeleted(storage: LevelDBStorage) -> list[bytes]:
    """Entries still stored below the snapshot (read while the deletion pauses)."""
    stop = b"e" + storage.first_index().to_bytes(8, "big")
    return list(storage._db.iterator(start=b"e", stop=stop, include_value=False))
