"""The log as the core reads it, and an in-memory implementation for tests and the simulator.

The core never writes storage: it hands entries and hard state to its driver in a
`Ready`, and the driver persists them with `save` (one atomic, synced write).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from consensus.errors import CompactedError, UnavailableError
from consensus.types import Entry, HardState, SnapshotMeta, entries_size


class Storage(Protocol):
    """Read side of stable storage, used by the core."""

    def initial_state(self) -> HardState: ...

    def snapshot_meta(self) -> SnapshotMeta | None:
        """The latest snapshot's metadata, or None before the first snapshot."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still held (1 while nothing was compacted)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held (first_index() - 1 when the log is empty)."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at `index`; index 0 (and a snapshot's own index) are valid."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi); at least one entry when lo < hi, then at most max_bytes."""
        ...


class WritableStorage(Storage, Protocol):
    """What the driver needs on top: one atomic write of everything a Ready makes durable."""

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Store `entries` (replacing any stored entry at or after the first one's index)
        and `hard_state` (when not None) atomically and durably."""
        ...

    def apply_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Store a snapshot and drop the log it covers, atomically and durably. Entries
        after it are kept only if the log holds the snapshot's own entry (meta.index with
        meta.term); otherwise the whole log is replaced by the snapshot."""
        ...

    def snapshot_data(self) -> bytes | None:
        """The state machine bytes of the latest snapshot."""
        ...


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """Keep a prefix of `entries` within max_bytes, but always at least one entry."""
    if max_bytes is None or not entries or entries_size(entries) <= max_bytes:
        return entries  # the usual case, summed in C
    total = 0
    for count, entry in enumerate(entries):
        total += entry.size()
        if total > max_bytes and count > 0:
            return entries[:count]
    return entries


class MemoryStorage:
    """Storage held in a list; what the simulator's disks and the unit tests use."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._offset = 1  # index of self._entries[0]
        self._offset_term = 0  # term of the entry just before the first one held
        self._entries: list[Entry] = []
        self._snapshot: tuple[SnapshotMeta, bytes] | None = None

    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._snapshot[0] if self._snapshot else None

    def snapshot_data(self) -> bytes | None:
        return self._snapshot[1] if self._snapshot else None

    def apply_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        if self._snapshot and meta.index <= self._snapshot[0].index:
            raise ValueError(f"snapshot at {meta.index} is not newer than the one held")
        keeps_tail = meta.index <= self.last_index() and self.term(meta.index) == meta.term
        self._entries = self._entries[meta.index + 1 - self._offset :] if keeps_tail else []
        self._offset = meta.index + 1
        self._offset_term = meta.term
        self._snapshot = (meta, data)

    def initial_state(self) -> HardState:
        return self.hard_state

    def first_index(self) -> int:
        return self._offset

    def last_index(self) -> int:
        return self._offset + len(self._entries) - 1

    def term(self, index: int) -> int:
        if index == self._offset - 1:
            return self._offset_term
        if index < self._offset:
            raise CompactedError(f"index {index} is compacted")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is past the last index {self.last_index()}")
        return self._entries[index - self._offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo < self._offset:
            raise CompactedError(f"index {lo} is compacted")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is past the last index {self.last_index()}")
        if lo >= hi:
            return []
        return limit_size(self._entries[lo - self._offset : hi - self._offset], max_bytes)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        if entries:
            first = entries[0].index
            if first < self._offset or first > self.last_index() + 1:
                raise ValueError(f"entries starting at {first} leave a gap or hit the snapshot")
            del self._entries[first - self._offset :]
            self._entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state


def is_pristine(storage: Storage) -> bool:
    """Nothing was ever saved: a founding node writes its bootstrap entry here."""
    return (
        storage.last_index() == 0
        and storage.snapshot_meta() is None
        and storage.initial_state().term == 0
    )
