"""kvstore.runtime.loop_lag, sampled by the node's clock (kvstore.runtime.clock): each
stall is recorded three ways: its length, the process's CPU time during it (an upper
bound of the node's own part), and the event loop thread's own CPU time (a lower bound:
what the loop itself ran)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from kvstore.runtime.clock import Clock
from kvstore.runtime.loop_lag import LagProbe
from kvstore.runtime.stats import LoopLag


def _stalled_by(block: Callable[[], None]) -> LoopLag:
    async def run() -> LoopLag:
        lag = LoopLag()
        clock = Clock(0.005, lambda: None, LagProbe(lag))
        watcher = asyncio.create_task(clock.run(lambda: True))
        await asyncio.sleep(0.02)
        block()
        await asyncio.sleep(0.02)
        watcher.cancel()
        return lag

    return asyncio.run(run())


def _spin(cpu_s: float) -> None:
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def test_a_callback_running_on_the_loop_counts_as_the_loop_threads_cpu() -> None:
    lag = _stalled_by(lambda: _spin(0.05))
    assert lag.max_s >= 0.045
    assert lag.max_loop_cpu_s >= 0.045 and lag.max_busy_s >= 0.045


def test_a_blocking_wait_is_a_stall_without_the_loop_threads_cpu() -> None:
    lag = _stalled_by(lambda: time.sleep(0.06))
    assert lag.max_s >= 0.055
    assert lag.max_loop_cpu_s < 0.03
