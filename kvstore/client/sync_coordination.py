"""Blocking twins of `Lease`, `Lock` and `Election` for the blocking `KV` client.

Each wraps the asyncio object and runs its coroutines on the `KV`'s private loop
thread, where the background keep-alive also runs; so a blocking program keeps its
lease alive while it works, and the logic exists once (kvstore.client.leases/locks).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from kvstore.client.context import Held
from kvstore.client.fence import Fence
from kvstore.client.leases import Lease
from kvstore.client.locks import Election, Leader, Lock

R = TypeVar("R")
Runner = Callable[[Coroutine[Any, Any, R]], R]


class SyncLease(Held):
    """`with kv.lease(ttl=10) as lease:` kept alive on the client's loop thread."""

    def __init__(self, run: Runner[Any], lease: Lease) -> None:
        self._run, self._lease = run, lease

    @property
    def id(self) -> int:
        return self._lease.id

    @property
    def ttl(self) -> int:
        return self._lease.ttl

    @property
    def is_lost(self) -> bool:
        return self._lease.lost.is_set()

    def start(self) -> None:
        self._run(self._lease.start())

    def stop(self) -> None:
        self._run(self._lease.close())


class SyncLock(Held):
    """`with kv.lock("jobs/nightly", ttl=10) as lock:`; `lock.put` is fenced."""

    def __init__(self, run: Runner[Any], lock: Lock) -> None:
        self._run, self._lock = run, lock

    @property
    def token(self) -> int:
        return self._lock.token

    @property
    def fence(self) -> Fence:
        return self._lock.fence

    @property
    def is_lost(self) -> bool:
        return self._lock.lost.is_set()

    def start(self) -> None:
        self._run(self._lock.acquire())

    def stop(self) -> None:
        self._run(self._lock.release())

    def put(self, key: str, value: bytes | str, **options: Any) -> Any:
        return self._run(self._lock.put(key, value, **options))

    def delete(self, key: str, **options: Any) -> int:
        result: int = self._run(self._lock.delete(key, **options))
        return result


class SyncElection:
    """`kv.election(name)`: campaign, proclaim, resign, leader, observe (blocking)."""

    def __init__(self, run: Runner[Any], election: Election) -> None:
        self._run, self._election = run, election

    @property
    def token(self) -> int:
        return self._election.token

    @property
    def fence(self) -> Fence:
        return self._election.fence

    def campaign(self, value: bytes | str, ttl: int = 10, *, timeout: float | None = None) -> int:
        token: int = self._run(self._election.campaign(value, ttl, timeout=timeout))
        return token

    def proclaim(self, value: bytes | str) -> None:
        self._run(self._election.proclaim(value))

    def resign(self) -> None:
        self._run(self._election.resign())

    def leader(self) -> Leader | None:
        found: Leader | None = self._run(self._election.leader())
        return found

    def observe(self) -> Iterator[Leader | None]:
        """The leader now, then at every change (blocks between changes)."""
        changes = self._election.observe()
        while True:
            yield self._run(anext(changes))
