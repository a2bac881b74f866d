"""`with` and `async with` support for the client's objects, written once.

`Closing`: `with obj:` closes it at the end (KV, BlockingWatch, BlockingMirror).
`Held`: `with obj:` starts it, and stops it at the end (SyncLease, SyncLock).
`AsyncHeld`: `async with obj:` awaits `_enter()`, and `_exit()` at the end (Lease,
Lock, Mirror: each names its own start and end methods as these two).
Each subclass supplies only the methods named here; the bases touch no state.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Held:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class AsyncHeld:
    async def _enter(self) -> object:
        raise NotImplementedError

    async def _exit(self) -> object:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit()
