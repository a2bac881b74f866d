"""The leader's own read rounds while followers ask for read indexes often (consensus.
read_index: a round waits for the next follower request, at most a tick, and rides in
the frame of its answer). Only the timing changes: every read is still confirmed by an
acknowledgement of a round that began after it. While followers ask seldom, a round
goes out at once."""

from __future__ import annotations

import pytest

from consensus import AppendEntries, Message, ReadIndexRequest, ReadIndexResponse
from consensus.read_index import HOLD_MIN_ASKS
from tests.consensus.scripted import ScriptedCluster


def _follower_reads(cluster: ScriptedCluster, count: int, prefix: bytes = b"b") -> None:
    """Follower b has `count` reads answered at once by the leader, one after another."""
    for n in range(count):
        cluster.nodes["b"].read_index(prefix + str(n).encode())
        cluster.deliver_all()


def _asking_follower() -> ScriptedCluster:
    """A three-voter cluster led by a, whose follower b asks often (HOLD_MIN_ASKS reads
    answered at once in this tick), b1 among them."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.nodes["b"].read_index(b"b1")
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["b"]] == [b"b1"]
    _follower_reads(cluster, HOLD_MIN_ASKS - 1, b"more")
    cluster.read_states["b"] = cluster.read_states["b"][:1]
    return cluster


def _rounds(msgs: list[Message]) -> list[AppendEntries]:
    """Heartbeats that carry a read round (a heartbeat due anyway carries none)."""
    return [m for m in msgs if isinstance(m, AppendEntries) and not m.entries and m.read_seq]


def test_a_leader_round_waits_for_a_follower_request_and_goes_in_its_answers_frame() -> None:
    cluster = _asking_follower()
    leader = cluster.nodes["a"]
    leader.read_index(b"own")
    assert cluster.process_ready("a") == [], "the round went out alone"
    cluster.nodes["b"].read_index(b"b2")
    [request] = cluster.process_ready("b")
    leader.step(request)
    out = cluster.process_ready("a")
    [answer] = [m for m in out if isinstance(m, ReadIndexResponse)]
    [round_] = _rounds(out)
    assert (answer.recipient, round_.recipient) == ("b", "b"), "not in one frame to b"
    assert round_.read_seq > 0
    cluster.in_flight.extend(out)
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["a"]] == [b"own"]
    assert [s.request_id for s in cluster.read_states["b"]] == [b"b1", b"b2"]


def test_a_waiting_round_goes_out_after_a_tick_when_followers_stop_asking() -> None:
    cluster = _asking_follower()
    leader = cluster.nodes["a"]
    leader.read_index(b"own")
    assert cluster.process_ready("a") == []
    leader.tick()
    out = cluster.process_ready("a")
    assert _rounds(out), "a read waited more than a tick"
    cluster.in_flight.extend(out)
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["a"]] == [b"own"]


@pytest.mark.parametrize("asks", [0, HOLD_MIN_ASKS - 1], ids=["no_follower", "seldom"])
def test_a_round_goes_out_at_once_unless_followers_ask_often(asks: int) -> None:
    """The hold pays only while requests come often: with fewer than HOLD_MIN_ASKS in
    this tick and the last, the leader's own read waits for nobody (before: up to a
    tick, 10 ms, whenever a follower had served a read since the last round)."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    _follower_reads(cluster, asks)
    cluster.nodes["a"].read_index(b"own")
    out = cluster.process_ready("a")
    assert _rounds(out), "the leader's read waited for a follower that asks seldom"
    cluster.in_flight.extend(out)
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["a"]] == [b"own"]


def test_a_follower_request_sent_before_the_round_never_confirms_it() -> None:
    """The frame-sharing round is confirmed by the follower's acknowledgement (it echoes
    the round), never by a request that was on its way when the leader's reads began."""
    cluster = _asking_follower()
    leader = cluster.nodes["a"]
    cluster.nodes["b"].read_index(b"b2")
    [early] = cluster.process_ready("b")  # sent before the leader's read began
    assert isinstance(early, ReadIndexRequest)
    leader.read_index(b"own")
    cluster.isolate("b")
    cluster.isolate("c")
    leader.step(early)  # arrives; its answer and the round to b are lost
    cluster.process_ready("a")
    cluster.deliver_all()
    assert cluster.read_states["a"] == []
    cluster.heal()
    cluster.tick("a", leader.config.heartbeat_tick)
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["a"]] == [b"own"]


def test_the_hold_follows_the_rate_of_the_last_whole_tick() -> None:
    """Requests counted in the last whole tick keep the hold in the next one; a tick
    without them ends it."""
    cluster = _asking_follower()
    leader = cluster.nodes["a"]
    leader.tick()  # the requests now count as the last tick's
    leader.read_index(b"own")
    assert _rounds(cluster.process_ready("a")) == [], "a busy follower's rate was forgotten"
    leader.tick()  # overdue: it goes out; and this quiet tick ends the hold
    cluster.in_flight.extend(cluster.process_ready("a"))
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["a"]] == [b"own"]
    leader.tick()
    _follower_reads(cluster, 1, b"late")
    leader.read_index(b"own2")
    assert _rounds(cluster.process_ready("a")), "held after a tick without requests"
