"""`KV`: the blocking client, for threaded code (Flask, Django, scripts).

Every method is the `AsyncKV` one run on a private event loop, so the logic (retries,
exactly-once sessions, leader discovery) exists once, in kvstore.client.async_client.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from kvstore.client.async_client import AsyncKV
from kvstore.client.endpoints import EndpointsArg
from kvstore.client.errors import KVError

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


class KV:
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

    @property
    def client_id(self) -> str:
        return self._async.client_id

    @property
    def endpoints(self) -> list[str]:
        return self._async.endpoints

    @property
    def leader_url(self) -> str | None:
        return self._async.leader_url

    def close(self) -> None:
        """Close the connections and stop the loop thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result()
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
