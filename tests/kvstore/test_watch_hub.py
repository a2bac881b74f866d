"""The watch hub against a real state machine: what every watcher receives equals the
diff of consecutive states (hypothesis state machine), with watchers started in the
past, now and the future, slow readers cut off and resumed, and compacted history."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from consensus.types import Entry
from kvstore.runtime.watch_hub import (
    COMPACTED,
    SHUTDOWN,
    SLOW,
    Changes,
    Ended,
    Progress,
    Selector,
    Watcher,
    WatchHub,
)
from kvstore.state.commands import (
    Command,
    Delete,
    Put,
    Txn,
    TxnDeleteRange,
    TxnPut,
    encode_command,
)
from kvstore.state.history import Compacted, EventKind
from kvstore.state.keyrange import KeyRange
from kvstore.state.machine import KVStateMachine

KEYS = ["a", "ab", "abc", "b", "ba", "c"]
SELECTORS = [Selector(prefix="a"), Selector(prefix=""), Selector(key="ab"), Selector(prefix="b")]


def apply(sm: KVStateMachine, command: Command) -> None:
    sm.apply(Entry(term=1, index=sm.applied_index + 1, data=encode_command(command)))


class Consumer:
    """One logical watch as a client sees it: resumed after a cut-off, re-listed after
    compaction; `seen` maps revision -> the (kind, key, value, prev value) received."""

    def __init__(self, hub: WatchHub, selector: Selector, start: int) -> None:
        self.hub, self.selector, self.start = hub, selector, start
        self.seen: dict[int, list[tuple[int, str, bytes, bytes | None]]] = {}
        self.order: list[int] = []
        self.watcher: Watcher | None = hub.watch(selector, start)
        self.relisted_at: int | None = None

    def take(self, count: int) -> None:
        for _ in range(count):
            if self.watcher is None:
                return
            item = self.watcher.poll()
            if item is None:
                return
            if type(item) is Changes:
                assert item.revision not in self.seen, "a revision delivered twice"
                self.order.append(item.revision)
                self.seen[item.revision] = [
                    (
                        int(e.kind),
                        e.kv.key,
                        e.kv.value,
                        None if e.prev is None else e.prev.value,
                    )
                    for e in item.events
                ]
                assert all(e.revision == item.revision for e in item.events)
            else:
                assert type(item) is Ended
                self.resume(item)

    def resume(self, ended: Ended) -> None:
        assert ended.reason in (SLOW, COMPACTED)
        try:
            self.watcher = self.hub.watch(self.selector, ended.next_revision)
        except Compacted:
            self.watcher = None  # a real client re-lists; the model stops checking here
            self.relisted_at = ended.next_revision


class WatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sm = KVStateMachine(history_revisions=25)
        self.hub = WatchHub(self.sm, buffer_bytes=400)
        self.states: list[dict[str, bytes]] = [{}]
        """states[r]: the store after revision r (as the model computes it)."""
        self.consumers: list[Consumer] = []
        self.counter = 0

    def _value(self) -> bytes:
        self.counter += 1
        return f"v{self.counter}".encode()

    def _record(self, before: int) -> None:
        if self.sm.revision > before:
            assert self.sm.revision == before + 1
            state = {k: self.sm.get(k).value for k in KEYS if self.sm.get(k) is not None}
            self.states.append(state)

    @rule(key=st.sampled_from(KEYS))
    def put(self, key: str) -> None:
        before = self.sm.revision
        apply(self.sm, Put(key, self._value()))
        self._record(before)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        before = self.sm.revision
        apply(self.sm, Delete(key))
        self._record(before)

    @rule(
        puts=st.lists(st.sampled_from(KEYS), unique=True, max_size=3),
        prefix=st.sampled_from(["", "a", "b", "zz"]),
    )
    def txn(self, puts: list[str], prefix: str) -> None:
        """Several changes at one revision: a delete of a range, then puts outside it."""
        deleted = KeyRange(prefix, prefix + "\uffff") if prefix else KeyRange("zz", "zzz")
        ops = [TxnDeleteRange(deleted)]
        ops += [TxnPut(k, self._value()) for k in puts if not k.startswith(prefix or "zz")]
        before = self.sm.revision
        apply(self.sm, Txn((), tuple(ops)))
        self._record(before)

    @rule()
    def feed(self) -> None:
        self.hub.advance()

    @rule(selector=st.sampled_from(SELECTORS), offset=st.integers(-6, 3))
    def watch(self, selector: Selector, offset: int) -> None:
        start = max(1, self.hub.revision + 1 + offset)
        try:
            self.consumers.append(Consumer(self.hub, selector, start))
        except Compacted as exc:
            assert start - 1 < self.sm.history.compact_revision
            assert exc.compact_revision == self.sm.history.compact_revision

    @precondition(lambda self: self.consumers)
    @rule(which=st.integers(0, 50), count=st.integers(1, 8))
    def take(self, which: int, count: int) -> None:
        self.consumers[which % len(self.consumers)].take(count)

    @invariant()
    def deliveries_are_the_state_diffs(self) -> None:
        for consumer in self.consumers:
            assert consumer.order == sorted(consumer.order), "out of revision order"
            watcher = consumer.watcher
            end = consumer.relisted_at if watcher is None else watcher.next_revision
            for revision in range(consumer.start, end):
                assert revision <= self.hub.revision
                expected = self._diff(revision, consumer.selector)
                got = consumer.seen.get(revision, [])
                assert sorted(got) == expected, f"revision {revision}"

    def _diff(
        self, revision: int, selector: Selector
    ) -> list[tuple[int, str, bytes, bytes | None]]:
        before, after = self.states[revision - 1], self.states[revision]
        out = []
        for key in sorted(set(before) | set(after)):
            if not selector.matches(key) or before.get(key) == after.get(key):
                continue
            if key in after:
                out.append((int(EventKind.PUT), key, after[key], before.get(key)))
            else:
                out.append((int(EventKind.DELETE), key, b"", before[key]))
        return sorted(out)

    def teardown(self) -> None:
        for consumer in self.consumers:
            if consumer.watcher is not None:
                consumer.watcher.close()


TestWatchMachine = WatchMachine.TestCase
TestWatchMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


# ---------------------------------------------------------------------- single rules


def machine_with(writes: int, window: int = 100) -> tuple[KVStateMachine, WatchHub]:
    sm = KVStateMachine(history_revisions=window)
    hub = WatchHub(sm, buffer_bytes=10_000)
    for i in range(writes):
        apply(sm, Put(f"k{i % 3}", b"x%d" % i))
    hub.advance()
    return sm, hub


def test_a_start_older_than_the_history_is_compacted_with_the_oldest_revision() -> None:
    sm, hub = machine_with(30, window=10)
    assert sm.history.compact_revision == 20
    with pytest.raises(Compacted) as caught:
        hub.watch(Selector(prefix=""), 20)
    assert caught.value.compact_revision == 20
    watcher = hub.watch(Selector(prefix=""), 21)  # the oldest start that still works
    revisions = []
    while (item := watcher.poll()) is not None:
        assert type(item) is Changes
        revisions.append(item.revision)
    assert revisions == list(range(21, 31))
    assert watcher.synced and len(hub) == 1


def test_a_transaction_arrives_as_one_message_with_one_revision() -> None:
    sm, hub = machine_with(0)
    watcher = hub.watch(Selector(prefix="t/"))
    apply(sm, Txn((), (TxnPut("t/1", b"a"), TxnPut("t/2", b"b"), TxnPut("u", b"c"))))
    hub.advance()
    item = watcher.poll()
    assert type(item) is Changes and item.revision == 1
    assert [e.kv.key for e in item.events] == ["t/1", "t/2"]
    assert watcher.poll() is None


def test_a_slow_reader_is_cut_off_and_resumes_without_gap_or_repeat() -> None:
    sm = KVStateMachine()
    hub = WatchHub(sm, buffer_bytes=500)
    slow, fast = hub.watch(Selector(prefix="")), hub.watch(Selector(prefix=""))
    got: list[int] = []
    for i in range(20):
        apply(sm, Put("k", b"v" * 50))
        hub.advance()
        item = fast.poll()
        assert type(item) is Changes and item.revision == i + 1  # the others are not held up
        if i == 1:
            first = slow.poll()
            assert type(first) is Changes
            got.append(first.revision)
    ended = slow.poll()
    assert ended == Ended(SLOW, 2)
    assert slow not in hub._by_prefix.get("", set())
    resumed = hub.watch(Selector(prefix=""), ended.next_revision)
    while (item := resumed.poll()) is not None:
        assert type(item) is Changes
        got.append(item.revision)
    assert got == list(range(1, 21))


def test_a_future_start_waits_for_this_node_to_reach_it_and_never_goes_back() -> None:
    sm, hub = machine_with(5)
    watcher = hub.watch(Selector(prefix=""), 9)  # the client saw revision 8 elsewhere
    assert watcher.poll() is None and watcher.progress() is None
    for i in range(5):
        apply(sm, Put("k", b"%d" % i))
        hub.advance()
        if hub.revision < 8:
            assert watcher.progress() is None, "progress behind what the client saw"
    assert watcher.progress() is None  # revision 9 is buffered: deliver it first
    delivered = [watcher.poll(), watcher.poll()]
    assert [getattr(item, "revision", None) for item in delivered] == [9, 10]
    assert watcher.progress() == Progress(10)


def test_an_installed_snapshot_beyond_the_history_ends_live_watchers_compacted() -> None:
    leader, hub_unused = machine_with(40, window=10)
    follower, hub = machine_with(5, window=10)
    watcher = hub.watch(Selector(prefix=""))
    follower.install(follower.parse(leader.snapshot()))
    hub.advance()
    assert watcher.poll() == Ended(COMPACTED, 6, 30)
    hub_unused.close()


async def test_next_waits_for_a_change_and_close_ends_every_watch() -> None:
    sm, hub = machine_with(3)
    watcher = hub.watch(Selector(key="k1"))
    assert await watcher.next(0.01) is None
    assert watcher.progress() == Progress(3)

    async def write_soon() -> None:
        await asyncio.sleep(0.01)
        apply(sm, Put("k1", b"new"))
        hub.advance()

    writer = asyncio.create_task(write_soon())
    item = await watcher.next(5.0)
    await writer
    assert type(item) is Changes and item.revision == 4
    hub.close()
    assert await watcher.next(5.0) == Ended(SHUTDOWN, 5)
    late = hub.watch(Selector(prefix=""))
    assert late.poll() == Ended(SHUTDOWN, 5)
