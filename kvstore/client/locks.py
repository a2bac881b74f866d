"""Locks and elections for the Python client.

    async with kv.lock("jobs/nightly", ttl=10) as lock:
        await lock.put("jobs/nightly/last-run", b"...")   # fenced with lock.token

    election = kv.election("workers")
    await election.campaign(b"worker-7", ttl=10)          # returns once leading
    async for leader in election.observe(): ...

Both queue a lease at the cluster (first come, first served) and wait for their turn
in the same request (`POST ...?lease=ID&wait=S`: one request acquires a free lock, or
one whose turn comes within the wait), then, while still queued, with short polls;
every wait stays under the client's hedge delay, so no attempt is hedged on another
node (a hedged POST would be harmless anyway: same seq, and a queued lease keeps its
place). The token a holder gets is its fencing token: writes carrying it
(`lock.put`, `lock.delete`, or `fence=lock.fence` on any write) are refused with
`Fenced` once it no longer holds, even if the holder does not know yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kvstore.client.context import AsyncHeld
from kvstore.client.errors import InvalidRequest, KVError, LockTimeout
from kvstore.client.fence import Fence
from kvstore.client.leases import KVCalls, Lease

POLL_S = 0.8
"""Longest server-side wait of one poll: below the client's default hedge delay (1 s)."""


@dataclass(frozen=True, slots=True)
class Leader:
    """The head of an election's queue: its token, lease and published value."""

    token: int
    lease: int
    value: bytes
    changed: int
    """Log index of the last change of leader or value (what `observe` waits past)."""


def _path(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"a lock or election name must be a non-empty string: {name!r}")
    return f"/v1/{kind}/{quote(name, safe='')}"


class _Queue:
    """Queuing a lease under a name and waiting for the head: what both share."""

    kind = "locks"

    def __init__(self, kv: KVCalls, name: str) -> None:
        self._kv = kv
        self.name = name
        self._path = _path(self.kind, name)
        self.token = 0
        self._lease: Lease | None = None
        self._own_lease = False

    @property
    def fence(self) -> Fence:
        """The fence for writes made while holding (pass it as `fence=` to any write)."""
        if not self.token:
            raise KVError(f"{self.name!r} is not held")
        return Fence(self.name, self.token)

    @property
    def lost(self) -> asyncio.Event:
        """Set when the lease behind the hold is lost: stop writing outside the store,
        and expect fenced writes to be refused."""
        if self._lease is None:
            raise KVError(f"{self.name!r} was never acquired")
        return self._lease.lost

    async def _enqueue(
        self, ttl: int, lease: Lease | None, value: bytes, timeout: float | None
    ) -> int:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if lease is None:
            lease = Lease(self._kv, ttl)
            await lease.start()
            self._own_lease = True
        self._lease = lease
        token = 0
        try:
            wait = self._wait(deadline)
            path = f"{self._path}?lease={lease.id}&wait={wait:.3f}"
            body = (await self._kv.request("POST", path, value or None, write=True)).json()
            token = int(body["token"])
            held = self._settled(body)
            while not held:
                if lease.lost.is_set():
                    raise KVError(f"the lease behind {self.name!r} was lost while waiting")
                held = await self._poll_held(token, deadline)
        except BaseException:
            await self._leave_queue(token)
            raise
        self.token = token
        return token

    def _wait(self, deadline: float | None) -> float:
        """The server-side wait of the next request: at most POLL_S, and never past the
        deadline (`LockTimeout` once it has passed)."""
        remaining = POLL_S if deadline is None else deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise LockTimeout(f"{self.name!r} was not obtained in time", code="lock_timeout")
        return min(POLL_S, remaining)

    def _settled(self, body: dict[str, Any]) -> bool:
        """True when the answer says the token holds; KVError when it left the queue
        (its lease ended)."""
        if body.get("held"):
            return True
        if not body.get("queued"):
            raise KVError(f"the waiter for {self.name!r} left the queue (its lease ended?)")
        return False

    async def _poll_held(self, token: int, deadline: float | None) -> bool:
        """One more wait of at most POLL_S for a token already queued; True when it
        holds. Raises LockTimeout at the deadline and KVError when it left the queue."""
        path = f"{self._path}?token={token}&wait={self._wait(deadline):.3f}"
        return self._settled((await self._kv.request("GET", path)).json())

    async def _leave_queue(self, queued: int = 0) -> None:
        """Release or withdraw (best effort), then end the lease if it was ours."""
        token = queued or self.token
        self.token = 0
        if token:
            with contextlib.suppress(KVError):
                await self._kv.request("DELETE", f"{self._path}?token={token}", write=True)
        lease, self._lease = self._lease, None
        if lease is not None and self._own_lease:
            await lease.close()

    async def describe(self) -> dict[str, Any]:
        """The queue now (a linearizable read): holder (token, lease, value), waiters."""
        return (await self._kv.request("GET", self._path)).json()


class Lock(_Queue, AsyncHeld):
    """A lock held between `acquire` and `release` (or inside `async with`)."""

    def __init__(
        self, kv: KVCalls, name: str, ttl: int = 10, *, timeout: float | None = None
    ) -> None:
        super().__init__(kv, name)
        self.ttl = ttl
        self.timeout = timeout

    async def acquire(self, *, lease: Lease | None = None) -> int:
        """Wait for the lock (first come, first served; `LockTimeout` after `timeout`)
        and return its fencing token. Without `lease`, one of `ttl` s is made for it."""
        return await self._enqueue(self.ttl, lease, b"", self.timeout)

    async def release(self) -> None:
        await self._leave_queue()

    async def put(self, key: str, value: bytes | str, **options: Any) -> Any:
        """A write applied only while this lock is held (else `Fenced`)."""
        return await self._kv.put(key, value, fence=self.fence, **options)

    async def delete(self, key: str, **options: Any) -> int:
        return await self._kv.delete(key, fence=self.fence, **options)

    _enter = acquire
    _exit = release


class Election(_Queue):
    """Leader election: the head of the queue leads and publishes a value."""

    kind = "elections"

    async def campaign(
        self,
        value: bytes | str,
        ttl: int = 10,
        *,
        lease: Lease | None = None,
        timeout: float | None = None,
    ) -> int:
        """Wait until this candidate leads (first come, first served); returns its token."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        return await self._enqueue(ttl, lease, data, timeout)

    async def proclaim(self, value: bytes | str) -> None:
        """Publish a new value as the leader (`Fenced` when no longer leading)."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        await self._kv.request("PUT", f"{self._path}?token={self.fence.token}", data, write=True)

    async def resign(self) -> None:
        """Stop leading (or campaigning); the next candidate leads."""
        await self._leave_queue()

    async def leader(self) -> Leader | None:
        return _leader(await self.describe())

    async def observe(self) -> AsyncIterator[Leader | None]:
        """The current leader, then every change of leader or value, for ever."""
        body = await self.describe()
        while True:
            yield _leader(body)
            changed = body["changed"]
            while body["changed"] == changed:
                path = f"{self._path}?after={changed}&wait={POLL_S}"
                body = (await self._kv.request("GET", path)).json()


def _leader(body: dict[str, Any]) -> Leader | None:
    holder = body.get("holder")
    if not holder:
        return None
    return Leader(holder["token"], holder["lease"], holder["value"].encode(), body["changed"])
