"""Lock queues in the replicated state: locks, elections and the fence check.

A lock (or an election: the same thing, whose holder publishes a value) is a queue of
waiters in the order their `LockAcquire` entries were applied. The head holds it. A
waiter's token is the index of the entry that queued it, so tokens grow along every
queue, and each holder's token is larger than every earlier holder's: the property
a fencing token needs.

The fence check (`holds`) runs at apply time, in log order. A holder that paused past
its lease finds, when its write reaches the log, that the revoke ending its lease is
already applied before it: the write is refused, whatever the clocks said.

Each waiter belongs to a lease; when the lease ends, all its waiters leave their
queues in the same entry (etcd's lock keys are attached to the lease the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Waiter:
    token: int
    lease: int
    value: bytes


@dataclass(slots=True)
class LockQueue:
    waiters: list[Waiter]
    changed: int
    """Index of the entry that last changed the head (holder or its value): what an
    election observer waits to move."""

    @property
    def holder(self) -> Waiter | None:
        return self.waiters[0] if self.waiters else None


class LockTable:
    """Queues by name; empty queues are dropped (a free lock takes no space)."""

    def __init__(self) -> None:
        self._queues: dict[str, LockQueue] = {}
        self._by_lease: dict[int, dict[str, int]] = {}
        """lease -> {lock name: token}: one place per lease and lock at most."""

    def __len__(self) -> int:
        return len(self._queues)

    def queue(self, name: str) -> LockQueue | None:
        return self._queues.get(name)

    def names(self) -> list[str]:
        return sorted(self._queues)

    def holder_token(self, name: str) -> int:
        queue = self._queues.get(name)
        return 0 if queue is None else queue.waiters[0].token

    def holds(self, name: str, token: int) -> bool:
        """The fence check: does `token` hold `name` at this point of the log?"""
        return self.holder_token(name) == token

    def acquire(self, name: str, lease: int, value: bytes, index: int) -> int:
        """Queue `lease` for `name` at log index `index`; returns its token. A lease
        already queued keeps its place and token (a retry must not queue twice)."""
        places = self._by_lease.setdefault(lease, {})
        token = places.get(name)
        if token is not None:
            return token
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = LockQueue([], index)
        queue.waiters.append(Waiter(index, lease, value))
        if len(queue.waiters) == 1:
            queue.changed = index
        places[name] = index
        return index

    def release(self, name: str, token: int, index: int) -> bool:
        """Take `token` out of the queue of `name`; False when it is not there."""
        queue = self._queues.get(name)
        if queue is None:
            return False
        position = next((i for i, w in enumerate(queue.waiters) if w.token == token), None)
        if position is None:
            return False
        waiter = queue.waiters.pop(position)
        places = self._by_lease[waiter.lease]
        del places[name]
        if not places:
            del self._by_lease[waiter.lease]
        if not queue.waiters:
            del self._queues[name]
        elif position == 0:
            queue.changed = index
        return True

    def proclaim(self, name: str, token: int, value: bytes, index: int) -> bool:
        """The holder publishes `value`; False (nothing changes) for anyone else."""
        queue = self._queues.get(name)
        if queue is None or queue.waiters[0].token != token:
            return False
        head = queue.waiters[0]
        queue.waiters[0] = Waiter(head.token, head.lease, value)
        queue.changed = index
        return True

    def drop_lease(self, lease: int, index: int) -> None:
        """The lease ended: its waiters leave every queue (in name order, for determinism)."""
        for name, token in sorted(self._by_lease.get(lease, {}).items()):
            self.release(name, token, index)

    def to_wire(self) -> list[Any]:
        return [
            (name, q.changed, [(w.token, w.lease, w.value) for w in q.waiters])
            for name, q in sorted(self._queues.items())
        ]

    @classmethod
    def from_wire(cls, records: Any) -> LockTable:
        table = cls()
        for name, changed, waiters in records:
            if type(name) is not str or type(changed) is not int or not waiters:
                raise ValueError(f"bad lock record {name!r}")
            if name in table._queues:
                raise ValueError(f"duplicate lock {name!r}")
            queue = table._queues[name] = LockQueue([], changed)
            for token, lease, value in waiters:
                if type(token) is not int or type(lease) is not int or type(value) is not bytes:
                    raise ValueError(f"bad waiter in lock {name!r}")
                places = table._by_lease.setdefault(lease, {})
                if name in places:
                    raise ValueError(f"lease {lease} queued twice for {name!r}")
                places[name] = token
                queue.waiters.append(Waiter(token, lease, value))
        return table
