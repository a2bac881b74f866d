"""kvstore.runtime.clock: one timer for a node's periodic work; a chore that fails (a
bug) must not stop the Raft ticks."""

from __future__ import annotations

import asyncio

from kvstore.runtime.clock import Clock
from kvstore.runtime.loop_lag import LagProbe
from kvstore.runtime.stats import LoopLag


def test_a_failing_chore_does_not_stop_the_ticks() -> None:
    ticks: list[int] = []
    ran: list[float] = []

    def broken(now: float) -> None:
        ran.append(now)
        raise RuntimeError("a bug")

    async def run() -> None:
        clock = Clock(0.002, lambda: ticks.append(1), LagProbe(LoopLag()))
        clock.every(0.0, broken)
        task = asyncio.create_task(clock.run(lambda: len(ticks) < 5))
        async with asyncio.timeout(5):
            await task

    asyncio.run(run())
    assert len(ticks) == 5 and len(ran) == 5
