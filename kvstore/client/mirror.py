"""`Mirror`: a local dict of every key under a prefix, kept in sync with the cluster.

What a microservice wants from its `config/` or `services/`: read it locally, hear about
every change. The pattern is list-then-watch (Kubernetes informers on etcd): one range
read gives every key at ONE revision R, then a watch from R + 1 applies each change after
it, so no change is missed or applied twice. The watch reconnects and resumes by itself
(kvstore.client.watch); if the cluster no longer has the history to resume from (410
`compacted`, e.g. after a long outage), the mirror lists again and reports the
differences as changes, so `on_change` still sees every key reach its new value. The
first listing is reported too (each key as a change from None), so a service can build
its state from `on_change` alone.

    async with Mirror(kv, "config/", on_change=reload) as config:
        flag = config.get("config/flag")           # bytes or None, no network
        await config.wait_for(revision)            # read-your-writes after a put

Mutations happen on the client's event loop under a lock, so another thread may read
(`get`, `snapshot`) while it runs: what `KV.mirror` relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore.client.context import AsyncHeld
from kvstore.client.errors import Compacted
from kvstore.client.watch import WatchEvent, WatchProgress

if TYPE_CHECKING:
    from kvstore.client.async_client import AsyncKV


@dataclass(frozen=True, slots=True)
class Change:
    """`key` went from `old` to `new` at `revision` (None: absent)."""

    key: str
    old: bytes | None
    new: bytes | None
    revision: int


OnChange = Callable[[Change], Awaitable[None] | None]


class Mirror(AsyncHeld):
    """Every key under `prefix` as bytes, with `revision`: the store revision the copy
    reflects (it advances with changes and with the watch's progress reports)."""

    def __init__(self, kv: AsyncKV, prefix: str, *, on_change: OnChange | None = None) -> None:
        self._kv, self.prefix, self._on_change = kv, prefix, on_change
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.revision = 0
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ reading

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        with self._lock:
            return self._data.get(key, default)

    def snapshot(self) -> dict[str, bytes]:
        """A copy of the whole mirror, consistent at one revision."""
        with self._lock:
            return dict(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    async def wait_for(self, revision: int, timeout: float | None = None) -> None:
        """Until the mirror reflects `revision` (e.g. the revision a put returned)."""
        async with asyncio.timeout(timeout):
            async with self._advanced:
                await self._advanced.wait_for(lambda: self.revision >= revision or self._failed)
        if self._error is not None:
            raise self._error

    @property
    def _failed(self) -> bool:
        return self._error is not None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """List, then keep following in the background; returns once the list is in."""
        await self._relist()
        self._task = asyncio.create_task(self._follow(), name=f"mirror-{self.prefix}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ------------------------------------------------------------------ syncing

    async def _relist(self) -> None:
        """Read every key at one revision; report what differs from the copy held."""
        listing = self._kv.range(prefix=self.prefix)
        fresh = {item.key: item.value async for item in listing}
        revision = listing.revision or 0
        with self._lock:
            old, self._data = self._data, fresh
        for key in sorted(old.keys() | fresh.keys()):
            if old.get(key) != fresh.get(key):
                await self._notify(Change(key, old.get(key), fresh.get(key), revision))
        await self._advance(revision)

    async def _follow(self) -> None:
        try:
            while True:
                watch = self._kv.watch(
                    prefix=self.prefix, start_revision=self.revision + 1, progress=True
                )
                try:
                    async for batch in watch.batches():
                        await self._apply(batch)
                except Compacted:
                    await self._relist()  # the changes in between are gone: list again
                finally:
                    await watch.aclose()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the cluster stayed unreachable: wake every waiter
            self._error = exc
            async with self._advanced:
                self._advanced.notify_all()
            raise

    async def _apply(self, batch: list[WatchEvent | WatchProgress]) -> None:
        """One revision's changes (a transaction's together), then the revision moves:
        a reader never sees the copy half-way through a revision."""
        changes: list[Change] = []
        with self._lock:
            for item in batch:
                if type(item) is WatchEvent:
                    old = self._data.get(item.key)
                    if item.type == "put":
                        self._data[item.key] = item.value
                    else:
                        self._data.pop(item.key, None)
                    new = item.value if item.type == "put" else None
                    changes.append(Change(item.key, old, new, item.revision))
        for change in changes:
            await self._notify(change)
        await self._advance(batch[-1].revision)

    async def _advance(self, revision: int) -> None:
        async with self._advanced:
            self.revision = max(self.revision, revision)
            self._advanced.notify_all()

    async def _notify(self, change: Change) -> None:
        if self._on_change is not None:
            result = self._on_change(change)
            if inspect.isawaitable(result):
                await result

    _enter = start
    _exit = close
