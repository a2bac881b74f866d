"""Stable storage on LevelDB (plyvel): where a node's promises to its peers become durable.

Layout, after hashicorp/raft-boltdb: entry `i` lives under b"e" + the 8-byte big-endian
`i` (so LevelDB's key order is log order and a range scan is a log slice), the hard state
under one fixed key. Every value is a 4-byte big-endian CRC32 of the msgpack body followed
by that body, so a damaged record is reported instead of being replayed as a vote or an
entry. Everything one Ready makes durable goes in a single synced write batch.

The core asks for terms constantly and for the log tail on every replication round, so
both are answered from memory: the terms as runs (kvstore.runtime.term_runs), and a
bounded cache of the newest entries. LevelDB is read only for older entries.

Recovery checks at open: LevelDB runs with paranoid checks (a damaged table or log
record is an error, not something to skip); every record's checksum; no hole in the
indexes; terms never decrease along the log; the commit index is not past the log's
end; and the log reaches the committed watermark kept beside it
(kvstore.runtime.watermark), which catches a log LevelDB silently shortened while
recovering a damaged `.log` file. Any violation raises CorruptLogError naming the path.

The latest snapshot's metadata lives under one more key, its bytes in a file of their
own (kvstore.runtime.snapshot_files) whose name, size and CRC32 live under another
(older versions kept the bytes under a third key, still read). A node's own snapshot
is stored in two steps so that the event loop never writes it: `prepare_snapshot`
writes and syncs the file (the compaction thread), `commit_snapshot` points the log at
it in one small batch (the loop) and hands back the deletion of the entries it covers,
which the compaction thread runs later: entries at or below the snapshot's index are
never read again, and any left by a crash are deleted when the log is opened.

Threading: the driver runs `save` in a worker thread while the event loop keeps reading
entries below the ones being written. `save` therefore publishes its cache updates only
after the batch is on disk, each as one atomic step under the GIL (a new immutable tail
object, a new TermRuns), never as a sequence of partial mutations. Only one
`save` may run at a time.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import msgpack
import plyvel

from consensus.codec import (
    CodecError,
    decode_entry,
    decode_hard_state,
    decode_snapshot_meta,
    encode_entries,
    encode_hard_state,
    encode_snapshot_meta,
)
from consensus.errors import CompactedError, ConsensusError, UnavailableError
from consensus.storage import limit_size
from consensus.types import Entry, HardState, SnapshotMeta
from kvstore.runtime.compaction import yield_gil
from kvstore.runtime.log_tail import Tail
from kvstore.runtime.snapshot_files import SnapshotFile, SnapshotFiles
from kvstore.runtime.term_runs import TermRuns
from kvstore.runtime.watermark import CommitWatermark, WatermarkError

__all__ = ["CorruptLogError", "LevelDBStorage"]

_ENTRY_PREFIX = b"e"
_ENTRY_KEY_LEN = len(_ENTRY_PREFIX) + 8
_HARD_STATE_KEY = b"hardstate"
_SNAPSHOT_META_KEY = b"snapmeta"
_SNAPSHOT_DATA_KEY = b"snapdata"
_SNAPSHOT_FILE_KEY = b"snapfile"
_ENTRIES_END = b"f"
"""Stops a scan of the entry keys (b"e" + 8 bytes, so all below b"f")."""
_DELETE_BATCH = 1_000
_CRC = struct.Struct(">I")


class CorruptLogError(ConsensusError):
    """A stored record failed its checksum, does not decode, or the log has a hole.

    Raised rather than repaired: a node that silently dropped a record could forget a
    vote or an acknowledged entry, which is worse than refusing to start."""

    def __init__(self, path: str, index: int | None, problem: str) -> None:
        where = f"entry {index}: " if index is not None else ""
        super().__init__(f"corrupt log in {path}: {where}{problem}")
        self.path = path
        self.index = index


def _entry_key(index: int) -> bytes:
    return _ENTRY_PREFIX + index.to_bytes(8, "big")


def _seal(body: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(body)) + body


def _open_record(value: bytes) -> bytes:
    """Return the checked body of a stored value, or raise ValueError saying what is wrong."""
    if len(value) < _CRC.size:
        raise ValueError(f"record of {len(value)} bytes is shorter than its checksum")
    body = value[_CRC.size :]
    (stored,) = _CRC.unpack_from(value)
    computed = zlib.crc32(body)
    if stored != computed:
        raise ValueError(f"checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
    return body


BLOCK_CACHE_BYTES = 2 << 20
"""LevelDB's block cache (default 8 MiB): the log is read in order; newest from `_tail`."""


class LevelDBStorage:
    """`WritableStorage` on a LevelDB directory; open it once per process."""

    def __init__(
        self,
        path: str | Path,
        *,
        cache_entries: int = 4096,
        cache_bytes: int = 16 << 20,
        watermark_interval_s: float = 0.5,
    ) -> None:
        """Open (creating if needed) and fully verify the log, so a damaged record stops
        the node at start rather than surfacing mid-replication."""
        self._path = str(path)
        self._cache_entries = cache_entries
        self._cache_bytes = cache_bytes
        try:
            self._db = plyvel.DB(
                self._path,
                create_if_missing=True,
                paranoid_checks=True,
                lru_cache_size=BLOCK_CACHE_BYTES,
            )
        except plyvel.CorruptionError as exc:
            raise CorruptLogError(self._path, None, f"LevelDB reports: {exc}") from None
        self._watermark = CommitWatermark(Path(self._path), watermark_interval_s)
        self._files = SnapshotFiles(Path(self._path) / "snapshots")
        self._forgetting = threading.Lock()
        """Held while a worker thread deletes covered entries, and by `close`: closing the
        database under a running deletion crashed the process."""
        try:
            self._hard_state = self._load_hard_state()
            self._snapshot = self._load_snapshot_meta()
            self._snapshot_file = self._load_snapshot_file()
            self._files.keep_only(self._snapshot_file)
            self._base = self._snapshot.index if self._snapshot else 0
            self._delete_entries(0, self._base)  # left by a crash after a snapshot
            self._terms, self._tail = self._scan_log()
            self._check_promises()
        except plyvel.CorruptionError as exc:
            self._db.close()
            raise CorruptLogError(self._path, None, f"LevelDB reports: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------ opening

    def _load_hard_state(self) -> HardState:
        value = self._db.get(_HARD_STATE_KEY)
        if value is None:
            return HardState()
        try:
            return decode_hard_state(_open_record(value))
        except (ValueError, CodecError) as exc:
            raise CorruptLogError(self._path, None, f"hard state: {exc}") from exc

    def _load_snapshot_meta(self) -> SnapshotMeta | None:
        value = self._db.get(_SNAPSHOT_META_KEY)
        if value is None:
            return None
        try:
            return decode_snapshot_meta(_open_record(value))
        except (ValueError, CodecError) as exc:
            raise CorruptLogError(self._path, None, f"snapshot metadata: {exc}") from exc

    def _load_snapshot_file(self) -> SnapshotFile | None:
        value = self._db.get(_SNAPSHOT_FILE_KEY)
        if value is None:
            return None
        try:
            name, size, crc = msgpack.unpackb(_open_record(value))
            return SnapshotFile(str(name), int(size), int(crc))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptLogError(self._path, None, f"snapshot file record: {exc}") from exc

    def _scan_log(self) -> tuple[TermRuns, Tail]:
        """Check every record and that indices run on from the snapshot without a hole."""
        last = self._base  # runs of equal terms, the snapshot's first (0: empty log)
        starts, terms = [last], [self._snapshot.term if self._snapshot else 0]
        newest: deque[Entry] = deque(maxlen=self._cache_entries)
        first = _entry_key(self._base + 1)
        with self._db.iterator(start=first, stop=_ENTRIES_END, verify_checksums=True) as records:
            for key, value in records:
                index = self._key_index(key)
                if index != last + 1:
                    raise CorruptLogError(
                        self._path, last + 1, f"missing (the next stored entry is {index})"
                    )
                entry = self._decode_record(index, value)
                if entry.term != terms[-1]:
                    if entry.term < terms[-1]:
                        raise CorruptLogError(
                            self._path, index, f"term {entry.term} follows term {terms[-1]}"
                        )
                    starts.append(index)
                    terms.append(entry.term)
                last = index
                newest.append(entry)
        runs = TermRuns(self._base, last, tuple(starts), tuple(terms))
        tail = Tail.of(last + 1, ())
        if newest:
            tail = Tail.of(newest[0].index, ()).replaced(
                newest, self._cache_entries, self._cache_bytes
            )
        return runs, tail

    def _check_promises(self) -> None:
        """The log must hold everything this node said it had committed."""
        last, hard_state = self._terms.last, self._hard_state
        if hard_state.commit > last:
            raise CorruptLogError(
                self._path, None, f"commit index {hard_state.commit} is past the last entry {last}"
            )
        try:
            term, commit = self._watermark.read()
        except WatermarkError as exc:
            raise CorruptLogError(self._path, None, str(exc)) from None
        if commit > min(last, hard_state.commit) or term > hard_state.term:
            raise CorruptLogError(
                self._path,
                None,
                f"the log ends at {last} (commit {hard_state.commit}, term {hard_state.term}) "
                f"but this node had committed up to {commit} (term {term}), as "
                f"{self._watermark.path} records: LevelDB lost the newest part of its log "
                "(a damaged or truncated .log file), with entries this node acknowledged",
            )

    def _key_index(self, key: bytes) -> int:
        if len(key) != _ENTRY_KEY_LEN:
            raise CorruptLogError(self._path, None, f"malformed entry key {key!r}")
        return int.from_bytes(key[len(_ENTRY_PREFIX) :], "big")

    def _decode_record(self, index: int, value: bytes) -> Entry:
        try:
            entry = decode_entry(_open_record(value))
        except (ValueError, CodecError) as exc:
            raise CorruptLogError(self._path, index, str(exc)) from exc
        if entry.index != index:
            raise CorruptLogError(self._path, index, f"record holds entry {entry.index}")
        return entry

    # ------------------------------------------------------------------ Storage

    def initial_state(self) -> HardState:
        return self._hard_state

    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._snapshot

    def snapshot_data(self) -> bytes | None:
        try:
            if self._snapshot_file is not None:
                return self._files.read(self._snapshot_file)
            value = self._db.get(_SNAPSHOT_DATA_KEY)
            return None if value is None else _open_record(value)
        except (OSError, ValueError) as exc:
            raise CorruptLogError(self._path, None, f"snapshot data: {exc}") from exc

    def snapshot_bytes(self) -> int:
        """The stored snapshot's size (0: none, or one an older version stored)."""
        return 0 if self._snapshot_file is None else self._snapshot_file.size

    def first_index(self) -> int:
        return self._base + 1

    def last_index(self) -> int:
        return self._terms.last

    def term(self, index: int) -> int:
        terms = self._terms
        if index > terms.last:
            raise UnavailableError(f"index {index} is past the last index {terms.last}")
        if index >= terms.last_start:  # the newest run: most questions (TermRuns.term)
            return terms.last_term
        if index < terms.base:
            raise CompactedError(f"index {index} is compacted")
        return terms.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted")
        last = self.last_index()
        if hi > last + 1:
            raise UnavailableError(f"index {hi - 1} is past the last index {last}")
        if lo >= hi:
            return []
        cached = self._tail.get(lo, hi)
        if cached is not None:
            return limit_size(cached, max_bytes)
        return self._read_range(lo, hi, max_bytes)

    def _read_range(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Read [lo, hi) from LevelDB, stopping as soon as the byte budget is spent
        (the same cut as `limit_size`) so a lagging follower does not decode a huge range."""
        result: list[Entry] = []
        total = 0
        with self._db.iterator(start=_entry_key(lo), stop=_entry_key(hi)) as records:
            for key, value in records:
                index = lo + len(result)
                if self._key_index(key) != index:
                    raise CorruptLogError(self._path, index, "missing from the log")
                entry = self._decode_record(index, value)
                total += entry.size()
                if max_bytes is not None and total > max_bytes and result:
                    return result
                result.append(entry)
        if len(result) != hi - lo:
            raise CorruptLogError(self._path, lo + len(result), "missing from the log")
        return result

    # ------------------------------------------------------------------ WritableStorage

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Write entries, drop any stored suffix past them, and write the hard state, all in
        one synced batch: a crash leaves either all of this Ready on disk or none of it."""
        if hard_state is None and not entries:
            return
        old_last = self.last_index()
        new_terms = self._check_entries(entries, old_last) if entries else None
        batch = self._db.write_batch(sync=True)
        put = batch.put
        for entry, body in zip(entries, encode_entries(entries), strict=True):
            put(_entry_key(entry.index), _seal(body))
        if entries:
            for index in range(entries[-1].index + 1, old_last + 1):
                batch.delete(_entry_key(index))
        if hard_state is not None:
            batch.put(_HARD_STATE_KEY, _seal(encode_hard_state(hard_state)))
        batch.write()
        # Publish only now that the batch is durable; tail before terms, so a reader that
        # sees the new last index also finds the new entries in the tail.
        if hard_state is not None:
            self._hard_state = hard_state
            self._watermark.advance(hard_state)
        if new_terms is not None:
            self._tail = self._tail.replaced(entries, self._cache_entries, self._cache_bytes)
            self._terms = new_terms

    def _check_entries(self, entries: Sequence[Entry], last: int) -> TermRuns:
        """Reject a batch that would leave a hole, before anything is written; the terms
        once it is."""
        first = entries[0].index
        if first < self.first_index() or first > last + 1:
            raise ValueError(f"entries starting at {first} leave a gap or hit the snapshot")
        for offset, entry in enumerate(entries):
            if entry.index != first + offset:
                raise ValueError(f"entry {entry.index} at position {offset} breaks the sequence")
        terms = [entry.term for entry in entries]
        if min(terms) < 0 or max(terms) >= 1 << 64:
            raise ValueError("entry terms must fit in 64 unsigned bits")
        return self._terms.replaced(entries)

    def apply_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Store the snapshot durably and delete the entries it covers; keep the entries
        after it only if the log holds the snapshot's own entry."""
        file = self.prepare_snapshot(meta, lambda out: out.write(data))
        self.commit_snapshot(meta, file, sync=True)()

    def prepare_snapshot(
        self, meta: SnapshotMeta, fill: Callable[[BinaryIO], object]
    ) -> SnapshotFile:
        """Write the file of `meta`'s snapshot with what `fill` writes, synced. Safe in
        another thread than the log's writer (it touches no LevelDB state)."""
        return self._files.write(meta, fill)

    def commit_snapshot(
        self, meta: SnapshotMeta, file: SnapshotFile, *, sync: bool = False
    ) -> Callable[[], None]:
        """Make `file` (from prepare_snapshot) the snapshot, dropping the log it covers
        (the entries after it are kept only if the log holds the snapshot's own entry).
        One small batch; returns the deletion of the covered entries and of the old
        file, to run in any thread. Unsynced by default: the next synced `save` makes
        it durable, and losing it loses only a compaction, never an entry (the batch
        that stores it comes before the deletions in LevelDB's log)."""
        if self._snapshot is not None and meta.index <= self._snapshot.index:
            raise ValueError(f"snapshot at {meta.index} is not newer than {self._snapshot.index}")
        last = self.last_index()
        keeps_tail = meta.index <= last and self.term(meta.index) == meta.term
        first, old_file = self.first_index(), self._snapshot_file
        batch = self._db.write_batch(sync=sync)
        batch.put(_SNAPSHOT_META_KEY, _seal(encode_snapshot_meta(meta)))
        batch.put(_SNAPSHOT_FILE_KEY, _seal(msgpack.packb([file.name, file.size, file.crc])))
        batch.delete(_SNAPSHOT_DATA_KEY)
        if not keeps_tail:  # a log that disagrees with the snapshot goes now, not later
            for index in range(max(first, meta.index + 1), last + 1):
                batch.delete(_entry_key(index))
        batch.write()
        tail = self._tail
        if keeps_tail and tail.start <= meta.index < tail.end:
            tail = Tail.of(meta.index + 1, tail.get(meta.index + 1, tail.end) or ())
        elif not keeps_tail or tail.start <= meta.index:
            tail = Tail.of(meta.index + 1, ())
        self._snapshot = meta
        self._snapshot_file = file
        self._base = meta.index
        self._tail = tail
        self._terms = (
            self._terms.after_snapshot(meta.index, meta.term)
            if keeps_tail
            else TermRuns.of(meta.index, meta.term)
        )

        def forget() -> None:
            with self._forgetting:
                if self._db.closed:
                    return  # what is left below the snapshot, the next open deletes
                self._delete_entries(first, min(meta.index, last), sync)
            if old_file is not None and old_file.name != file.name:
                (self._files.directory / old_file.name).unlink(missing_ok=True)

        return forget

    def _delete_entries(self, lo: int, hi: int, sync: bool = False) -> None:
        """Delete the stored entries lo..hi (inclusive), a batch at a time; only entries
        no reader asks for any more (at or below the snapshot)."""
        keys = self._db.iterator(start=_entry_key(lo), stop=_entry_key(hi + 1), include_value=False)
        with keys:
            batch = self._db.write_batch(sync=sync)
            for count, key in enumerate(keys, 1):
                batch.delete(key)
                if count % _DELETE_BATCH == 0:
                    batch.write()
                    yield_gil()  # the loop waits neither for the GIL nor behind a long batch
                    batch = self._db.write_batch(sync=sync)
            batch.write()

    def close(self) -> None:
        """Close the database, after any deletion a worker thread is running."""
        with self._forgetting:
            if not self._db.closed:
                self._watermark.flush()
            self._db.close()
