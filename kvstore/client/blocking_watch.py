"""`KV.watch` and `KV.mirror`: the asyncio watch and mirror for threaded code.

Each `next()` runs one step of the async watch (kvstore.client.watch) on the `KV`'s
private loop and waits for it, so the reconnect and resume logic exists once. A watch
belongs to the thread that iterates it; other threads may keep using the same `KV`.
A mirror (kvstore.client.mirror) runs on that loop by itself; any thread reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

from kvstore.client.context import Closing
from kvstore.client.mirror import Mirror
from kvstore.client.watch import Watch, WatchEvent, WatchProgress

R = TypeVar("R")


class BlockingWatch(Closing):
    """Iterate for WatchEvent (and WatchProgress when asked); `close()` (or `with`)
    ends it. `next_revision` is where it stands, as for the async watch."""

    def __init__(self, watch: Watch, loop: asyncio.AbstractEventLoop) -> None:
        self._watch, self._loop = watch, loop
        self._closed = False

    @property
    def next_revision(self) -> int | None:
        return self._watch.next_revision

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchEvent | WatchProgress:
        if self._closed:
            raise StopIteration
        try:
            return self._run(self._watch.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the step running
            raise

    def close(self) -> None:
        """Stop the watch and close its connection (idempotent)."""
        if not self._closed:
            self._closed = True
            if not self._loop.is_closed():
                self._run(self._watch.aclose())


class BlockingMirror(Closing):
    """`Mirror` for threads: `get` and `snapshot` read the local copy from any thread;
    `on_change` callbacks run on the client's loop thread, so keep them short."""

    def __init__(self, mirror: Mirror, loop: asyncio.AbstractEventLoop) -> None:
        self._mirror, self._loop = mirror, loop
        asyncio.run_coroutine_threadsafe(mirror.start(), loop).result()

    @property
    def revision(self) -> int:
        return self._mirror.revision

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        return self._mirror.get(key, default)

    def snapshot(self) -> dict[str, bytes]:
        return self._mirror.snapshot()

    def wait_for(self, revision: int, timeout: float | None = None) -> None:
        """Block until the mirror reflects `revision` (TimeoutError after `timeout`)."""
        coro = self._mirror.wait_for(revision, timeout)
        asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._mirror.close(), self._loop).result()
