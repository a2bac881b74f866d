"""Read-modify-write on top of a read and a compare-and-set (`AsyncKV.update`).

Kept apart from the client class so the retry loop can be read alone: another writer
getting in between makes the compare-and-set fail; the loop then reads again and
recomputes, up to `max_attempts` times (after which the last `VersionMismatch` is
raised). `fn` may run several times, so it must not have side effects; it may be a
coroutine function.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from kvstore.client.errors import NotFound, VersionMismatch
from kvstore.client.types import KeyValue, PutResult

UpdateFn = Callable[[bytes | None], bytes | str | Awaitable[bytes | str]]


class _ReadCas(Protocol):
    async def get(self, key: str, *, timeout: float | None = None) -> KeyValue: ...

    async def cas(
        self, key: str, value: Any, prev_version: int, *, timeout: float | None = None
    ) -> PutResult: ...


async def read_modify_write(
    kv: _ReadCas,
    key: str,
    fn: UpdateFn,
    max_attempts: int,
    timeout: float | None,
    pause: Callable[[int], Awaitable[Any]],
) -> PutResult:
    """Store `fn(old value or None)` under `key` with compare-and-set; `pause(n)` waits
    before retry n (0 for the first)."""
    last: VersionMismatch | None = None
    for attempt in range(max(1, max_attempts)):
        if attempt:
            await pause(attempt - 1)
        try:
            current = await kv.get(key, timeout=timeout)
            old, prev_version = current.value, current.version
        except NotFound:
            old, prev_version = None, 0
        new = fn(old)
        if inspect.isawaitable(new):
            new = await new
        try:
            return await kv.cas(key, new, prev_version, timeout=timeout)
        except VersionMismatch as exc:
            last = exc
    assert last is not None
    raise last
