"""The core's public API for drivers: replication progress, the snapshot awaiting
installation, and why a proposal was refused."""

from __future__ import annotations

import dataclasses

import pytest

import consensus
from consensus import (
    ConfChange,
    ConfChangeType,
    ConsensusError,
    DropReason,
    InstallSnapshot,
    PeerProgress,
    ProposalDropped,
    Role,
)
from tests.consensus.scripted import ScriptedCluster


def settle(cluster: ScriptedCluster, leader: str, rounds: int = 3) -> None:
    for _ in range(rounds):
        cluster.tick(leader)
        cluster.deliver_all()


# --- progress() ------------------------------------------------------------------------


def test_leader_reports_every_members_progress_after_replication() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    leader.propose(b"v")
    settle(cluster, "a")
    last = leader.log.last_index()
    progress = leader.progress()
    assert set(progress) == {"a", "b", "c"}
    for peer in ("b", "c"):
        assert progress[peer] == PeerProgress(last, last + 1, "replicate", recent_active=True)
    assert progress["a"].match == last, "the leader's own entry is its durable log"
    assert cluster.nodes["b"].progress() == {} and cluster.nodes["c"].progress() == {}


def test_progress_shows_a_lagging_follower_and_who_answered_lately() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    before = leader.progress()
    cluster.isolate("c")
    leader.propose(b"v")
    for _ in range(leader.config.election_tick):  # one CheckQuorum round
        cluster.tick("a")
        cluster.deliver_all()
    progress = leader.progress()
    assert progress["b"].match == leader.log.last_index()
    assert progress["c"].match == before["c"].match < leader.log.last_index()
    assert progress["b"].recent_active and not progress["c"].recent_active
    assert before["b"].match < progress["b"].match, "a returned mapping does not change"
    with pytest.raises(dataclasses.FrozenInstanceError):
        progress["b"].match = 0  # type: ignore[misc]


def test_progress_includes_learners_and_is_empty_after_stepping_down() -> None:
    cluster = ScriptedCluster(ids=("a", "b", "c", "d"), joining=("d",))
    cluster.elect("a")
    leader = cluster.nodes["a"]
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d", b"urls"))
    settle(cluster, "a")
    assert leader.progress()["d"].match == leader.commit_index
    leader.transfer_leadership("b")
    cluster.deliver_all()
    assert leader.role is Role.FOLLOWER and leader.progress() == {}
    assert set(cluster.nodes["b"].progress()) == {"a", "b", "c", "d"}


# --- pending_snapshot --------------------------------------------------------------------


def test_pending_snapshot_is_set_by_install_snapshot_and_cleared_by_advance() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.isolate("c")
    for number in range(10):
        cluster.nodes["a"].propose(b"%d" % number)
    settle(cluster, "a")
    cluster.compact("a")
    cluster.heal()
    cluster.drop = lambda msg: isinstance(msg, InstallSnapshot)  # the test delivers it
    for _ in range(10 * cluster.nodes["a"].config.election_tick):
        # c's pipeline stalls, c is probed, and the entries it lacks are compacted
        settle(cluster, "a", rounds=1)
        snapshots = [m for m in cluster.sent if isinstance(m, InstallSnapshot)]
        if snapshots:
            break
    message = snapshots[0]
    follower = cluster.nodes["c"]
    assert follower.pending_snapshot is None

    follower.step(message)
    assert follower.pending_snapshot == message.snapshot
    ready = follower.ready()
    assert ready.snapshot == message.snapshot
    assert follower.pending_snapshot == message.snapshot, "until the driver installed it"
    data = cluster.storages["a"].snapshot_data()
    assert data is not None
    cluster.storages["c"].apply_snapshot(ready.snapshot, data)
    cluster.storages["c"].save(ready.hard_state, ready.entries)
    follower.advance(ready)
    assert follower.pending_snapshot is None

    follower.step(message)  # a duplicate: the follower holds it already
    assert follower.pending_snapshot is None


# --- ProposalDropped.reason ----------------------------------------------------------------


def test_transfer_refuses_membership_changes_with_its_reason() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.isolate("b")
    cluster.nodes["a"].propose(b"behind")
    cluster.deliver_all()
    cluster.nodes["a"].transfer_leadership("b")
    with pytest.raises(ProposalDropped) as caught:
        cluster.nodes["a"].propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    assert caught.value.reason is DropReason.TRANSFERRING_LEADERSHIP


def test_drop_reasons_are_public_and_typed() -> None:
    assert {"DropReason", "PeerProgress", "ProposalDropped"} <= set(consensus.__all__)
    error = ProposalDropped(DropReason.TOO_MANY_UNCOMMITTED, "9 entries await commitment")
    assert isinstance(error, ConsensusError)
    assert error.reason.value == "too_many_uncommitted"
    assert str(error) == "9 entries await commitment"
