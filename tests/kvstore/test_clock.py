"""kvstore.runtime.clock: one timer for a node's periodic work; a chore that fails (a
bug) must not stop the Raft ticks."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.runtime.clock import Clock
from kvstore.runtime.loop_lag import LagProbe
from kvstore.runtime.stats import LoopLag
from tests.kvstore.test_runtime import _eventually, _LocalCluster


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


async def test_a_tick_that_raises_stops_the_node_instead_of_its_clock_alone(
    local: _LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the core's tick leaves no node running without ticks (no election, no
    heartbeat ever again): the runtime records it as fatal, as for the ready loop."""
    await local.leader()
    runtime = next(iter(local.nodes.values())).runtime

    def broken() -> None:
        raise RuntimeError("a bug in tick")

    monkeypatch.setattr(runtime.node, "tick", broken)
    await _eventually(lambda: runtime.fatal_error is not None)
    assert str(runtime.fatal_error) == "a bug in tick"
