"""The keys of the store, in byte order, with the store revision and the change history.

Why a separate object: range reads need the keys in order (a sorted list beside the
dict, so a page costs O(log n + page) instead of sorting every key), and every change
must also become a history event (kvstore.state.history). Doing both in one place means
no writer (single put, delete, transaction) can change a key without its event, or
leave the order stale.

Each key's current record is kept packed (kvstore.state.records: one bytes object, never
tracked by the garbage collector); `get` makes its KeyValue when it is read.

Key order: keys are Python strings compared by code point, which is exactly the byte
order of their UTF-8 encodings (the only encoding a key can have on the wire), so
"byte order of keys" and `sorted()` agree.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator

from kvstore.state import records as rec
from kvstore.state.history import EventKind, History, tombstone
from kvstore.state.keyrange import KeyRange
from kvstore.state.types import KeyValue


class KeySpace:
    """Current keys, their order, the revision, and the history of recent changes."""

    __slots__ = ("history", "keys", "records", "revision")

    def __init__(
        self,
        history: History,
        revision: int = 0,
        records: dict[str, bytes] | None = None,
        keys: list[str] | None = None,
    ) -> None:
        self.records: dict[str, bytes] = records if records is not None else {}
        """Key -> its packed record (kvstore.state.records)."""
        self.keys: list[str] = keys if keys is not None else sorted(self.records)
        self.revision = revision
        self.history = history

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> KeyValue | None:
        record = self.records.get(key)
        return None if record is None else rec.unpack(key, record)

    def put(self, key: str, value: bytes, revision: int) -> KeyValue:
        """Write `key` stamped with `revision` (the caller's pending revision)."""
        return self.put_over(key, value, revision, self.get(key))

    def put_over(self, key: str, value: bytes, revision: int, prev: KeyValue | None) -> KeyValue:
        """`put`, for a caller that has just read the key's current value `prev` (`get`):
        a write then unpacks its key's record once, not twice."""
        if prev is None:
            kv = KeyValue(key, value, 1, revision, revision)
            insort(self.keys, key)
        else:
            kv = KeyValue(key, value, prev.version + 1, prev.create_revision, revision)
        self.records[key] = rec.pack(value, kv.version, kv.create_revision, revision)
        self.history.record(EventKind.PUT, kv, prev)
        return kv

    def delete(self, key: str, revision: int) -> bool:
        """Remove `key` if present; True when it was there."""
        record = self.records.pop(key, None)
        if record is None:
            return False
        del self.keys[bisect_left(self.keys, key)]
        self.history.record(EventKind.DELETE, tombstone(key, revision), rec.unpack(key, record))
        return True

    def delete_range(self, keys: KeyRange, revision: int) -> int:
        """Remove every key in the range; the number removed."""
        lo, hi = self.bounds(keys)
        doomed = self.keys[lo:hi]
        for key in doomed:
            self.delete(key, revision)
        return len(doomed)

    def commit(self, revision: int) -> None:
        """The command that wrote at `revision` is complete: the store is now at it."""
        self.revision = revision
        self.history.trim(revision)

    def bounds(self, keys: KeyRange) -> tuple[int, int]:
        """Indexes in `self.keys` of the first key in the range and one past the last."""
        lo = bisect_left(self.keys, keys.start)
        hi = len(self.keys) if keys.end is None else bisect_left(self.keys, keys.end, lo)
        return lo, max(lo, hi)

    def bounds_after(self, key: str) -> int:
        """Index in `self.keys` of the first key greater than `key`."""
        return bisect_right(self.keys, key)

    def iter_from(self, index: int, stop: int) -> Iterator[str]:
        keys = self.keys
        return (keys[i] for i in range(index, stop))
