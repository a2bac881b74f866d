"""A follower whose log comes back shorter than the match index it acknowledged (a
damaged disk LevelDB recovered by dropping its newest records) is brought back on
track by the leader instead of being ignored forever (issue 10, item 9)."""

from __future__ import annotations

from consensus import HardState, MemoryStorage
from tests.consensus.scripted import ScriptedCluster


def test_the_leader_rewinds_a_follower_that_lost_acknowledged_entries() -> None:
    cluster = ScriptedCluster(("a", "b", "c"))
    cluster.elect("a")
    leader = cluster.nodes["a"]
    for i in range(10):
        leader.propose(b"x%d" % i)
    cluster.deliver_all()
    last = leader.log.last_index()
    assert leader.progress()["b"].match == last

    # b's disk loses its newest records: the log and hard state of an older moment.
    kept = 4
    damaged = MemoryStorage()
    old = cluster.storages["b"]
    damaged.save(HardState(old.initial_state().term, None, kept), old.entries(1, kept + 1))
    cluster.storages["b"] = damaged
    cluster.restart("b")

    for _ in range(3):  # heartbeats and new proposals reach b again
        cluster.tick("a", leader.config.heartbeat_tick)
        leader.propose(b"more")
        cluster.deliver_all()
    follower = cluster.nodes["b"]
    assert follower.log.last_index() == leader.log.last_index(), (
        f"b stays at {follower.log.last_index()}, leader at {leader.log.last_index()}, "
        f"leader thinks b matches {leader.progress()['b'].match}"
    )
    assert leader.progress()["b"].match == leader.log.last_index()
