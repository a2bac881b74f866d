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
from collections.abc import Iterable, Iterator
from itertools import chain

from kvstore.state import records as rec
from kvstore.state.history import EventKind, History, tombstone
from kvstore.state.keyrange import KeyRange
from kvstore.state.types import KeyValue

SHARDS = 64
_MASK = SHARDS - 1


class Records:
    """Key -> its packed record, held in SHARDS dicts chosen by the key's hash.

    Why not one dict: a dict that fills to 2/3 of its table copies every entry into a
    table twice the size, in one step. At a million keys that step came at 349,525 and
    699,051 keys, on every node within the same second (they apply the same writes),
    and held each loop for 18-25 and 39-48 ms of its thread's CPU (sampled stacks, a
    loaded 2-core machine). Split 64 ways, a step moves a 64th of the keys; the dicts
    together take the same memory as one. The cost is a Python call per access."""

    __slots__ = ("_shards",)

    def __init__(self, items: Iterable[tuple[str, bytes]] = ()) -> None:
        self._shards: list[dict[str, bytes]] = [{} for _ in range(SHARDS)]
        shards = self._shards
        for key, record in items:
            shards[hash(key) & _MASK][key] = record

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def __contains__(self, key: str) -> bool:
        return key in self._shards[hash(key) & _MASK]

    def __getitem__(self, key: str) -> bytes:
        return self._shards[hash(key) & _MASK][key]

    def __setitem__(self, key: str, record: bytes) -> None:
        self._shards[hash(key) & _MASK][key] = record

    def get(self, key: str) -> bytes | None:
        return self._shards[hash(key) & _MASK].get(key)

    def pop(self, key: str) -> bytes | None:
        """Remove `key`; its record, or None when it was not there."""
        return self._shards[hash(key) & _MASK].pop(key, None)

    def values(self) -> Iterator[bytes]:
        return chain.from_iterable(shard.values() for shard in self._shards)


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
        self.records = Records(records.items() if records is not None else ())
        """Key -> its packed record (kvstore.state.records)."""
        self.keys: list[str] = keys if keys is not None else sorted(records or ())
        self.revision = revision
        self.history = history

    def __len__(self) -> int:
        return len(self.keys)

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
        record = self.records.pop(key)
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
