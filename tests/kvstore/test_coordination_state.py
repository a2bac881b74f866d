"""Leases, attached keys, lock queues, elections and fences in the state machine.

The hypothesis machine drives a KVStateMachine with random command sequences and
checks it against a small independent model after every step: which keys exist,
which leases exist and what keys they carry, every lock's queue (FIFO by the index
that queued it), and that a fenced write applies exactly when its token is the
holder's. Holder tokens must only grow, per lock, over the whole run. A second
machine restored from a snapshot taken mid-run and fed the same later entries must
end in the same state (determinism across snapshot and log replay).
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from consensus.types import Entry, EntryType
from kvstore.state.commands import (
    Command,
    CommandDecodeError,
    Compare,
    Delete,
    Fence,
    LeaseGrant,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Op,
    Proclaim,
    Put,
    SessionRef,
    Target,
    Txn,
    TxnDeleteRange,
    TxnPut,
    decode_command,
    encode_command,
)
from kvstore.state.keyrange import KeyRange
from kvstore.state.machine import KVStateMachine
from kvstore.state.types import (
    DeleteResult,
    FencedResult,
    LeaseGrantResult,
    LeaseNotFoundResult,
    LeaseRevokeResult,
    LockNotFoundResult,
    LockResult,
    NotFoundResult,
    PutResult,
    TxnResult,
)

KEYS = ("a", "b", "c", "services/x", "services/y")
LOCKS = ("L", "jobs/nightly", "elect")


class Applier:
    """A machine plus the entry index, so tests apply commands, not entries."""

    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.index = 0
        self.entries: list[Entry] = []

    def apply(self, command: Command) -> object:
        self.index += 1
        entry = Entry(1, self.index, encode_command(command), EntryType.NORMAL)
        self.entries.append(entry)
        return self.sm.apply(entry)


# ------------------------------------------------------------------ examples


def test_lease_keys_go_in_one_entry_and_revision() -> None:
    a = Applier()
    lease = a.apply(LeaseGrant(10))
    assert lease == LeaseGrantResult(1, 10)
    a.apply(Put("services/x", b"up", lease=1))
    a.apply(Put("services/y", b"up", lease=1))
    a.apply(Put("plain", b"v"))
    revision = a.sm.revision
    assert a.apply(LeaseRevoke(1)) == LeaseRevokeResult(revision + 1, 2)
    assert a.sm.get("services/x") is None and a.sm.get("services/y") is None
    assert a.sm.get("plain") is not None
    assert a.apply(LeaseRevoke(1)) == LeaseNotFoundResult(1)


def test_put_without_lease_detaches_and_unknown_lease_is_refused() -> None:
    a = Applier()
    a.apply(LeaseGrant(10))
    a.apply(Put("k", b"1", lease=1))
    a.apply(Put("k", b"2"))  # the newest write decides: no lease any more
    a.apply(LeaseRevoke(1))
    assert a.sm.get("k") is not None
    assert a.apply(Put("k", b"3", lease=99)) == LeaseNotFoundResult(99)
    kv = a.sm.get("k")
    assert kv is not None and kv.value == b"2"


def test_lock_queue_is_fifo_and_ends_with_the_lease() -> None:
    a = Applier()
    a.apply(LeaseGrant(10))  # lease 1
    a.apply(LeaseGrant(10))  # lease 2
    first = a.apply(LockAcquire("L", 1))
    second = a.apply(LockAcquire("L", 2))
    assert first == LockResult(3, 3) and second == LockResult(4, 3)
    assert a.apply(LockAcquire("L", 2)) == LockResult(4, 3)  # a retry keeps its place
    assert a.apply(Put("x", b"w", fence=Fence("L", 4))) == FencedResult(3)
    assert type(a.apply(Put("x", b"w", fence=Fence("L", 3)))) is PutResult
    a.apply(LeaseRevoke(1))  # the holder's lease ends: the next waiter holds
    assert a.sm.coordination.locks.holder_token("L") == 4
    assert a.apply(Put("x", b"stale", fence=Fence("L", 3))) == FencedResult(4)
    assert a.apply(LockRelease("L", 4)) == LockResult(4, 0)
    assert a.apply(LockRelease("L", 4)) == LockNotFoundResult()
    assert a.apply(Delete("x", fence=Fence("L", 4))) == FencedResult(0)


def test_fenced_transaction_and_transaction_writes_leave_the_lease() -> None:
    a = Applier()
    a.apply(LeaseGrant(10))  # lease 1
    a.apply(LockAcquire("L", 1))  # token 2
    a.apply(Put("k", b"1", lease=1))
    a.apply(Put("gone", b"1", lease=1))
    stale = Txn((), (TxnPut("x", b"w"),), fence=Fence("L", 1))
    assert a.apply(stale) == FencedResult(2)
    fresh = Txn(
        (), (TxnPut("k", b"2"), TxnDeleteRange(KeyRange("gone", "gone\0"))), fence=Fence("L", 2)
    )
    result = a.apply(fresh)
    assert type(result) is TxnResult and result.succeeded
    assert a.sm.coordination.leases.lease_of("k") == 0  # written since: lives by that write
    a.apply(LeaseRevoke(1))
    kv = a.sm.get("k")
    assert kv is not None and kv.value == b"2"


def test_transaction_puts_attach_to_a_lease_only_in_the_branch_that_ran() -> None:
    a = Applier()
    a.apply(LeaseGrant(10))  # lease 1
    a.apply(Put("old", b"1", lease=1))
    missing = Compare("flag", Target.EXISTS, Op.EQ, True)
    txn = Txn((missing,), (TxnPut("yes", b"1", lease=1),), (TxnPut("no", b"1", lease=1),))
    result = a.apply(txn)
    assert type(result) is TxnResult and not result.succeeded
    leases = a.sm.coordination.leases
    assert leases.lease_of("no") == 1 and leases.lease_of("yes") == 0
    # A lease that does not exist, in either branch: refused whole, nothing written.
    dead = Txn((), (TxnPut("x", b"1", lease=1), TxnPut("old", b"2")), (TxnPut("y", b"1", lease=9),))
    assert a.apply(dead) == LeaseNotFoundResult(9)
    assert a.sm.get("x") is None and a.sm.get("old").value == b"1"  # type: ignore[union-attr]
    revision = a.sm.revision
    assert a.apply(LeaseRevoke(1)) == LeaseRevokeResult(revision + 1, 2)
    assert a.sm.get("old") is None and a.sm.get("no") is None


def test_proclaim_only_by_the_leader() -> None:
    a = Applier()
    a.apply(LeaseGrant(10))
    a.apply(LeaseGrant(10))
    a.apply(LockAcquire("e", 1, b"node-1"))
    a.apply(LockAcquire("e", 2, b"node-2"))
    assert a.apply(Proclaim("e", 4, b"me!")) == FencedResult(3)
    assert a.apply(Proclaim("e", 3, b"node-1 v2")) == LockResult(3, 3)
    queue = a.sm.coordination.locks.queue("e")
    assert queue is not None and queue.holder is not None
    assert queue.holder.value == b"node-1 v2" and queue.changed == 6


def test_session_retry_of_acquire_returns_the_stored_token() -> None:
    a = Applier()
    a.apply(LeaseGrant(10))
    ref = SessionRef("c1", 1, 1)
    assert a.apply(LockAcquire("L", 1, session=ref)) == LockResult(2, 2)
    a.apply(LockRelease("L", 2))
    assert a.apply(LockAcquire("L", 1, session=ref)) == LockResult(2, 2)  # not queued again
    assert a.sm.coordination.locks.queue("L") is None


def test_commands_round_trip_and_plain_bytes_are_unchanged() -> None:
    session = SessionRef("c", 3, 2)
    commands: list[Command] = [
        Put("k", b"v", 1, session, 4, lease=7, fence=Fence("L", 9)),
        Put("k", b"v", lease=7),
        Delete("k", 0, session, fence=Fence("L", 9)),
        Txn((), (TxnPut("k", b"v"),), (), session, fence=Fence("L", 9)),
        Txn((), (TxnPut("k", b"v", lease=7),), (TxnPut("j", b"w"),), session),
        LeaseGrant(30, session),
        LeaseRevoke(5),
        LockAcquire("L", 5, b"val", session),
        LockRelease("L", 9),
        Proclaim("L", 9, b"x", session),
    ]
    for command in commands:
        assert decode_command(encode_command(command)) == command
    # A put without lease or fence keeps the original tag and bytes, in a txn too.
    assert encode_command(Put("k", b"v"))[1] == 1
    plain = Txn((), (TxnPut("k", b"v"),))
    assert encode_command(plain) == encode_command(Txn((), (TxnPut("k", b"v", lease=0),)))
    assert len(encode_command(Txn((), (TxnPut("k", b"v", lease=7),)))) > len(encode_command(plain))
    with pytest.raises(CommandDecodeError):
        decode_command(encode_command(LockRelease("L", 9))[:-1] + b"\xc0")


@pytest.mark.parametrize(
    "build",
    [
        lambda: LeaseGrant(0),
        lambda: LeaseRevoke(0),
        lambda: LockAcquire("", 1),
        lambda: LockAcquire("L", 0),
        lambda: Fence("L", 0),
        lambda: Put("k", b"v", lease=-1),
        lambda: TxnPut("k", b"v", lease=-1),
        lambda: TxnPut("k", b"v", lease=True),
        lambda: Proclaim("L", 1, "text"),  # type: ignore[arg-type]
    ],
)
def test_bad_commands_fail_when_built(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


# ------------------------------------------------------------------ the random machine


class CoordinationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.a = Applier()
        self.data: dict[str, bytes] = {}
        self.key_lease: dict[str, int] = {}
        self.leases: set[int] = set()
        self.queues: dict[str, list[tuple[int, int]]] = {}  # name -> [(token, lease)]
        self.holders_seen: dict[str, int] = {}
        self.snapshot: tuple[int, bytes] | None = None
        self.values = 0

    # -- helpers
    def holder(self, name: str) -> int:
        queue = self.queues.get(name)
        return queue[0][0] if queue else 0

    def end_lease(self, lease: int) -> None:
        self.leases.discard(lease)
        for key in [k for k, owner in self.key_lease.items() if owner == lease]:
            del self.key_lease[key]
            self.data.pop(key, None)
        for name in list(self.queues):
            self.queues[name] = [w for w in self.queues[name] if w[1] != lease]
            if not self.queues[name]:
                del self.queues[name]

    def any_lease(self, data: st.DataObject) -> int:
        known = sorted(self.leases)
        return data.draw(st.sampled_from(known) if known else st.integers(1, 50))

    def fence(self, data: st.DataObject) -> Fence | None:
        if not data.draw(st.booleans()):
            return None
        name = data.draw(st.sampled_from(LOCKS))
        tokens = [t for t, _ in self.queues.get(name, [])]
        token = data.draw(st.sampled_from(tokens) if tokens else st.integers(1, self.a.index + 2))
        return Fence(name, token)

    # -- rules
    @rule(ttl=st.integers(1, 60))
    def grant(self, ttl: int) -> None:
        result = self.a.apply(LeaseGrant(ttl))
        assert result == LeaseGrantResult(self.a.index, ttl)
        self.leases.add(self.a.index)

    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        lease = self.any_lease(data)
        result = self.a.apply(LeaseRevoke(lease))
        if lease in self.leases:
            assert type(result) is LeaseRevokeResult
            self.end_lease(lease)
        else:
            assert result == LeaseNotFoundResult(lease)

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def put(self, data: st.DataObject, key: str) -> None:
        lease = self.any_lease(data) if data.draw(st.booleans()) else 0
        fence = self.fence(data)
        self.values += 1
        value = b"v%d" % self.values
        result = self.a.apply(Put(key, value, lease=lease, fence=fence))
        if fence is not None and self.holder(fence.lock) != fence.token:
            assert result == FencedResult(self.holder(fence.lock))
            return
        if lease and lease not in self.leases:
            assert result == LeaseNotFoundResult(lease)
            return
        assert type(result) is PutResult
        self.data[key] = value
        self.key_lease.pop(key, None)
        if lease:
            self.key_lease[key] = lease

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def delete(self, data: st.DataObject, key: str) -> None:
        fence = self.fence(data)
        result = self.a.apply(Delete(key, fence=fence))
        if fence is not None and self.holder(fence.lock) != fence.token:
            assert result == FencedResult(self.holder(fence.lock))
        elif key not in self.data:
            assert type(result) is NotFoundResult
        else:
            assert type(result) is DeleteResult
            del self.data[key]
            self.key_lease.pop(key, None)

    @rule(
        data=st.data(),
        flag=st.sampled_from(KEYS),
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
    )
    def txn(self, data: st.DataObject, flag: str, keys: list[str]) -> None:
        """Puts with leases in both branches: the branch that ran decides the leases."""
        branches: list[list[tuple[str, bytes, int]]] = [[], []]
        for key in keys:
            self.values += 1
            lease = self.any_lease(data) if data.draw(st.booleans()) else 0
            branches[data.draw(st.integers(0, 1))].append((key, b"t%d" % self.values, lease))
        success, failure = (tuple(TxnPut(*op) for op in b) for b in branches)
        cmp = Compare(flag, Target.EXISTS, Op.EQ, True)
        result = self.a.apply(Txn((cmp,), success, failure))
        if any(lease and lease not in self.leases for _, _, lease in (*branches[0], *branches[1])):
            assert type(result) is LeaseNotFoundResult
            return
        assert type(result) is TxnResult and result.succeeded == (flag in self.data)
        for key, value, lease in branches[0 if result.succeeded else 1]:
            self.data[key] = value
            self.key_lease.pop(key, None)
            if lease:
                self.key_lease[key] = lease

    @rule(data=st.data(), name=st.sampled_from(LOCKS))
    def acquire(self, data: st.DataObject, name: str) -> None:
        lease = self.any_lease(data)
        result = self.a.apply(LockAcquire(name, lease, b"c%d" % lease))
        if lease not in self.leases:
            assert result == LeaseNotFoundResult(lease)
            return
        queue = self.queues.setdefault(name, [])
        mine = [t for t, owner in queue if owner == lease]
        token = mine[0] if mine else self.a.index
        if not mine:
            queue.append((token, lease))
        assert result == LockResult(token, self.holder(name))

    @rule(data=st.data(), name=st.sampled_from(LOCKS))
    def release(self, data: st.DataObject, name: str) -> None:
        tokens = [t for t, _ in self.queues.get(name, [])]
        token = data.draw(st.sampled_from(tokens) if tokens else st.integers(1, self.a.index + 1))
        result = self.a.apply(LockRelease(name, token))
        if token not in tokens:
            assert type(result) is LockNotFoundResult
            return
        self.queues[name] = [w for w in self.queues[name] if w[0] != token]
        if not self.queues[name]:
            del self.queues[name]
        assert result == LockResult(token, self.holder(name))

    @rule(data=st.data(), name=st.sampled_from(LOCKS))
    def proclaim(self, data: st.DataObject, name: str) -> None:
        token = data.draw(st.integers(1, self.a.index + 1))
        if data.draw(st.booleans()) and self.holder(name):
            token = self.holder(name)
        result = self.a.apply(Proclaim(name, token, b"p"))
        if self.holder(name) == token:
            assert result == LockResult(token, token)
        else:
            assert result == FencedResult(self.holder(name))

    @precondition(lambda self: self.snapshot is None and self.a.index > 3)
    @rule()
    def take_snapshot(self) -> None:
        self.snapshot = (self.a.index, self.a.sm.snapshot())

    # -- invariants
    @invariant()
    def matches_model(self) -> None:
        sm = self.a.sm
        assert {k: sm.get(k).value for k in KEYS if sm.get(k) is not None} == self.data  # type: ignore[union-attr]
        leases = sm.coordination.leases
        assert set(leases.ttls()) == self.leases
        assert {k: leases.lease_of(k) for k in KEYS if leases.lease_of(k)} == self.key_lease
        locks = sm.coordination.locks
        assert locks.names() == sorted(self.queues)
        for name, model in self.queues.items():
            queue = locks.queue(name)
            assert queue is not None
            assert [(w.token, w.lease) for w in queue.waiters] == model
            tokens = [t for t, _ in model]
            assert tokens == sorted(set(tokens)), "tokens grow along the queue"

    @invariant()
    def holder_tokens_only_grow(self) -> None:
        for name in LOCKS:
            holder = self.holder(name)
            if holder:
                assert holder >= self.holders_seen.get(name, 0)
                self.holders_seen[name] = holder

    def teardown(self) -> None:
        if self.snapshot is None:
            return
        index, data = self.snapshot
        replica = KVStateMachine()
        replica.restore(data)
        for entry in self.a.entries[index:]:
            replica.apply(entry)
        assert replica.snapshot() == self.a.sm.snapshot()


CoordinationMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestCoordinationMachine = CoordinationMachine.TestCase
