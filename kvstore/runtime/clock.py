"""One timer for all of a node's periodic work: the Raft tick, and on its ticks the
loop-lag sample (kvstore.runtime.loop_lag), request deadlines and lease expiry.

Why one: each of these slept on its own (ticks and loop-lag samples every 10 ms,
deadlines and leases every 50 ms), so an idle node's loop woke ~240 times a second, and
under load each wake-up was a task step of its own (a future, a timer handle, a
coroutine resumed), often the only work of a loop turn: an epoll return and a context
switch on a machine with more busy processes than cores. Riding on the tick, a chore
costs a comparison on the ticks it is not due.

A chore runs on the first tick at or after it is due, so it runs no more often than a
tick (with the default 10 ms tick, a 50 ms chore runs every 50-60 ms). A chore that
raises (a bug) is logged, once, and keeps its turn: with tasks of their own, such a bug
stopped only that task; here it must not stop the ticks, which keep the node in its
cluster (heartbeats, elections).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kvstore.runtime.loop_lag import LagProbe

log = logging.getLogger(__name__)

Chore = Callable[[float], None]
"""Periodic work, given the loop's time."""


class Clock:
    """Drives `tick` once per `tick_s` of loop time, then the chores that are due."""

    def __init__(self, tick_s: float, tick: Callable[[], None], probe: LagProbe) -> None:
        self.tick_s = tick_s
        self._tick = tick
        self._probe = probe
        self._chores: list[tuple[float, Chore]] = []
        self._due: list[float] = []
        self._failed: set[int] = set()
        """Chores whose failure was logged (the next failures of each are not)."""

    def every(self, interval_s: float, chore: Chore) -> None:
        """Run `chore(now)` every `interval_s` (on the first tick at or after it is due)."""
        self._chores.append((interval_s, chore))
        self._due.append(0.0)

    async def run(self, running: Callable[[], bool]) -> None:
        """Tick while `running()`. After a stall at most a few ticks catch up, so a node
        resumed from SIGSTOP does not fire a burst of elections; a stall counts once as
        loop lag (when the sleep before it ends late), not once per tick caught up."""
        loop = asyncio.get_running_loop()
        interval, probe, chores, due = self.tick_s, self._probe, self._chores, self._due
        next_at = loop.time() + interval
        while running():
            delay = next_at - loop.time()
            if delay > 0:
                probe.arm()
                await asyncio.sleep(delay)
                probe.woke(loop.time() - next_at)
            self._tick()
            now = loop.time()
            for i, (every, chore) in enumerate(chores):
                if now >= due[i]:
                    due[i] = now + every
                    try:
                        chore(now)
                    except Exception:
                        self._chore_failed(i, chore)
            next_at += interval
            if now - next_at > 3 * interval:
                next_at = now + interval

    def _chore_failed(self, at: int, chore: Chore) -> None:
        if at not in self._failed:
            self._failed.add(at)
            log.exception("periodic %s failed (logged once; it keeps running)", chore)
