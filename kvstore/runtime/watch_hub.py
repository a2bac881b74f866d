"""Watches on one node: one pass over each applied batch feeds every matching watcher.

Why it looks like this (etcd's watchable store, in small):
- The state machine already keeps the recent change events (kvstore.state.history), so
  the hub keeps no copy of them. After every applied batch the runtime calls `advance`;
  the hub reads the events after the revision it fed last, groups them by revision (a
  transaction's changes share one) and hands each group, once, to the watchers whose
  key or prefix it touches. Watchers are indexed by exact key and by prefix, so a write
  costs one dict lookup plus one test per distinct prefix, not one per watcher.
- A watcher that starts in the past is *unsynced*: it reads its backlog straight from
  the history, at its own pace, and joins the index (becomes *synced*) the moment it
  has caught up. Both steps happen without an await in between, so no revision can
  slip between the backlog and the live feed, and none can be delivered twice.
- A synced watcher has its own bounded buffer. A consumer too slow to keep it below
  the bound is cut off (`Ended`, reason "slow", with the revision to resume from)
  instead of making the node hold memory for it or wait for it.
- A watcher that asks to start beyond this node's revision (it saw that revision on
  another node) gets nothing, not even progress, until this node has applied the
  revision before it: a reconnect never goes back in time.

Everything runs on the event loop thread, like the state machine it reads.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from kvstore.state.history import Compacted, Event, History

SLOW, COMPACTED, SHUTDOWN = "slow", "compacted", "shutdown"
"""Why a watcher ended; each is final for that watcher, and the consumer resumes (or,
for COMPACTED, re-lists) with a new watch."""

CATCH_UP_EVENTS = 1000
"""An unsynced watcher takes at most about this many events from the history per step
(whole revisions), so one far-behind watcher cannot hold the loop for long."""


class StateSource(Protocol):
    """What the hub reads: the state machine (kvstore.state.machine.KVStateMachine)."""

    @property
    def revision(self) -> int: ...

    @property
    def history(self) -> History: ...


@dataclass(frozen=True, slots=True)
class Selector:
    """Which keys a watcher wants: exactly `key`, or every key starting with `prefix`."""

    key: str | None = None
    prefix: str | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.prefix is None):
            raise ValueError("a watch selects either one key or one prefix")

    def matches(self, key: str) -> bool:
        if self.key is not None:
            return key == self.key
        assert self.prefix is not None
        return key.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class Changes:
    """Every selected change made at `revision`, in the order they were made. One object
    is shared by all watchers of the same key or prefix, so `encoded` lets the consumer
    keep its wire form (by format) and encode it once for all of them."""

    revision: int
    events: tuple[Event, ...]
    encoded: dict[object, bytes] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Progress:
    """Nothing selected changed up to `revision`: the watcher is that fresh."""

    revision: int


@dataclass(frozen=True, slots=True)
class Ended:
    """The watch is over; `next_revision` is where a new watch resumes. For COMPACTED,
    `compact_revision` is the oldest revision still readable (re-list at it or later)."""

    reason: str
    next_revision: int
    compact_revision: int = 0


Item = Changes | Progress | Ended


class Watcher:
    """One watch on one node. `next_revision` is the first revision its consumer has not
    been handed yet; everything the consumer took is exactly the selected changes from
    the start revision up to `next_revision - 1`, in order."""

    __slots__ = (
        "_buffered",
        "_hub",
        "_limit",
        "_queue",
        "_wake",
        "ended",
        "next_revision",
        "selector",
        "synced",
    )

    def __init__(self, hub: WatchHub, selector: Selector, start: int, limit: int) -> None:
        self._hub = hub
        self.selector = selector
        self.next_revision = start
        self.synced = False
        self.ended: Ended | None = None
        self._queue: deque[tuple[Changes, int]] = deque()
        self._buffered = 0
        self._limit = limit
        self._wake = asyncio.Event()

    def _push(self, changes: Changes, size: int) -> bool:
        """Buffer one revision's changes (`size`: their bytes); False (and the watcher is
        cut off) when the buffer is full. A batch larger than the whole bound is still
        taken into an empty buffer, or a big transaction could never be delivered."""
        if self._queue and self._buffered + size > self._limit:
            self._end(SLOW)
            return False
        self._queue.append((changes, size))
        self._buffered += size
        self._wake.set()
        return True

    def _end(self, reason: str, compact_revision: int = 0) -> None:
        if self.ended is None:
            self._queue.clear()  # the memory goes now; the consumer resumes from its cursor
            self._buffered = 0
            self.ended = Ended(reason, self.next_revision, compact_revision)
            self._wake.set()

    def poll(self) -> Item | None:
        """The next item without waiting: buffered changes, backlog from the history,
        or the end; None when there is nothing yet."""
        if self._queue:
            changes, size = self._queue.popleft()
            self._buffered -= size
            self.next_revision = changes.revision + 1
            return changes
        if self.ended is not None:
            return self.ended
        if not self.synced:
            return self._hub._catch_up(self)
        return None

    def progress(self) -> Progress | None:
        """How fresh this watcher is when its buffer is empty; None while this node is
        still behind the revision the watcher asked to start after."""
        revision = self._hub.revision
        if self._queue or not self.synced or self.ended is not None:
            return None
        if revision < self.next_revision - 1:
            return None
        return Progress(revision)

    async def next(self, timeout: float) -> Item | None:
        """The next item, waiting up to `timeout` seconds; None when nothing came."""
        item = self.poll()
        if item is not None:
            return item
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return None
        return self.poll()

    def close(self) -> None:
        """The consumer is gone: leave the index (idempotent)."""
        self._hub._remove(self)
        self._end(SHUTDOWN)


class WatchHub:
    """Every watch of one node, fed from the state machine's history after each batch."""

    def __init__(self, source: StateSource, buffer_bytes: int) -> None:
        self._source = source
        self._buffer_bytes = buffer_bytes
        self.revision = source.revision
        """The last revision fed to the watchers (the state machine's, between batches)."""
        self._by_key: dict[str, set[Watcher]] = {}
        self._by_prefix: dict[str, set[Watcher]] = {}
        self._closed = False

    def __len__(self) -> int:
        return sum(map(len, self._by_key.values())) + sum(map(len, self._by_prefix.values()))

    def watch(self, selector: Selector, start_revision: int | None = None) -> Watcher:
        """A new watcher from `start_revision` (None: the next revision). Raises
        Compacted when changes after `start_revision - 1` are no longer retained."""
        start = self.revision + 1 if start_revision is None else start_revision
        if start < 1:
            raise ValueError("start_revision must be >= 1")
        watcher = Watcher(self, selector, start, self._buffer_bytes)
        if self._closed:
            watcher._end(SHUTDOWN)
        elif start - 1 >= self.revision:
            self._add(watcher)  # nothing to catch up (or not yet applied here)
        else:
            history = self._source.history
            if start - 1 < history.compact_revision:
                raise Compacted(start - 1, history.compact_revision)
        return watcher

    # ------------------------------------------------------------------ feeding

    def advance(self) -> None:
        """Feed the changes applied since the last call to the synced watchers."""
        source = self._source
        current = source.revision
        if current == self.revision:
            return
        if not (self._by_key or self._by_prefix):
            self.revision = current  # nobody listens live: nothing to read
            return
        try:
            groups = list(_by_revision(source.history.events_since(self.revision), current))
        except Compacted as exc:
            # The state jumped further than the history reaches (an installed snapshot,
            # or a batch longer than the window): the live feed cannot be continuous.
            self.revision = current
            self._end_all(COMPACTED, exc.compact_revision)
            return
        cut: list[Watcher] = []
        for revision, events in groups:
            # One selection (and one message object) per distinct key or prefix, shared
            # by all its watchers: a thousand watchers of one prefix cost one filter.
            touched: dict[str, list[Event]] = {}
            for event in events:
                touched.setdefault(event.kv.key, []).append(event)
            for key, selected in touched.items():
                watchers = self._by_key.get(key)
                if watchers:
                    self._feed(watchers, revision, selected, cut)
            for prefix, watchers in self._by_prefix.items():
                selected = [e for e in events if e.kv.key.startswith(prefix)]
                if selected:
                    self._feed(watchers, revision, selected, cut)
        self.revision = current
        for watcher in cut:
            self._remove(watcher)

    @staticmethod
    def _feed(
        watchers: set[Watcher], revision: int, selected: list[Event], cut: list[Watcher]
    ) -> None:
        changes = Changes(revision, tuple(selected))
        size = sum(_event_bytes(e) for e in selected)
        for watcher in watchers:
            if watcher.ended is not None or revision < watcher.next_revision:
                continue  # a future start not reached yet
            if not watcher._push(changes, size):
                cut.append(watcher)

    def _catch_up(self, watcher: Watcher) -> Item | None:
        """The next part of an unsynced watcher's backlog from the history; the watcher
        joins the live feed when nothing is left. Runs without awaiting, so the live
        feed starts exactly after the last revision read here."""
        history = self._source.history
        after = watcher.next_revision - 1
        try:
            events = history.events_since(after)
            found: list[Changes] = []
            taken = 0
            for revision, group in _by_revision(events, self.revision):
                selected = tuple(e for e in group if watcher.selector.matches(e.kv.key))
                if selected:
                    found.append(Changes(revision, selected))
                    taken += len(selected)
                    if taken >= CATCH_UP_EVENTS:
                        break
        except Compacted as exc:
            watcher._end(COMPACTED, exc.compact_revision)
            return watcher.ended
        if found:
            for changes in found:
                size = sum(_event_bytes(e) for e in changes.events)
                watcher._queue.append((changes, size))
                watcher._buffered += size
            return watcher.poll()
        watcher.next_revision = self.revision + 1
        if self._closed:
            watcher._end(SHUTDOWN)
            return watcher.ended
        self._add(watcher)
        return None

    # ------------------------------------------------------------------ the index

    def _add(self, watcher: Watcher) -> None:
        watcher.synced = True
        selector = watcher.selector
        if selector.key is not None:
            self._by_key.setdefault(selector.key, set()).add(watcher)
        else:
            assert selector.prefix is not None
            self._by_prefix.setdefault(selector.prefix, set()).add(watcher)

    def _remove(self, watcher: Watcher) -> None:
        selector = watcher.selector
        index, name = (
            (self._by_key, selector.key)
            if selector.key is not None
            else (self._by_prefix, selector.prefix)
        )
        assert name is not None
        watchers = index.get(name)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del index[name]

    def _end_all(self, reason: str, compact_revision: int = 0) -> None:
        for index in (self._by_key, self._by_prefix):
            for watchers in index.values():
                for watcher in watchers:
                    watcher._end(reason, compact_revision)
            index.clear()

    def close(self) -> None:
        """The node is stopping: end every watch so its HTTP stream finishes."""
        self._closed = True
        self._end_all(SHUTDOWN)


def _by_revision(events: Iterator[Event], up_to: int) -> Iterator[tuple[int, list[Event]]]:
    """Consecutive events grouped by revision, stopping after revision `up_to`."""
    group: list[Event] = []
    revision = 0
    for event in events:
        if event.revision > up_to:
            break
        if group and event.revision != revision:
            yield revision, group
            group = []
        revision = event.revision
        group.append(event)
    if group:
        yield revision, group


def _event_bytes(event: Event) -> int:
    """What an event costs in a buffer, roughly: its key and values plus a fixed part."""
    prev = event.prev
    return 64 + len(event.kv.key) + len(event.kv.value) + (0 if prev is None else len(prev.value))
