"""Early elections after a lost link (RaftNode.peer_unreachable, consensus.election_timer)
in the simulator: a crashed leader is replaced within a few ticks, without a split
vote; and reports of a lost link to a leader the cluster still hears, however many
and however often, never make anyone campaign, let alone depose that leader."""

from __future__ import annotations

import random

import pytest

from consensus import Role
from tests.sim.cluster import Cluster, Host, SimConfig
from tests.sim.network import NetConfig
from tests.sim.test_sim_scenarios import _until

REPLAY = "deterministic: rerun `pytest tests/sim/test_sim_failover.py -k '{name}'`"


def _settled_leader(cluster: Cluster) -> Host:
    """The one leader, once it has committed an entry of its term."""

    def settled() -> bool:
        leaders = cluster.leaders()
        return (
            len(leaders) == 1
            and leaders[0].node is not None
            and (leaders[0].node.log.term(leaders[0].node.commit_index) == leaders[0].node.term)
        )

    _until(cluster, settled, 600, "a settled leader")
    return cluster.leaders()[0]


def _cluster(
    test: str, nodes: int, seed: int, heartbeat: int, election: int, max_delay: int
) -> Cluster:
    """A simulated cluster whose failure names the pytest -k filter that replays it."""
    config = SimConfig(
        nodes=nodes,
        election_tick=election,
        heartbeat_tick=heartbeat,
        net=NetConfig(min_delay=1, max_delay=max_delay),
    )
    name = f"{test} and {nodes}-{seed}"
    return Cluster(seed, config, replay_hint=REPLAY.format(name=name))


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("seed", range(8))
def test_crashed_leader_is_replaced_within_a_few_ticks(nodes: int, seed: int) -> None:
    heartbeat = 1 + seed % 3
    cluster = _cluster("replaced_within", nodes, seed, heartbeat, election=50, max_delay=1)
    old = _settled_leader(cluster)
    assert old.node is not None
    term = old.node.term
    for _ in range(3):
        cluster.propose()
    cluster.tick(seed % 4)
    cluster.crash(old.nid)
    crashed_at = cluster.now
    _until(cluster, lambda: bool(cluster.leaders()), 100, "a new leader")
    took = cluster.now - crashed_at
    new = cluster.leaders()[0]
    assert new.node is not None
    # The last survivor in turn starts at heartbeat + 3 + 2 * (nodes - 2) ticks; a
    # pre-vote and a vote round take 4 more. The usual path needs 50 at least.
    assert took <= heartbeat + 3 + 2 * (nodes - 2) + 6, (took, cluster.context())
    assert new.node.term == term + 1, f"split vote: term {new.node.term}\n{cluster.context()}"


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("seed", range(6))
def test_lost_link_reports_never_depose_a_leader_the_cluster_hears(nodes: int, seed: int) -> None:
    """Every few ticks some followers, often all at once, are told they lost their link
    to the leader, while the network delivers everything within two ticks; and now and
    then one follower really is cut off from the leader (not from the others) for a
    while. A quorum always hears the leader, so it must stay in office, and no other
    node may ever raise the term (PreVote and the lease refuse the cut-off follower)."""
    heartbeat = 1 + seed % 3
    cluster = _cluster("never_depose", nodes, seed, heartbeat, election=30, max_delay=2)
    leader = _settled_leader(cluster)
    assert leader.node is not None
    term = leader.node.term
    rng = random.Random(seed)
    early_campaigns = 0
    heal_at: int | None = None
    cut_at = 0
    for _ in range(1200):
        followers = [h for h in cluster.live() if h is not leader]
        if heal_at is None and rng.random() < 0.02:
            cut = rng.choice(followers)
            cluster.cut(leader.nid, cut.nid)
            cluster.cut(cut.nid, leader.nid)
            cluster.link_lost(cut.nid, leader.nid)
            cut_at, heal_at = cluster.now, cluster.now + rng.randint(5, 40)
        elif heal_at is not None and cluster.now >= heal_at:
            cluster.heal()
            heal_at = None
        if rng.random() < 0.3:
            told = followers if rng.random() < 0.5 else rng.sample(followers, rng.randint(1, 2))
            for host in told:
                cluster.link_lost(host.nid, leader.nid)
        if rng.random() < 0.2:
            cluster.propose()
            cluster.forward()
        cluster.tick()
        assert (leader.node.role, leader.node.term) == (Role.LEADER, term), cluster.context()
        roles = {h.nid: h.node.role for h in cluster.live() if h.node and h is not leader}
        assert Role.CANDIDATE not in roles.values(), (roles, cluster.context())
        if heal_at is not None and cluster.now - cut_at <= heartbeat + 3 + 2 * (nodes - 2) + 1:
            early_campaigns += Role.PRE_CANDIDATE in roles.values()  # not after 30 ticks
    assert early_campaigns > 0, "no cut-off follower campaigned early: nothing was tested"
    assert cluster.counters.elections == 1
