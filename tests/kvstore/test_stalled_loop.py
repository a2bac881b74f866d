"""A follower whose event loop stood still (a slow save on its loop thread, a pause) for
longer than an election timeout does not campaign once it runs again: the tick loop
fires one tick for the whole stall (kvstore.runtime.clock caps its catch-up), so the
leader's heartbeats queued meanwhile are read before its election timer runs out,
whichever the loop runs first after the stall (uvloop and asyncio order due timers and
ready sockets differently). Had every missed tick fired, it would have campaigned
(checked: without the cap the node ends up a pre-candidate).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable

import pytest

from consensus import Config, MemoryStorage, RaftNode, Role
from consensus.messages import AppendEntries, RequestVote
from kvstore.runtime.clock import Clock
from kvstore.runtime.loop_lag import LagProbe
from kvstore.runtime.stats import LoopLag

pytestmark = pytest.mark.timeout(30)

TICK_MS = 10
ELECTION_TICKS = 15
STALL_S = 3 * ELECTION_TICKS * TICK_MS / 1000


def _heartbeat() -> AppendEntries:
    return AppendEntries(1, "n1", "n2", 0, 0, (), 0)


async def _stall_then_hear_the_leader() -> tuple[list[str], RaftNode]:
    node = RaftNode(
        Config("n2", ("n1", "n2", "n3"), election_tick=ELECTION_TICKS, heartbeat_tick=3),
        MemoryStorage(),
        random.Random(7),
    )
    events: list[str] = []
    tick = node.tick

    def ticked() -> None:
        events.append("tick")
        tick()

    clock = Clock(TICK_MS / 1000, ticked, LagProbe(LoopLag()))
    ticking = asyncio.create_task(clock.run(lambda: True))
    ours, leaders = socket.socketpair()
    loop = asyncio.get_running_loop()

    def read() -> None:  # the leader's heartbeat arrives over the peer link
        ours.recv(64)
        events.append("read")
        node.step(_heartbeat())

    try:
        node.step(_heartbeat())
        await _until(lambda: events.count("tick") >= 2)
        loop.add_reader(ours.fileno(), read)
        events.clear()
        leaders.send(b"heartbeat")  # queued while the loop stands still:
        time.sleep(STALL_S)  # the stall itself (a save on the loop thread)
        await _until(lambda: "read" in events)
        return events, node
    finally:
        loop.remove_reader(ours.fileno())
        ours.close()
        leaders.close()
        ticking.cancel()


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not met in 10 s"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_stalled_follower_reads_the_queued_heartbeats_before_it_campaigns(
    loop_kind: str,
) -> None:
    if loop_kind == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        events, node = runner.run(_stall_then_hear_the_leader())
    before = events[: events.index("read")]
    assert before.count("tick") <= 1, f"ticks fired before the queued heartbeat: {events}"
    assert node.role is Role.FOLLOWER and node.term == 1
    sent = node.ready().messages if node.has_ready() else ()
    assert not [m for m in sent if isinstance(m, RequestVote)], "the follower campaigned"
