"""Leases, locks, elections and fences: the coordination half of the state machine.

KVStateMachine (kvstore.state.machine) hands every lease, lock and election command
here, and asks `refuse_write` before a put or delete: a write with a fence whose token
no longer holds the lock, or naming a lease that does not exist, is refused before it
changes anything. Everything is a pure function of the log, like the rest of the
machine: ids and tokens are log indexes, and no clock is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kvstore.state.commands import (
    CoordinationCommand,
    Delete,
    Fence,
    LeaseGrant,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Proclaim,
    Put,
    Txn,
    TxnPut,
)
from kvstore.state.leases import LeaseTable
from kvstore.state.locks import LockTable
from kvstore.state.types import (
    LOCK_NOT_FOUND,
    ApplyResult,
    FencedResult,
    LeaseGrantResult,
    LeaseNotFoundResult,
    LeaseRevokeResult,
    LockResult,
    TxnResult,
)

DeleteKeys = Callable[[Sequence[str]], tuple[int, int]]
"""Deletes keys in one revision; returns (revision, how many existed)."""


class Coordination:
    """The lease and lock tables, and the rules that tie them to keys."""

    def __init__(self, leases: LeaseTable | None = None, locks: LockTable | None = None) -> None:
        self.leases = leases or LeaseTable()
        self.locks = locks or LockTable()

    def refuse_write(self, command: Put | Delete | Txn) -> ApplyResult | None:
        """Why a write must not apply (a fence that does not hold, an unknown lease),
        or None. Checked before any compare, so a fenced-out writer learns that it lost
        the lock rather than a version it cannot act on."""
        fence: Fence | None = command.fence
        if fence is not None and not self.locks.holds(fence.lock, fence.token):
            return FencedResult(self.locks.holder_token(fence.lock))
        if type(command) is Txn:
            leases = _txn_leases(command)
        elif type(command) is Put and command.lease:
            leases = [command.lease]
        else:
            return None
        for lease in leases:
            if lease not in self.leases:
                return LeaseNotFoundResult(lease)
        return None

    def written_key(self, command: Put | Delete) -> None:
        """A put or delete changed its key: the key now lives by that write, so it
        leaves any lease it had, and a put with a lease attaches it to that lease."""
        self.leases.attach(command.key, command.lease if type(command) is Put else 0)

    def written_txn(self, command: Txn, result: ApplyResult, touched: Iterable[str]) -> None:
        """A transaction changed the keys `touched`: each leaves any lease it had, and
        a put with a lease in the branch that ran attaches its key to that lease."""
        for key in touched:
            self.leases.attach(key, 0)
        if type(result) is TxnResult:
            for op in command.success if result.succeeded else command.failure:
                if type(op) is TxnPut and op.lease:
                    self.leases.attach(op.key, op.lease)

    def execute(
        self, command: CoordinationCommand, index: int, delete_keys: DeleteKeys
    ) -> ApplyResult:
        locks = self.locks
        if type(command) is LeaseGrant:
            self.leases.grant(index, command.ttl)
            return LeaseGrantResult(index, command.ttl)
        if type(command) is LeaseRevoke:
            if command.lease not in self.leases:
                return LeaseNotFoundResult(command.lease)
            locks.drop_lease(command.lease, index)
            revision, deleted = delete_keys(self.leases.revoke(command.lease))
            return LeaseRevokeResult(revision, deleted)
        if type(command) is LockAcquire:
            if command.lease not in self.leases:
                return LeaseNotFoundResult(command.lease)
            token = locks.acquire(command.name, command.lease, command.value, index)
            return LockResult(token, locks.holder_token(command.name))
        if type(command) is LockRelease:
            if not locks.release(command.name, command.token, index):
                return LOCK_NOT_FOUND
            return LockResult(command.token, locks.holder_token(command.name))
        if type(command) is Proclaim:
            if not locks.proclaim(command.name, command.token, command.value, index):
                return FencedResult(locks.holder_token(command.name))
            return LockResult(command.token, command.token)
        raise TypeError(f"not a coordination command: {type(command).__name__}")

    def copy_wire(self) -> tuple[list[Any], list[Any]]:
        """The tables as snapshot records (taken at capture time: they are mutable)."""
        return self.leases.to_wire(), self.locks.to_wire()

    @classmethod
    def from_wire(cls, leases: Any, locks: Any) -> Coordination:
        coordination = cls(LeaseTable.from_wire(leases), LockTable.from_wire(locks))
        for name in coordination.locks.names():
            queue = coordination.locks.queue(name)
            assert queue is not None
            if any(w.lease not in coordination.leases for w in queue.waiters):
                raise ValueError(f"lock {name!r} has a waiter whose lease does not exist")
        return coordination


def _txn_leases(command: Txn) -> list[int]:
    """The leases a transaction's puts name, in either branch (all checked before the
    compares decide, like the fence, so the answer does not depend on which branch
    would have run)."""
    ops = (*command.success, *command.failure)
    return [op.lease for op in ops if type(op) is TxnPut and op.lease]
