"""The simulator's own parts: a checker that never fires proves nothing, so each check
is shown failing on a hand-made violation, and the network and disk are shown to do
what the schedules rely on."""

from __future__ import annotations

import random

import pytest

from consensus import (
    AppendEntries,
    Entry,
    HardState,
    Membership,
    ReadState,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
)
from tests.sim.checkers import Checkers, SimFailure
from tests.sim.cluster import Cluster, SimConfig
from tests.sim.disk import SimDisk
from tests.sim.host import StateMachine
from tests.sim.network import NetConfig, Network
from tests.sim.swarm import replay_command

IDS = ("n1", "n2", "n3")


def _heartbeat(sender: str, recipient: str, term: int = 1) -> AppendEntries:
    return AppendEntries(term, sender, recipient, 0, 0, (), 0)


def _checkers() -> Checkers:
    checkers = Checkers(IDS, lambda: "seed=0 tick=0 op=0")
    for nid in IDS:
        checkers.disks[nid] = SimDisk(nid, checkers.on_save, checkers.on_snapshot)
    return checkers


# --- network ---------------------------------------------------------------------------


def test_network_delivers_everything_in_delay_order_without_faults() -> None:
    net = Network(random.Random(1), IDS, NetConfig(min_delay=1, max_delay=5))
    for i in range(50):
        net.send(_heartbeat("n1", "n2", term=i + 1))
    got = []
    for now in range(1, 7):
        net.now = now
        got += net.due()
    assert sorted(m.term for m in got) == list(range(1, 51))
    assert [m.term for m in got] != list(range(1, 51)), "delays should reorder messages"


def test_network_is_deterministic_per_seed() -> None:
    def run(seed: int) -> list[int]:
        net = Network(random.Random(seed), IDS, NetConfig(drop=0.3, duplicate=0.3, reorder=0.3))
        for i in range(100):
            net.send(_heartbeat("n1", "n2", term=i))
        net.now = 100
        return [m.term for m in net.due()]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_partition_and_one_way_cut_block_in_flight_messages() -> None:
    net = Network(random.Random(1), IDS)
    net.send(_heartbeat("n1", "n2"))
    net.send(_heartbeat("n2", "n1"))
    net.send(_heartbeat("n3", "n1"))
    net.cut("n1", "n2")
    net.now = 10
    assert {(m.sender, m.recipient) for m in net.due()} == {("n2", "n1"), ("n3", "n1")}
    net.partition([["n1"], ["n2", "n3"]])
    for pair in (("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n2", "n3")):
        net.send(_heartbeat(*pair))
    net.now = 20
    assert [(m.sender, m.recipient) for m in net.due()] == [("n2", "n3")]
    net.heal()
    net.send(_heartbeat("n1", "n2"))
    net.now = 30
    assert len(net.due()) == 1


def test_drop_burst_ends() -> None:
    net = Network(random.Random(1), IDS)
    net.drop_burst(ticks=5, probability=1.0)
    net.send(_heartbeat("n1", "n2"))
    net.now = 5
    net.send(_heartbeat("n1", "n2"))
    net.now = 20
    assert len(net.due()) == 1 and net.stats.dropped == 1


# --- disk and crash semantics ------------------------------------------------------------


def test_crash_before_persist_loses_the_unsynced_tail_only() -> None:
    cluster = Cluster(4, SimConfig())
    cluster.tick(60)
    leader = cluster.leaders()[0]
    for _ in range(3):
        cluster.propose()
    durable = leader.disk.last_index()
    cluster.crash(leader.nid, before="persist")
    cluster.tick()
    assert leader.node is None
    assert leader.disk.last_index() == durable, "the proposals were never synced"
    cluster.restart(leader.nid)
    assert leader.node is not None and leader.node.log.last_index() == durable
    assert leader.sm.applied_index == leader.node.applied_index


def test_restart_replays_committed_entries_into_a_fresh_state_machine() -> None:
    cluster = Cluster(9, SimConfig())
    cluster.tick(60)
    for _ in range(5):
        cluster.propose()
        cluster.tick(5)
    cluster.tick(20)
    follower = next(h for h in cluster.live() if h.node and h.node.role is Role.FOLLOWER)
    before = list(follower.sm.payloads)
    assert len(before) == 5
    cluster.crash(follower.nid)
    cluster.restart(follower.nid)
    cluster.tick(30)
    assert follower.sm.payloads[:5] == before


# --- every checker fires on a violation ----------------------------------------------------


def test_two_leaders_in_one_term_is_caught() -> None:
    cluster = Cluster(3, SimConfig(), replay_hint=replay_command(3, 3, 50))
    for term in range(1, 6):
        cluster.check.leader_of_term[term] = "nobody"
    with pytest.raises(SimFailure, match="election_safety") as caught:
        cluster.tick(100)
    assert "seed=3" in str(caught.value)
    assert "python -m tests.sim.soak --replay 3 --nodes 3 --steps 50" in str(caught.value)


def test_conflicting_entries_with_same_index_and_term_are_caught() -> None:
    checkers = _checkers()
    checkers.disks["n1"].save(None, [Entry(1, 1, b"a")])
    with pytest.raises(SimFailure, match="log_matching"):
        checkers.disks["n2"].save(None, [Entry(1, 1, b"b")])


def test_same_entry_after_a_different_predecessor_is_caught() -> None:
    checkers = _checkers()
    checkers.disks["n1"].save(None, [Entry(1, 1), Entry(2, 2, b"x")])
    checkers.disks["n2"].save(None, [Entry(2, 1)])
    with pytest.raises(SimFailure, match="log_matching"):
        checkers.disks["n2"].save(None, [Entry(2, 2, b"x")])


def test_overwriting_a_committed_entry_is_caught() -> None:
    checkers = _checkers()
    checkers.committed.append(Entry(1, 1, b"c"))
    checkers.disks["n1"].save(None, [Entry(1, 1, b"c")])
    with pytest.raises(SimFailure, match="committed_durable"):
        checkers.disks["n1"].save(None, [Entry(2, 1, b"d")])


def test_vote_change_within_a_term_is_caught() -> None:
    checkers = _checkers()
    checkers.disks["n1"].save(HardState(3, "n2"), [])
    with pytest.raises(SimFailure, match="hard_state"):
        checkers.disks["n1"].save(HardState(3, "n3"), [])


def test_vote_sent_before_it_is_durable_is_caught() -> None:
    checkers = _checkers()
    checkers.disks["n1"].save(HardState(2, None), [])
    with pytest.raises(SimFailure, match="promises"):
        checkers.on_send("n1", checkers.disks["n1"], RequestVoteResponse(2, "n1", "n2", True))


def test_applying_different_entries_at_one_index_is_caught() -> None:
    checkers = _checkers()
    checkers.committed.append(Entry(1, 1, b"a"))
    checkers.on_apply("n1", Entry(1, 1, b"a"))
    with pytest.raises(SimFailure, match="state_machine_safety"):
        checkers.on_apply("n2", Entry(1, 1, b"b"))


def test_stale_read_is_caught() -> None:
    checkers = _checkers()
    with pytest.raises(SimFailure, match="linearizable_reads"):
        checkers.on_read_state("n1", ReadState(b"r", 4), required=5)


def test_snapshot_with_wrong_state_is_caught() -> None:
    checkers = _checkers()
    checkers.committed.extend([Entry(1, 1, b"a"), Entry(1, 2, b"b")])
    meta = SnapshotMeta(2, 1, Membership(IDS))
    good = StateMachine(2, [b"a", b"b"]).snapshot()
    checkers.disks["n1"].apply_snapshot(meta, good)
    with pytest.raises(SimFailure, match="snapshot"):
        checkers.disks["n2"].apply_snapshot(meta, StateMachine(2, [b"a"]).snapshot())


def test_snapshot_beyond_the_committed_prefix_is_caught() -> None:
    checkers = _checkers()
    checkers.committed.append(Entry(1, 1, b"a"))
    meta = SnapshotMeta(2, 1, Membership(IDS))
    with pytest.raises(SimFailure, match="snapshot"):
        checkers.disks["n1"].apply_snapshot(meta, StateMachine(2, [b"a", b"b"]).snapshot())
