"""The retained history of changes: one event per key changed, for a window of revisions.

Why it exists: a range read that spans several pages must show ONE cut of the store
(one revision), while writes keep arriving between the pages; and the watch feature
streams the changes after a revision. Both need the same thing: what changed at each
revision, and what the key held before. This module keeps exactly that, designed once:

- `Event(kind, kv, prev)`: `kind` PUT or DELETE; `kv` the key after the change (for a
  delete: the key with an empty value, version 0, create_revision 0 and the deleting
  revision as mod_revision, as etcd's tombstones); `prev` the key before it (None when
  it did not exist). `event.revision` is `kv.mod_revision`. A transaction that changes
  several keys records several events at one revision.
- Events are kept for the last `window` revisions: every revision R with
  `compact_revision <= R <= revision` can be read (`state_at`) or streamed from
  (`events_since`); older ones answer `Compacted` (HTTP 410 `compacted`). The window is
  the node's own setting (`history_revisions`); trimming is a function of the revision
  alone, so replicas with the same setting hold the same history.
- The history is part of the replicated state: the snapshot carries `compact_revision`
  and the events (format 3), so a restored or newly joined node answers past reads and
  watches like the others. An old snapshot (format 1 or 2) has no history: its restored
  state can be read only from its own revision on.

Reading the store at R is "current state, with every change after R undone": for each
key changed after R, the `prev` of its first event after R is what it held at R. The
cost is O(events after R), bounded by the window.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from kvstore.state.types import KeyValue, decode_kv, encode_kv, ints

DEFAULT_HISTORY_REVISIONS = 10_000
_SHRINK_AT = 1024
"""Trimmed events are cut out of the list once this many (and half of it) are dead, so
trimming costs O(1) amortized instead of a list shift per revision."""


class EventKind(IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(unsafe_hash=True, slots=True)  # built per write: see kvstore.state.types
class Event:
    kind: EventKind
    kv: KeyValue
    prev: KeyValue | None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


class Compacted(Exception):
    """The revision asked for is older than the retained history (HTTP 410)."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {revision} is compacted; the oldest readable revision is {compact_revision}"
        )
        self.revision, self.compact_revision = revision, compact_revision


class FutureRevision(Exception):
    """The revision asked for is newer than this replica's (HTTP 400, or ask the leader)."""

    def __init__(self, revision: int, current: int) -> None:
        super().__init__(f"revision {revision} is newer than the store's revision {current}")
        self.revision, self.current = revision, current


def tombstone(key: str, revision: int) -> KeyValue:
    return KeyValue(key, b"", 0, 0, revision)


class History:
    """Events in revision order for the revisions after `compact_revision`."""

    __slots__ = ("_events", "_first", "_pins", "compact_revision", "window")

    def __init__(self, window: int, compact_revision: int = 0, events: list[Event] | None = None):
        if type(window) is not int or window < 1:
            raise ValueError(f"history window must be an integer >= 1, got {window!r}")
        self.window = window
        self.compact_revision = compact_revision
        self._events: list[Event] = events if events is not None else []
        self._first = 0
        self._pins = 0
        """Snapshots being captured (kvstore.state.snapshot_capture) read the events from
        a position on; while any is, trimming forgets events only logically (the
        compact revision rises alike on every replica) and never shifts the list."""

    def __len__(self) -> int:
        return len(self._events) - self._first

    def record(self, kind: EventKind, kv: KeyValue, prev: KeyValue | None) -> None:
        """Append an event; revisions must not decrease (the machine applies in order)."""
        self._events.append(Event(kind, kv, prev))

    def trim(self, revision: int) -> None:
        """Forget the revisions older than the window now that the store is at `revision`."""
        floor = revision - self.window
        if floor <= self.compact_revision:
            return
        self.compact_revision = floor
        events, first = self._events, self._first
        while first < len(events) and events[first].kv.mod_revision <= floor:
            first += 1
        if first >= _SHRINK_AT and first * 2 >= len(events) and not self._pins:
            del events[:first]
            first = 0
        self._first = first

    def check(self, revision: int, current: int) -> None:
        """Raise unless `revision` can be read from a store at `current`."""
        if revision < self.compact_revision:
            raise Compacted(revision, self.compact_revision)
        if revision > current:
            raise FutureRevision(revision, current)

    def _index_after(self, revision: int) -> int:
        return bisect_right(self._events, revision, lo=self._first, key=_revision_of)

    def events_since(self, revision: int) -> Iterator[Event]:
        """Every retained event with a revision > `revision`, oldest first (for watches).
        Raises Compacted when events after `revision` were already forgotten."""
        if revision < self.compact_revision:
            raise Compacted(revision, self.compact_revision)
        events = self._events
        return (events[i] for i in range(self._index_after(revision), len(events)))

    def state_at(self, revision: int, wanted: Callable[[str], bool]) -> dict[str, KeyValue | None]:
        """For each `wanted` key changed after `revision`: what it held at `revision`
        (None: absent). Keys not in the answer held then what they hold now."""
        before: dict[str, KeyValue | None] = {}
        for event in self.events_since(revision):
            key = event.kv.key
            if key not in before and wanted(key):
                before[key] = event.prev
        return before

    def pin(self) -> int:
        """Hold every event from now on in place until `unpin`; the position of the next
        event, for `first_prev_since`."""
        self._pins += 1
        return len(self._events)

    def unpin(self) -> None:
        self._pins -= 1

    def first_prev_since(self, position: int) -> dict[str, KeyValue | None]:
        """For each key changed by an event at or after `position` (from `pin`): what it
        held before the first of them (None: absent), i.e. its state when pinned."""
        before: dict[str, KeyValue | None] = {}
        events = self._events
        for i in range(position, len(events)):
            event = events[i]
            key = event.kv.key
            if key not in before:
                before[key] = event.prev
        return before

    def copy(self) -> History:
        """A picture for a snapshot (events are immutable, so a shallow copy suffices)."""
        return History(self.window, self.compact_revision, self._events[self._first :])

    def to_wire(self) -> tuple[int, list[tuple[Any, ...]]]:
        records = [
            (int(e.kind), *encode_kv(e.kv), None if e.prev is None else encode_kv(e.prev))
            for e in self._events[self._first :]
        ]
        return self.compact_revision, records

    @classmethod
    def from_wire(cls, window: int, compact_revision: Any, records: Any) -> History:
        """The inverse of to_wire; raises ValueError on anything inconsistent."""
        (compact,) = ints((compact_revision,), 1)
        events: list[Event] = []
        last = compact
        for kind, *fields, prev in records:
            kv = decode_kv(fields)
            if kv.mod_revision < last or kv.mod_revision <= compact:
                raise ValueError(f"history event out of order at revision {kv.mod_revision}")
            last = kv.mod_revision
            events.append(Event(EventKind(kind), kv, None if prev is None else decode_kv(prev)))
        return cls(window, compact, events)


def _revision_of(event: Event) -> int:
    return event.kv.mod_revision
