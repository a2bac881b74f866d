"""Leases for the Python client: `async with kv.lease(ttl=10) as lease:`.

A lease lives while it is kept alive; the keys attached to it (`kv.put(k, v,
lease=lease.id)`) and the locks it holds go when it ends. `Lease` keeps it alive in
a background task, a keep-alive every third of the TTL, and reports its loss: the
`lost` event is set, and `on_lost` is called, when the cluster says the lease is
gone, or when no keep-alive was confirmed for a whole TTL (the cluster may then have
ended it, so a careful holder must assume it did).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kvstore.client.context import AsyncHeld
from kvstore.client.errors import InvalidRequest, KVError, LeaseNotFound
from kvstore.client.fence import Fence
from kvstore.client.transport import Answer

log = logging.getLogger(__name__)

LEASES = "/v1/leases"
LostCallback = Callable[[], Awaitable[None] | None]


class KVCalls(Protocol):
    """What leases, locks and elections need of `AsyncKV` (not imported: it imports us)."""

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        write: bool = False,
        timeout: float | None = None,
    ) -> Answer: ...

    async def put(
        self,
        key: str,
        value: bytes | bytearray | memoryview | str,
        prev_version: int | None = None,
        *,
        lease: int | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> Any: ...

    async def delete(
        self,
        key: str,
        prev_version: int | None = None,
        *,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    id: int
    ttl: int
    remaining: float
    """Seconds left on the leader's clock."""
    keys: tuple[str, ...] = ()


def _ttl(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise InvalidRequest(f"a lease TTL is a whole number of seconds >= 1: {ttl!r}")
    return ttl


async def grant(kv: KVCalls, ttl: int, *, timeout: float | None = None) -> int:
    """A new lease of `ttl` seconds; returns its id."""
    answer = await kv.request("POST", f"{LEASES}?ttl={_ttl(ttl)}", write=True, timeout=timeout)
    return int(answer.json()["id"])


async def keep_alive(kv: KVCalls, lease: int, *, timeout: float | None = None) -> int:
    """Renew `lease` for its full TTL (no log entry); returns the TTL. Raises
    `LeaseNotFound` when it already ended."""
    answer = await kv.request("POST", f"{LEASES}/{int(lease)}/keepalive", timeout=timeout)
    return int(answer.json()["ttl"])


async def revoke(kv: KVCalls, lease: int, *, timeout: float | None = None) -> int:
    """End `lease` now: its keys are deleted in one revision; returns how many."""
    answer = await kv.request("DELETE", f"{LEASES}/{int(lease)}", write=True, timeout=timeout)
    return int(answer.json()["deleted"])


async def info(kv: KVCalls, lease: int, *, timeout: float | None = None) -> LeaseInfo:
    """TTL, time left and attached keys of `lease` (`LeaseNotFound` when it ended)."""
    body = (await kv.request("GET", f"{LEASES}/{int(lease)}", timeout=timeout)).json()
    return LeaseInfo(body["id"], body["ttl"], float(body["remaining"]), tuple(body["keys"]))


async def list_leases(kv: KVCalls, *, timeout: float | None = None) -> list[LeaseInfo]:
    body = (await kv.request("GET", LEASES, timeout=timeout)).json()
    return [LeaseInfo(r["id"], r["ttl"], float(r["remaining"])) for r in body["leases"]]


class Lease(AsyncHeld):
    """A lease granted on entry and kept alive until exit (then revoked)."""

    def __init__(self, kv: KVCalls, ttl: int, *, on_lost: LostCallback | None = None) -> None:
        self._kv = kv
        self.ttl = _ttl(ttl)
        self.id = 0
        self.lost = asyncio.Event()
        """Set when the lease ended or could not be confirmed alive for a whole TTL."""
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Grant the lease and start keeping it alive."""
        self.id = await grant(self._kv, self.ttl)
        self._task = asyncio.create_task(self._keep_alive(), name=f"lease-{self.id}")

    async def close(self, *, revoke_it: bool = True) -> None:
        """Stop keeping the lease alive and (by default) revoke it, so its keys and
        locks go now rather than a TTL later."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if revoke_it and self.id and not self.lost.is_set():
            with contextlib.suppress(KVError):
                await revoke(self._kv, self.id, timeout=max(1.0, self.ttl / 2))

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        confirmed = loop.time()  # the grant itself was the first confirmation
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(max(0.05, confirmed + interval - loop.time()))
            sent = loop.time()
            remaining = confirmed + self.ttl - sent
            if remaining <= 0:
                return await self._lose("no keep-alive was confirmed for a whole TTL")
            try:
                await keep_alive(self._kv, self.id, timeout=remaining)
            except LeaseNotFound:
                return await self._lose("the cluster ended the lease")
            except KVError as exc:
                log.info("keep-alive of lease %d failed (%s); retrying", self.id, exc)
                await asyncio.sleep(min(0.2, max(0.0, remaining / 4)))
                continue
            # The leader renewed it for a full TTL at some moment after `sent`.
            confirmed = sent

    async def _lose(self, why: str) -> None:
        log.warning("lease %d is lost: %s", self.id, why)
        self.lost.set()
        if self._on_lost is not None:
            outcome = self._on_lost()
            if inspect.isawaitable(outcome):
                await outcome

    _enter = start
    _exit = close
