"""Snapshots, log compaction and one-at-a-time membership changes in the core."""

from __future__ import annotations

import pytest

from consensus import (
    ConfChange,
    ConfChangeType,
    DropReason,
    InstallSnapshot,
    InvalidConfChange,
    ProposalDropped,
    RequestVote,
    Role,
)
from tests.consensus.scripted import ScriptedCluster


def add_learner(node_id: str) -> ConfChange:
    return ConfChange(ConfChangeType.ADD_LEARNER, node_id, b"urls")


def settle(cluster: ScriptedCluster, leader: str, rounds: int = 3) -> None:
    for _ in range(rounds):
        cluster.tick(leader)
        cluster.deliver_all()


def test_follower_behind_a_compacted_log_catches_up_by_snapshot() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.isolate("c")
    for number in range(10):
        cluster.nodes["a"].propose(b"%d" % number)
    settle(cluster, "a")
    cluster.compact("a")
    assert cluster.storages["a"].first_index() == 13  # bootstrap, no-op and ten writes
    cluster.nodes["a"].propose(b"after")
    cluster.heal()
    settle(cluster, "a", rounds=4)
    assert any(isinstance(m, InstallSnapshot) and m.recipient == "c" for m in cluster.delivered)
    follower = cluster.nodes["c"]
    assert cluster.storages["c"].snapshot_data() == b"state@12"
    assert follower.log.first_index() == 13
    assert follower.commit_index == cluster.nodes["a"].commit_index == 13
    assert [e.data for e in cluster.applied["c"]] == [b"after"]


def test_restart_after_compaction_starts_from_the_snapshot() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.nodes["a"].propose(b"v")
    settle(cluster, "a")
    cluster.compact("b")
    cluster.restart("b")
    node = cluster.nodes["b"]
    assert node.log.first_index() == 4 and node.applied_index == 3
    settle(cluster, "a")
    assert node.commit_index == 3


def test_learner_replicates_without_voting_then_is_promoted() -> None:
    cluster = ScriptedCluster(ids=("a", "b", "c", "d"), joining=("d",))
    cluster.elect("a")
    leader = cluster.nodes["a"]
    leader.propose_conf_change(add_learner("d"))
    settle(cluster, "a")
    assert leader.membership.learners == ("d",)
    assert cluster.nodes["d"].membership.learners == ("d",)
    assert cluster.nodes["d"].log.last_index() == leader.log.last_index()
    cluster.tick("d", 100)  # a learner never campaigns
    assert cluster.nodes["d"].role is Role.FOLLOWER
    leader.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, "d"))
    settle(cluster, "a")
    assert all(n.membership.voters == ("a", "b", "c", "d") for n in cluster.nodes.values())
    cluster.isolate("b")
    cluster.isolate("c")
    leader.propose(b"needs three of four")
    settle(cluster, "a")
    assert leader.commit_index < leader.log.last_index(), "quorum is now 3 of 4"


def test_membership_change_waits_for_the_leaders_first_commit_in_its_term() -> None:
    cluster = ScriptedCluster()
    cluster.isolate("b")
    cluster.isolate("c")
    node = cluster.nodes["a"]
    node.tick()
    while node.role is not Role.LEADER:
        # win the election by hand-delivered votes only, so the no-op stays uncommitted
        for msg in cluster.process_ready("a"):
            if isinstance(msg, RequestVote):
                cluster.nodes[msg.recipient].step(msg)
                for reply in cluster.process_ready(msg.recipient):
                    node.step(reply)
        node.tick()
    with pytest.raises(ProposalDropped) as caught:
        node.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    assert caught.value.reason is DropReason.TERM_NOT_COMMITTED


def test_only_one_membership_change_at_a_time() -> None:
    cluster = ScriptedCluster(ids=("a", "b", "c", "d", "e"), joining=("d", "e"))
    cluster.elect("a")
    leader = cluster.nodes["a"]
    leader.propose_conf_change(add_learner("d"))
    with pytest.raises(ProposalDropped) as caught:
        leader.propose_conf_change(add_learner("e"))
    assert caught.value.reason is DropReason.CONF_CHANGE_PENDING
    settle(cluster, "a")
    leader.propose_conf_change(add_learner("e"))


def test_leader_cannot_remove_itself_and_strangers_cannot_be_removed() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    with pytest.raises(InvalidConfChange):
        cluster.nodes["a"].propose_conf_change(ConfChange(ConfChangeType.REMOVE, "a"))
    with pytest.raises(InvalidConfChange):
        cluster.nodes["a"].propose_conf_change(ConfChange(ConfChangeType.REMOVE, "zz"))


@pytest.mark.parametrize(
    ("pre_vote", "check_quorum"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_removed_node_cannot_disrupt_the_cluster(pre_vote: bool, check_quorum: bool) -> None:
    """Also without PreVote and CheckQuorum: a candidate outside the voter's
    configuration whose log is behind cannot even make it change term."""
    cluster = ScriptedCluster(pre_vote=pre_vote, check_quorum=check_quorum)
    cluster.elect("a")
    leader = cluster.nodes["a"]
    cluster.isolate("c")  # c never learns that it was removed
    leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    settle(cluster, "a")
    assert leader.membership.voters == ("a", "b")
    term = leader.term
    cluster.heal()
    for _ in range(60):
        cluster.tick("c")
        cluster.tick("a")
        cluster.deliver_all()
    assert leader.role is Role.LEADER and leader.term == term


def run(cluster: ScriptedCluster, ids: tuple[str, ...], ticks: int) -> None:
    """Let time pass on `ids` together, delivering everything after each tick."""
    for _ in range(ticks):
        for node_id in ids:
            cluster.tick(node_id)
        cluster.deliver_all()


def test_a_learner_promoted_without_knowing_it_votes() -> None:
    """etcd-io/raft's example (and soak seed 2383): the promotion of c commits on {a, b}
    before c hears of it; when a fails, only b can win, and it needs c's vote."""
    cluster = ScriptedCluster(ids=("a", "b", "c"), joining=("c",))
    cluster.elect("a")
    leader = cluster.nodes["a"]
    leader.propose_conf_change(add_learner("c"))
    settle(cluster, "a")
    cluster.isolate("c")
    leader.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, "c"))
    settle(cluster, "a")
    assert cluster.nodes["b"].membership.voters == ("a", "b", "c")
    assert cluster.nodes["c"].membership.learners == ("c",)
    cluster.heal()
    cluster.isolate("a")
    run(cluster, ("b", "c"), 8 * leader.config.election_tick)
    assert cluster.nodes["b"].role is Role.LEADER, "the learner must vote for b"
    assert cluster.nodes["c"].membership.voters == ("a", "b", "c")


@pytest.mark.parametrize("c_misses", ["promotion", "addition"])
def test_a_voter_votes_for_a_candidate_whose_promotion_it_has_not_learned(
    c_misses: str,
) -> None:
    """The mirror case: d knows it was promoted, c does not (c sees a learner, or a
    stranger when it missed the addition too). With a down, d holds the newest log, so
    only d can win, and it needs c's vote."""
    cluster = ScriptedCluster(ids=("a", "b", "c", "d"), joining=("d",))
    cluster.elect("a")
    leader = cluster.nodes["a"]
    if c_misses == "addition":
        cluster.isolate("c")
    leader.propose_conf_change(add_learner("d"))
    settle(cluster, "a")
    cluster.isolate("c")
    leader.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, "d"))
    settle(cluster, "a")
    assert cluster.nodes["d"].membership.voters == ("a", "b", "c", "d")
    assert "d" not in cluster.nodes["c"].membership.voters
    cluster.cut_links.add(("a", "b"))
    entry = leader.propose(b"on a and d only")
    settle(cluster, "a")
    assert leader.commit_index < entry.index, "3 of 4 are needed"
    cluster.heal()
    cluster.isolate("a")
    run(cluster, ("b", "c", "d"), 10 * leader.config.election_tick)
    new_leader = cluster.nodes["d"]
    assert new_leader.role is Role.LEADER, "c must vote for d"
    assert new_leader.commit_index > entry.index
    assert cluster.nodes["c"].membership.voters == ("a", "b", "c", "d")


def test_membership_survives_a_restart() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.nodes["a"].propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    settle(cluster, "a")
    cluster.restart("b")
    assert cluster.nodes["b"].membership.voters == ("a", "b")
    cluster.compact("a")
    cluster.restart("a")
    assert cluster.nodes["a"].membership.voters == ("a", "b")
