"""A signal that the applied state changed, for requests that wait on it (lock waits,
election observers): one future shared by every waiter, replaced after each change,
so a thousand waiters cost one wake-up per applied batch, not a timer each."""

from __future__ import annotations

import asyncio
import contextlib


class ChangeSignal:
    """`notify()` after the state machine applied something; `wait()` until then."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def notify(self) -> None:
        future = self._future
        if future is not None:
            self._future = None
            if not future.done():
                future.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Return after the next change, or after `timeout` seconds (whichever first)."""
        if timeout <= 0:
            return
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._future), timeout)
