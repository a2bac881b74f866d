"""LevelDBStorage: durable across restarts and SIGKILL, loud about damage, and
indistinguishable from MemoryStorage through the Storage interface."""

from __future__ import annotations

import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plyvel
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from consensus.errors import CompactedError, ConsensusError, UnavailableError
from consensus.storage import MemoryStorage
from consensus.types import Entry, EntryType, HardState, Membership, SnapshotMeta
from kvstore.runtime.leveldb_storage import CorruptLogError, LevelDBStorage

REPO_ROOT = Path(__file__).resolve().parents[2]


def entry_key(index: int) -> bytes:
    return b"e" + index.to_bytes(8, "big")


def make_entries(first: int, count: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, f"value-{i}".encode()) for i in range(first, first + count)]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "raft-log"


@pytest.fixture
def storage(db_path: Path) -> Iterator[LevelDBStorage]:
    opened = LevelDBStorage(db_path)
    yield opened
    opened.close()


def write_log(path: Path, count: int) -> list[Entry]:
    log = make_entries(1, count)
    storage = LevelDBStorage(path)
    storage.save(HardState(3, "n2", count), log)
    storage.close()
    return log


def tamper(path: Path, change: Any) -> None:
    """Edit the closed database behind the storage's back."""
    db = plyvel.DB(str(path))
    try:
        change(db)
    finally:
        db.close()


# --------------------------------------------------------------------------- basics


def test_empty_log(storage: LevelDBStorage) -> None:
    assert storage.initial_state() == HardState()
    assert (storage.first_index(), storage.last_index(), storage.term(0)) == (1, 0, 0)
    assert storage.entries(1, 1) == []
    with pytest.raises(UnavailableError):
        storage.term(1)
    with pytest.raises(CompactedError):
        storage.entries(0, 1)


def test_entries_and_hard_state_survive_reopen(db_path: Path) -> None:
    log = [*make_entries(1, 5, term=1), Entry(2, 6, b"", EntryType.NOOP), *make_entries(7, 3, 2)]
    first = LevelDBStorage(db_path)
    first.save(HardState(2, "n3", 4), log[:4])
    first.save(None, log[4:])
    first.close()

    reopened = LevelDBStorage(db_path)
    try:
        assert reopened.initial_state() == HardState(2, "n3", 4)
        assert reopened.last_index() == 9
        assert reopened.entries(1, 10) == log
        assert [reopened.term(i) for i in range(10)] == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2]
    finally:
        reopened.close()


def test_hard_state_alone_is_saved(db_path: Path) -> None:
    storage = LevelDBStorage(db_path)
    storage.save(HardState(7, None, 0), [])
    storage.close()
    reopened = LevelDBStorage(db_path)
    assert reopened.initial_state() == HardState(7, None, 0)
    reopened.close()


def test_conflicting_suffix_is_truncated(db_path: Path) -> None:
    storage = LevelDBStorage(db_path)
    storage.save(HardState(1, "n1", 0), make_entries(1, 10, term=1))
    replacement = make_entries(5, 2, term=2)
    storage.save(HardState(2, "n2", 0), replacement)
    assert storage.last_index() == 6
    assert storage.entries(1, 7) == make_entries(1, 4, term=1) + replacement
    with pytest.raises(UnavailableError):
        storage.term(7)
    storage.close()

    reopened = LevelDBStorage(db_path)
    assert reopened.last_index() == 6
    assert reopened.entries(5, 7) == replacement
    reopened.close()
    stored = []
    tamper(db_path, lambda db: stored.extend(k for k, _ in db.iterator(prefix=b"e")))
    assert stored == [entry_key(i) for i in range(1, 7)]


@pytest.mark.parametrize(
    "bad_batch",
    [make_entries(3, 2), make_entries(0, 1), [Entry(1, 2), Entry(1, 4)]],
    ids=["gap after the log", "index 0", "gap inside the batch"],
)
def test_a_batch_that_leaves_a_hole_is_refused_and_changes_nothing(
    db_path: Path, bad_batch: list[Entry]
) -> None:
    storage = LevelDBStorage(db_path)
    storage.save(HardState(1, None, 0), make_entries(1, 1))
    with pytest.raises(ValueError):
        storage.save(HardState(9, "x", 9), bad_batch)
    assert (storage.last_index(), storage.initial_state()) == (1, HardState(1, None, 0))
    storage.close()
    reopened = LevelDBStorage(db_path)
    assert (reopened.last_index(), reopened.initial_state()) == (1, HardState(1, None, 0))
    reopened.close()


def test_old_entries_are_read_from_disk_within_the_byte_budget(db_path: Path) -> None:
    storage = LevelDBStorage(db_path, cache_entries=2)
    log = make_entries(1, 20)
    storage.save(None, log)
    assert storage.entries(1, 21) == log
    one = log[0].size()
    assert storage.entries(3, 21, max_bytes=3 * one) == log[2:5]
    assert storage.entries(3, 21, max_bytes=0) == log[2:3]  # always at least one entry
    assert storage.entries(19, 21, max_bytes=one) == log[18:19]  # from the tail cache
    storage.close()


class _SpyDB:
    """Stands in for the plyvel DB to record how the write path touches it."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.batches: list[dict[str, Any]] = []
        self.direct_writes = 0

    def write_batch(self, **kwargs: Any) -> Any:
        self.batches.append(kwargs)
        return self._db.write_batch(**kwargs)

    def put(self, *args: Any, **kwargs: Any) -> None:
        self.direct_writes += 1
        self._db.put(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> None:
        self.direct_writes += 1
        self._db.delete(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_each_save_is_exactly_one_synced_batch(storage: LevelDBStorage) -> None:
    spy = _SpyDB(storage._db)
    storage._db = spy  # type: ignore[assignment]
    storage.save(HardState(1, "a", 0), make_entries(1, 8))
    storage.save(HardState(2, "b", 3), make_entries(4, 2, term=2))  # truncates 6..8
    storage.save(HardState(2, "b", 5), [])
    storage.save(None, make_entries(6, 1, term=2))
    storage.save(None, [])  # nothing to make durable: no write at all
    assert spy.batches == [{"sync": True}] * 4
    assert spy.direct_writes == 0
    storage._db = spy._db


# --------------------------------------------------------------------------- damage


@pytest.mark.parametrize("position", [0, 3, 4, 5, -1], ids=lambda p: f"byte {p}")
def test_a_corrupted_byte_in_the_last_record_is_detected_at_open(
    db_path: Path, position: int
) -> None:
    write_log(db_path, 5)

    def flip(db: Any) -> None:
        value = bytearray(db.get(entry_key(5)))
        value[position] ^= 0x20
        db.put(entry_key(5), bytes(value))

    tamper(db_path, flip)
    with pytest.raises(CorruptLogError, match="checksum mismatch") as caught:
        LevelDBStorage(db_path)
    assert str(db_path) in str(caught.value)
    assert "entry 5" in str(caught.value)
    assert (caught.value.path, caught.value.index) == (str(db_path), 5)
    assert isinstance(caught.value, ConsensusError)


def test_every_torn_version_of_the_last_record_is_detected_at_open(db_path: Path) -> None:
    write_log(db_path, 3)
    record: list[bytes] = []
    tamper(db_path, lambda db: record.append(db.get(entry_key(3))))
    for length in range(len(record[0])):
        tamper(db_path, lambda db, n=length: db.put(entry_key(3), record[0][:n]))
        with pytest.raises(CorruptLogError, match="entry 3") as caught:
            LevelDBStorage(db_path)
        assert str(db_path) in str(caught.value)


def test_a_hole_in_the_log_is_detected_at_open(db_path: Path) -> None:
    write_log(db_path, 6)
    tamper(db_path, lambda db: db.delete(entry_key(4)))
    with pytest.raises(CorruptLogError, match=r"entry 4: missing \(the next stored entry is 5\)"):
        LevelDBStorage(db_path)


def test_a_log_not_starting_at_one_is_detected_at_open(db_path: Path) -> None:
    write_log(db_path, 3)
    tamper(db_path, lambda db: db.delete(entry_key(1)))
    with pytest.raises(CorruptLogError, match="entry 1: missing"):
        LevelDBStorage(db_path)


def test_a_record_under_the_wrong_key_is_detected_at_open(db_path: Path) -> None:
    write_log(db_path, 3)
    tamper(db_path, lambda db: db.put(entry_key(3), db.get(entry_key(2))))
    with pytest.raises(CorruptLogError, match="entry 3: record holds entry 2"):
        LevelDBStorage(db_path)


def test_a_malformed_entry_key_is_detected_at_open(db_path: Path) -> None:
    write_log(db_path, 1)
    tamper(db_path, lambda db: db.put(b"e\x01", b"x"))
    with pytest.raises(CorruptLogError, match="malformed entry key"):
        LevelDBStorage(db_path)


def test_a_corrupted_hard_state_is_detected_at_open(db_path: Path) -> None:
    write_log(db_path, 1)
    tamper(db_path, lambda db: db.put(b"hardstate", b"\x00\x00\x00\x00\x93"))
    with pytest.raises(CorruptLogError, match="hard state: checksum mismatch") as caught:
        LevelDBStorage(db_path)
    assert str(db_path) in str(caught.value)


def test_a_record_damaged_after_open_is_reported_when_read(db_path: Path) -> None:
    storage = LevelDBStorage(db_path, cache_entries=0)
    storage.save(None, make_entries(1, 3))
    storage._db.put(entry_key(2), b"\x00\x00\x00\x00garbage")
    with pytest.raises(CorruptLogError, match="entry 2: checksum mismatch"):
        storage.entries(1, 4)
    storage.close()


def test_a_failed_open_releases_the_database(db_path: Path) -> None:
    write_log(db_path, 2)
    tamper(db_path, lambda db: db.delete(entry_key(1)))
    for _ in range(2):  # a leaked handle would hold LevelDB's lock: the retry would fail
        with pytest.raises(CorruptLogError):
            LevelDBStorage(db_path)


# --------------------------------------------------------------------------- crashes

_CRASH_CHILD = """
import random, sys
from kvstore.runtime.leveldb_storage import LevelDBStorage
from consensus.types import Entry, HardState

storage = LevelDBStorage(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
print(storage.last_index(), flush=True)
while True:
    first = storage.last_index() + 1
    end = first + rng.randint(1, 16)  # one past the batch's last index
    batch = [
        Entry(1, i, b"%d/%d/" % (i, end - 1) + bytes(rng.randint(0, 300)))
        for i in range(first, end)
    ]
    storage.save(HardState(1, "n1", end - 1), batch)
    print(end - 1, flush=True)
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _run_until_killed(path: Path, seed: int, extra: int, deadline_s: float = 60.0) -> int:
    """Run the appending child until it reports `extra` more synced entries than it
    started with, then SIGKILL it mid-loop. Returns the last index it reported."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(path), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    reports: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            reports.put(line)
        reports.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + deadline_s
    start = reported = None
    try:
        while start is None or reported < start + extra:
            line = reports.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                child.wait(timeout=10)
                assert child.stderr is not None
                pytest.fail(f"crash child exited early:\n{child.stderr.read()}")
            reported = int(line)
            start = reported if start is None else start
    except queue.Empty:
        pytest.fail(f"crash child reported nothing new for {deadline_s}s (last: {reported})")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    assert reported is not None
    return reported


def _check_recovered_log(path: Path, acknowledged: int) -> int:
    storage = LevelDBStorage(path)  # verifies contiguity and every CRC
    try:
        last = storage.last_index()
        assert last >= acknowledged, "an entry reported as saved was lost"
        batch_end = 0
        for entry in storage.entries(1, last + 1):
            index, batch_end, _ = entry.data.split(b"/", 2)
            assert int(index) == entry.index
        assert int(batch_end) == last, "the last batch survived only in part"
        assert storage.initial_state() == HardState(1, "n1", last), "hard state not in the batch"
        return last
    finally:
        storage.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_while_appending_leaves_a_valid_prefix(db_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    last = 0
    for round_ in range(3):
        acknowledged = _run_until_killed(db_path, seed * 10 + round_, rng.randint(1, 400))
        assert acknowledged >= last
        last = _check_recovered_log(db_path, acknowledged)


# --------------------------------------------------------------------------- threads


def test_reads_below_a_concurrent_save_see_stable_values(db_path: Path) -> None:
    """The driver's shape: saves in a worker thread, reads of durable entries on the loop."""
    storage = LevelDBStorage(db_path, cache_entries=32)
    durable = 0
    done = threading.Event()
    failure: list[BaseException] = []

    def writer() -> None:
        nonlocal durable
        try:
            for first in range(1, 3001, 30):
                storage.save(HardState(1, None, durable), make_entries(first, 30, term=first))
                durable = first + 29
        except BaseException as exc:  # pragma: no cover - reported below
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    rng = random.Random(0)

    def check(top: int) -> None:
        index = rng.randint(1, top)
        assert storage.term(index) == (index - 1) // 30 * 30 + 1
        lo = rng.randint(max(1, top - 100), top)
        assert [e.index for e in storage.entries(lo, top + 1)] == list(range(lo, top + 1))
        assert storage.last_index() >= top

    while not done.is_set():
        if durable:
            check(durable)
    thread.join()
    assert not failure, failure
    check(durable)
    storage.close()


def test_a_tail_a_reader_holds_never_changes_under_later_saves(db_path: Path) -> None:
    """Successive tails share one list that appends extend in place: a tail published
    earlier (what a reader on the loop holds while the worker thread saves) must keep
    answering exactly its own entries through appends, trims, overwrites and compaction."""
    storage = LevelDBStorage(db_path, cache_entries=8)
    held = []
    for first in range(1, 41, 4):
        storage.save(None, make_entries(first, 4, term=1))
        held.append((storage._tail, storage._tail.entries))
    storage.save(None, make_entries(37, 2, term=2))  # an overwrite of the newest entries
    held.append((storage._tail, storage._tail.entries))
    storage.save(None, make_entries(39, 3, term=2))
    for tail, entries in held:
        assert tail.entries == entries
        assert tail.get(tail.start, tail.end) == entries
        assert [e.index for e in entries] == list(range(tail.start, tail.end))
    newest = storage._tail
    assert [(e.index, e.term) for e in newest.entries] == [(i, 1) for i in (34, 35, 36)] + [
        (i, 2) for i in range(37, 42)
    ]
    assert len(newest.items) <= 2 * 8  # the dead front is dropped, not kept forever
    storage.close()


# --------------------------------------------------------------------------- differential


class StorageParity(RuleBasedStateMachine):
    """Any sequence of saves, reads and restarts looks the same on both storages."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="leveldb-parity-")
        self.path = Path(self.directory) / "db"
        self.memory = MemoryStorage()
        self.leveldb: LevelDBStorage | None = None
        self.cache: dict[str, int] = {}

    @initialize(
        cache_entries=st.integers(min_value=0, max_value=6),
        cache_bytes=st.sampled_from([0, 100, 1 << 20]),
    )
    def open(self, cache_entries: int, cache_bytes: int) -> None:
        self.cache = {"cache_entries": cache_entries, "cache_bytes": cache_bytes}
        self.leveldb = LevelDBStorage(self.path, **self.cache)

    @property
    def disk(self) -> LevelDBStorage:
        assert self.leveldb is not None
        return self.leveldb

    @rule(data=st.data(), payload=st.binary(max_size=40))
    def save(self, data: st.DataObject, payload: bytes) -> None:
        """Any save a Raft node can make: committed entries are never cut, terms never go
        down along the log or in the hard state, the commit index never passes the log's
        end (the open checks all of that)."""
        memory = self.memory
        committed = memory.initial_state().commit
        low = max(memory.first_index(), committed + 1)
        first = data.draw(st.integers(low, max(low, memory.last_index() + 1)), label="first")
        start_term = memory.term(first - 1)
        terms = sorted(data.draw(st.lists(st.integers(start_term, 12), max_size=6), label="t"))
        batch = [Entry(t, first + i, payload[i:], EntryType(t % 2)) for i, t in enumerate(terms)]
        last = first + len(batch) - 1 if batch else memory.last_index()
        hard_state = None
        if data.draw(st.booleans(), label="with hard state"):
            old = memory.initial_state()
            hard_state = HardState(
                data.draw(st.integers(old.term, 12), label="term"),
                data.draw(st.none() | st.text(), label="vote"),
                data.draw(st.integers(old.commit, max(old.commit, last)), label="commit"),
            )
        memory.save(hard_state, batch)
        self.disk.save(hard_state, batch)

    @rule(hard_state=st.builds(HardState), skip=st.integers(2, 5))
    def save_with_a_gap(self, hard_state: HardState, skip: int) -> None:
        batch = [Entry(1, self.memory.last_index() + skip)]
        for storage in (self.memory, self.disk):
            with pytest.raises(ValueError):
                storage.save(hard_state, batch)

    @rule(data=st.data(), payload=st.binary(max_size=20))
    def snapshot(self, data: st.DataObject, payload: bytes) -> None:
        """Compaction (the snapshot's entry is in the log) or a leader's snapshot
        (it is not: the whole log goes)."""
        first, last = self.memory.first_index(), self.memory.last_index()
        committed = self.memory.initial_state().commit
        index = data.draw(st.integers(first, last + 3), label="index")
        held = index <= last
        compaction = held and (index < committed or data.draw(st.booleans()))
        term = self.memory.term(index) if compaction else 12  # a leader's: the newest term
        meta = SnapshotMeta(index, term, Membership(("a", "b"), ("c",)))
        self.memory.apply_snapshot(meta, payload)
        self.disk.apply_snapshot(meta, payload)

    @rule()
    def restart(self) -> None:
        self.disk.close()
        self.leveldb = LevelDBStorage(self.path, **self.cache)

    @rule(data=st.data(), max_bytes=st.none() | st.integers(0, 200))
    def read(self, data: st.DataObject, max_bytes: int | None) -> None:
        first, last = self.memory.first_index(), self.memory.last_index()
        lo = data.draw(st.integers(first - 2, last + 2), label="lo")
        hi = data.draw(st.integers(max(lo, 1), last + 3), label="hi")
        assert outcome(self.disk.entries, lo, hi, max_bytes) == outcome(
            self.memory.entries, lo, hi, max_bytes
        )

    @precondition(lambda self: self.leveldb is not None)
    @invariant()
    def same_view(self) -> None:
        first, last = self.memory.first_index(), self.memory.last_index()
        assert self.disk.first_index() == first
        assert self.disk.last_index() == last
        assert self.disk.initial_state() == self.memory.initial_state()
        assert self.disk.snapshot_meta() == self.memory.snapshot_meta()
        assert self.disk.snapshot_data() == self.memory.snapshot_data()
        for index in range(first - 3, last + 3):
            assert outcome(self.disk.term, index) == outcome(self.memory.term, index)
        assert self.disk.entries(first, last + 1) == self.memory.entries(first, last + 1)

    @precondition(lambda self: self.leveldb is not None)
    @invariant()
    def terms_are_kept_as_one_run_per_term(self) -> None:
        """The terms in memory grow with the elections, not with the log (term_runs)."""
        first, last = self.memory.first_index(), self.memory.last_index()
        terms = {self.memory.term(index) for index in range(first - 1, last + 1)}
        assert len(self.disk._terms.starts) == len(terms)

    @precondition(lambda self: self.leveldb is not None)
    @invariant()
    def tail_cache_is_the_newest_entries_within_its_limits(self) -> None:
        tail = self.disk._tail
        assert tail.start + len(tail.entries) == self.memory.last_index() + 1
        assert list(tail.entries) == self.memory.entries(tail.start, tail.start + len(tail.entries))
        assert tail.nbytes == sum(e.size() for e in tail.entries) <= self.cache["cache_bytes"]
        assert len(tail.entries) <= self.cache["cache_entries"]

    def teardown(self) -> None:
        if self.leveldb is not None:
            self.leveldb.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def outcome(call: Any, *args: Any) -> Any:
    """A call's result, or the type of the consensus error it raised, for comparison."""
    try:
        return call(*args)
    except ConsensusError as exc:
        return type(exc)


TestStorageParity = StorageParity.TestCase
TestStorageParity.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- snapshots


def test_compaction_survives_reopen_and_keeps_the_entries_after_it(db_path: Path) -> None:
    written = write_log(db_path, 10)
    storage = LevelDBStorage(db_path)
    meta = SnapshotMeta(6, written[5].term, Membership(("a", "b", "c")))
    storage.apply_snapshot(meta, b"state at 6")
    storage.close()
    reopened = LevelDBStorage(db_path)
    try:
        assert reopened.snapshot_meta() == meta
        assert reopened.snapshot_data() == b"state at 6"
        assert (reopened.first_index(), reopened.last_index()) == (7, 10)
        assert reopened.term(6) == meta.term
        assert reopened.entries(7, 11) == written[6:]
        with pytest.raises(CompactedError):
            reopened.entries(6, 8)
    finally:
        reopened.close()


def test_a_snapshot_from_the_leader_replaces_a_conflicting_log(db_path: Path) -> None:
    write_log(db_path, 4)
    storage = LevelDBStorage(db_path)
    try:
        storage.apply_snapshot(SnapshotMeta(8, 99, Membership(("a",))), b"leader state")
        assert (storage.first_index(), storage.last_index()) == (9, 8)
        storage.save(None, [Entry(99, 9, b"next")])
        assert storage.entries(9, 10) == [Entry(99, 9, b"next")]
    finally:
        storage.close()


def test_corrupted_snapshot_metadata_is_detected_at_open(db_path: Path) -> None:
    storage = LevelDBStorage(db_path)
    storage.apply_snapshot(SnapshotMeta(1, 1, Membership(("a",))), b"")
    storage.close()
    tamper(db_path, lambda db: db.put(b"snapmeta", b"\x00\x00\x00\x01garbage"))
    with pytest.raises(CorruptLogError, match="snapshot metadata"):
        LevelDBStorage(db_path)
