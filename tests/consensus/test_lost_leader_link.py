"""RaftNode.peer_unreachable: a follower told that its link to the leader broke
campaigns within a few ticks (consensus.election_timer), but only about its leader,
only with PreVote and CheckQuorum, and never past a node that still hears the leader."""

from __future__ import annotations

from consensus import Role
from tests.consensus.scripted import ScriptedCluster

ELECTION, HEARTBEAT = 50, 2


def _tick_all(cluster: ScriptedCluster, ticks: int, among: tuple[str, ...]) -> None:
    for _ in range(ticks):
        for node_id in among:
            cluster.tick(node_id)
        cluster.deliver_all()


def test_survivors_told_the_leader_is_gone_elect_one_of_them_within_a_few_ticks() -> None:
    cluster = ScriptedCluster(election_tick=ELECTION, heartbeat_tick=HEARTBEAT)
    cluster.elect("a")
    term = cluster.nodes["a"].term
    cluster.isolate("a")  # as if killed
    for survivor in ("b", "c"):
        cluster.nodes[survivor].peer_unreachable("a")
    # b goes first (ids sorted, the leader left out): heartbeat + 3 ticks.
    _tick_all(cluster, HEARTBEAT + 3, ("b", "c"))
    assert cluster.nodes["b"].role is Role.LEADER
    assert cluster.nodes["b"].term == term + 1
    assert cluster.nodes["c"].leader_id == "b"


def test_without_the_report_nobody_campaigns_that_soon() -> None:
    cluster = ScriptedCluster(election_tick=ELECTION, heartbeat_tick=HEARTBEAT)
    cluster.elect("a")
    cluster.isolate("a")
    _tick_all(cluster, ELECTION - 1, ("b", "c"))
    assert [cluster.nodes[n].role for n in ("b", "c")] == [Role.FOLLOWER, Role.FOLLOWER]


def test_a_report_about_another_peer_or_without_prevote_changes_nothing() -> None:
    for config, about in (({}, "c"), ({"pre_vote": False}, "a"), ({"check_quorum": False}, "a")):
        cluster = ScriptedCluster(election_tick=ELECTION, heartbeat_tick=HEARTBEAT, **config)
        cluster.elect("a")
        cluster.isolate("a")
        cluster.nodes["b"].peer_unreachable(about)
        _tick_all(cluster, HEARTBEAT + 5, ("b", "c"))
        assert cluster.nodes["b"].role is Role.FOLLOWER, (config, about)


def test_a_cut_off_follower_gets_no_prevote_from_one_that_still_hears_the_leader() -> None:
    """c really lost the leader, b was told so wrongly: b hears a's heartbeats, so its
    shortened lease still holds and it refuses c's pre-vote; a stays in office."""
    cluster = ScriptedCluster(election_tick=ELECTION, heartbeat_tick=HEARTBEAT)
    cluster.elect("a")
    term = cluster.nodes["a"].term
    cluster.cut_links |= {("a", "c"), ("c", "a")}
    cluster.nodes["c"].peer_unreachable("a")
    for _ in range(3 * ELECTION):
        cluster.nodes["b"].peer_unreachable("a")
        _tick_all(cluster, 1, ("a", "b", "c"))
        assert cluster.nodes["c"].role in (Role.FOLLOWER, Role.PRE_CANDIDATE)
    assert cluster.nodes["c"].term == term
    cluster.heal()
    _tick_all(cluster, HEARTBEAT, ("a", "b", "c"))
    assert (cluster.nodes["a"].role, cluster.nodes["a"].term) == (Role.LEADER, term)
    assert cluster.nodes["c"].leader_id == "a"
