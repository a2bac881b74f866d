"""`KV`: the blocking client, for threaded code (Flask, Django, scripts).

Every method is the `AsyncKV` one run on a private event loop, so the logic (retries,
exactly-once sessions, leader discovery) exists once, in kvstore.client.async_client.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

from kvstore.client.async_client import AsyncKV
from kvstore.client.blocking_watch import BlockingMirror, BlockingWatch
from kvstore.client.context import Closing
from kvstore.client.endpoints import EndpointsArg
from kvstore.client.errors import KVError
from kvstore.client.leases import LostCallback
from kvstore.client.mirror import Mirror, OnChange
from kvstore.client.sync_coordination import SyncElection, SyncLease, SyncLock
from kvstore.client.txn import TxnBuilder, TxnResponse
from kvstore.client.types import KeyValue

P = ParamSpec("P")
R = TypeVar("R")


def _blocking(
    method: Callable[Concatenate[AsyncKV, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[KV, P], R]:
    """Make a blocking `KV` method out of an `AsyncKV` one, so the logic exists once."""

    @functools.wraps(method)
    def call(self: KV, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(method(self._async, *args, **kwargs))

    return call


class KV(Closing):
    """Blocking client for threaded code (Flask, Django, scripts): same methods as `AsyncKV`.

    It runs a private event loop in a daemon thread and hands each call to it,
    so it is safe to share one `KV` between threads, and all calls share one
    connection pool and one exactly-once session.
    """

    def __init__(self, endpoints: EndpointsArg = None, **options: Any) -> None:
        self._async = AsyncKV(endpoints, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kv-client-loop", daemon=True
        )
        self._thread.start()
        self._lock = threading.Lock()
        self._closed = False
        # Runs at close(), when the KV is garbage-collected, or at interpreter exit,
        # whichever comes first, so a forgotten client still closes its connections
        # instead of leaving aiohttp to warn about an unclosed session.
        self._finalizer = weakref.finalize(self, _shut_down, self._async, self._loop, self._thread)

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        if self._closed:
            coro.close()
            raise KVError("client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise

    get = _blocking(AsyncKV.get)
    put = _blocking(AsyncKV.put)
    cas = _blocking(AsyncKV.cas)
    delete = _blocking(AsyncKV.delete)
    update = _blocking(AsyncKV.update)
    status = _blocking(AsyncKV.status)
    cluster_status = _blocking(AsyncKV.cluster_status)
    members = _blocking(AsyncKV.members)
    add_member = _blocking(AsyncKV.add_member)
    remove_member = _blocking(AsyncKV.remove_member)
    snapshot = _blocking(AsyncKV.snapshot)
    range_page = _blocking(AsyncKV.range_page)
    run_txn = _blocking(AsyncKV.run_txn)
    request = _blocking(AsyncKV.request)

    def lease(self, ttl: int, *, on_lost: LostCallback | None = None) -> SyncLease:
        """`with kv.lease(ttl=10) as lease:`; `on_lost` runs on the client's loop thread."""
        return SyncLease(self._run, self._async.lease(ttl, on_lost=on_lost))

    def lock(self, name: str, ttl: int = 10, *, timeout: float | None = None) -> SyncLock:
        """`with kv.lock("jobs/nightly", ttl=10) as lock:`; `lock.put` is fenced."""
        return SyncLock(self._run, self._async.lock(name, ttl, timeout=timeout))

    def election(self, name: str) -> SyncElection:
        return SyncElection(self._run, self._async.election(name))

    def range(
        self, start: str | None = None, end: str | None = None, **options: Any
    ) -> Iterator[KeyValue]:
        """`for kv in kv.range("a", "m")`: as `AsyncKV.range` (same options), all pages
        at one revision, each page fetched when the previous one is used up."""
        pages = self._async.range(start, end, **options)
        while True:
            try:
                yield self._run(pages.__anext__())
            except StopAsyncIteration:
                return

    def get_prefix(self, prefix: str, **options: Any) -> Iterator[KeyValue]:
        """`for kv in kv.get_prefix("orders/")`: `range(prefix=...)`."""
        return self.range(prefix=prefix, **options)

    def txn(self) -> TxnBuilder[TxnResponse]:
        """`kv.txn().if_(...).then(...).else_(...).commit()`; see kvstore.client.txn."""
        return TxnBuilder(lambda doc, timeout: self.run_txn(doc, timeout=timeout))

    def watch(self, **options: Any) -> BlockingWatch:
        """`AsyncKV.watch` as a blocking iterator (same keyword arguments)."""
        if self._closed:
            raise KVError("client is closed")
        return BlockingWatch(self._async.watch(**options), self._loop)

    def mirror(self, prefix: str, on_change: OnChange | None = None) -> BlockingMirror:
        """A local copy of every key under `prefix`, kept in sync (kvstore.client.mirror);
        returns once the first listing is in."""
        if self._closed:
            raise KVError("client is closed")
        return BlockingMirror(Mirror(self._async, prefix, on_change=on_change), self._loop)

    @property
    def client_id(self) -> str:
        return self._async.client_id

    @property
    def endpoints(self) -> list[str]:
        return self._async.endpoints

    @property
    def leader_url(self) -> str | None:
        return self._async.leader_url

    @property
    def token(self) -> str | None:
        return self._async.token

    def close(self) -> None:
        """Close the connections and stop the loop thread (idempotent)."""
        with self._lock:
            self._closed = True
            self._finalizer()


def _shut_down(client: AsyncKV, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Close `client`'s session on its loop, then stop the loop and its thread.

    A finalizer: it must not refer to the `KV` itself. Called from the loop thread (a
    KV dropped inside a callback) it cannot wait for the loop, so it only schedules.
    """
    if loop.is_closed():
        return
    if threading.current_thread() is thread:
        loop.create_task(client.close()).add_done_callback(lambda _: loop.stop())
        return
    if thread.is_alive():
        asyncio.run_coroutine_threadsafe(client.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
    loop.close()
