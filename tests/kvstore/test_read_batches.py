"""Linearizable reads batched by the runtime (kvstore.runtime.via_leader): the reads of
one loop turn share one request id, asked of the core at the end of that turn; a read
asked later never joins it on the leader (the core recorded its index already), and on a
follower only while the core still holds it for its next request; each is told once the
index is applied here; and no leader means NotLeader for the whole batch."""

from __future__ import annotations

import asyncio

import pytest

from consensus import NotLeader
from kvstore.runtime.requests import PendingRequests, ReadAborted
from kvstore.runtime.via_leader import ViaLeader

pytestmark = pytest.mark.timeout(10)


class _Core:
    """What ViaLeader asks of the Raft core: read indexes, by request id."""

    def __init__(self) -> None:
        self.term = 3
        self.asked: list[bytes] = []
        self.leader = True
        self.unsent: bytes | None = None
        """A follower's read still held for its next request (RaftNode.read_unsent)."""

    def read_index(self, request_id: bytes) -> None:
        if not self.leader:
            raise NotLeader(None)
        self.asked.append(request_id)

    def has_ready(self) -> bool:
        return True

    def read_unsent(self, request_id: bytes) -> bool:
        return request_id == self.unsent


def _via_leader(applied: list[int]) -> tuple[ViaLeader, _Core, PendingRequests]:
    core, pending = _Core(), PendingRequests()
    via = ViaLeader(core, pending, lambda: None, lambda: applied[0])  # type: ignore[arg-type]
    via.loop = asyncio.get_running_loop()
    return via, core, pending


async def test_reads_of_one_turn_share_a_request_and_a_later_read_never_joins_it() -> None:
    applied = [5]
    via, core, pending = _via_leader(applied)
    told: dict[str, list[int | Exception]] = {name: [] for name in ("a", "b", "c")}
    deadline = via.loop.time() + 5  # type: ignore[union-attr]
    via.confirm(told["a"].append, deadline)
    via.confirm(told["b"].append, deadline + 0.001)
    await asyncio.sleep(0)
    assert len(core.asked) == 1, "one request id for the reads of one turn"
    assert pending.counts()["pending_reads"] == 2
    via.confirm(told["c"].append, deadline + 0.002)  # the core recorded the first index
    await asyncio.sleep(0)
    assert len(core.asked) == 2, "a read asked after its batch went to the core joined it"
    first, second = core.asked
    pending.read_confirmed(first, 5)
    assert told == {"a": [5], "b": [5], "c": []}
    pending.read_confirmed(second, 7)  # not applied here yet
    assert told["c"] == []
    pending.applied_up_to(7)
    await asyncio.sleep(0)
    assert told["c"] == [7]
    assert not pending


async def test_a_retry_with_a_nearer_deadline_gets_a_batch_of_its_own() -> None:
    via, core, pending = _via_leader([0])
    now = via.loop.time()  # type: ignore[union-attr]
    told: list[int | Exception] = []
    via.confirm(told.append, now + 5)
    via.confirm(told.append, now + 1)  # would be held past its deadline otherwise
    await asyncio.sleep(0)
    assert len(core.asked) == 2
    pending.expire(now + 2)
    assert len(told) == 1 and isinstance(told[0], TimeoutError)


async def test_failures_reach_every_read_of_the_batch() -> None:
    via, core, pending = _via_leader([0])
    core.leader = False
    told: list[int | Exception] = []
    deadline = via.loop.time() + 5  # type: ignore[union-attr]
    via.confirm(told.append, deadline)
    via.confirm(told.append, deadline)
    await asyncio.sleep(0)
    assert [type(t) for t in told] == [NotLeader, NotLeader]
    core.leader = True
    told.clear()
    via.confirm(told.append, deadline)
    via.confirm(told.append, deadline)
    await asyncio.sleep(0)
    pending.fail_reads(ReadAborted("leadership changed"))
    assert [type(t) for t in told] == [ReadAborted, ReadAborted]


async def test_the_coroutine_barrier_shares_the_batch() -> None:
    via, core, pending = _via_leader([9])
    reads = [asyncio.ensure_future(via.barrier(5.0)) for _ in range(3)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    [request_id] = core.asked
    pending.read_confirmed(request_id, 9)
    assert await asyncio.gather(*reads) == [9, 9, 9]


async def test_on_a_follower_later_reads_join_the_batch_until_its_request_leaves() -> None:
    via, core, pending = _via_leader([5])
    told: dict[str, list[int | Exception]] = {name: [] for name in ("a", "b", "c", "d")}
    deadline = via.loop.time() + 5  # type: ignore[union-attr]
    via.confirm(told["a"].append, deadline)
    await asyncio.sleep(0)
    [first] = core.asked
    core.unsent = first  # a request is in flight: the core holds this one back
    via.confirm(told["b"].append, deadline + 0.001)
    await asyncio.sleep(0)
    assert core.asked == [first], "a read asked while the request waited did not join it"
    assert pending.counts()["pending_reads"] == 2
    core.unsent = None  # the request left: a read that begins now needs a later one
    via.confirm(told["c"].append, deadline + 0.002)
    await asyncio.sleep(0)
    assert len(core.asked) == 2
    pending.read_confirmed(first, 5)
    assert told == {"a": [5], "b": [5], "c": [], "d": []}


async def test_a_read_never_joins_a_batch_that_was_told_already() -> None:
    via, core, pending = _via_leader([5])
    told: list[int | Exception] = []
    now = via.loop.time()  # type: ignore[union-attr]
    via.confirm(told.append, now + 1)
    await asyncio.sleep(0)
    [first] = core.asked
    core.unsent = first  # still held by the core, but its wait ends at the deadline:
    pending.expire(now + 2)
    assert len(told) == 1 and isinstance(told[0], TimeoutError)
    late: list[int | Exception] = []
    via.confirm(late.append, now + 1.05)
    await asyncio.sleep(0)
    assert len(core.asked) == 2, "a read joined a batch that had been told"
