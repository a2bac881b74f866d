"""Commit-only appends (AppendEntries.commit_only): the empty appends a leader sends only
to announce its commit index go unanswered when they succeed, and nothing that needs an
answer (heartbeats, read rounds, probes, a rejection) is sent or treated as one. Also the
liveness rule the simulator found with them: a leader elected with its own removal
pending takes no proposals."""

from __future__ import annotations

import pytest

from consensus import AppendEntries, AppendEntriesResponse, Role
from consensus.errors import DropReason, ProposalDropped
from consensus.membership import ConfChange, ConfChangeType
from tests.consensus.scripted import ScriptedCluster


def _cluster() -> ScriptedCluster:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.nodes["a"].propose(b"x")
    cluster.deliver_all()
    return cluster


def _answers(
    cluster: ScriptedCluster, node_id: str, msg: AppendEntries
) -> list[AppendEntriesResponse]:
    cluster.nodes[node_id].step(msg)
    return [m for m in cluster.process_ready(node_id) if isinstance(m, AppendEntriesResponse)]


def test_the_leader_marks_only_its_commit_announcements() -> None:
    cluster = _cluster()
    appends = [m for m in cluster.sent if isinstance(m, AppendEntries) and m.sender == "a"]
    marked = [m for m in appends if m.commit_only]
    assert marked, "no commit announcement was sent"
    assert all(not m.entries and m.prev_log_index == m.leader_commit for m in marked)
    cluster.sent.clear()
    cluster.tick("a", cluster.nodes["a"].config.heartbeat_tick)  # a heartbeat round
    cluster.nodes["a"].read_index(b"r1")  # and a read round
    cluster.deliver_all()
    appends = [m for m in cluster.sent if isinstance(m, AppendEntries) and m.sender == "a"]
    assert appends and not any(m.commit_only for m in appends), appends
    assert [s.request_id for s in cluster.read_states["a"]] == [b"r1"]


def test_a_follower_answers_a_commit_only_append_only_when_it_rejects_it() -> None:
    cluster = _cluster()
    b = cluster.nodes["b"]
    term, last = b.term, b.log.last_index()
    held = AppendEntries(term, "a", "b", last, b.log.term(last), (), last, 0, True)
    assert _answers(cluster, "b", held) == []
    missing = AppendEntries(term, "a", "b", last + 5, term, (), last + 5, 0, True)
    rejections = _answers(cluster, "b", missing)
    assert len(rejections) == 1, "a rejected commit-only append went unanswered: no probe"
    assert not rejections[0].success
    answers = _answers(
        cluster, "b", AppendEntries(term, "a", "b", last, held.prev_log_term, (), last)
    )
    assert len(answers) == 1 and answers[0].success, "a plain append went unanswered"


def test_unanswered_announcements_leave_replication_and_reads_working() -> None:
    """Many writes, each committed with announcements nobody answers: the followers
    still apply everything, the leader still sees their progress and serves reads."""
    cluster = _cluster()
    a = cluster.nodes["a"]
    for round_ in range(20):
        a.propose(b"w%d" % round_)
        cluster.deliver_all()
    a.read_index(b"r2")
    cluster.tick("a", a.config.heartbeat_tick)
    cluster.deliver_all()
    last = a.log.last_index()
    assert a.role is Role.LEADER and a.commit_index == last
    for peer in ("b", "c"):
        assert cluster.nodes[peer].commit_index == last
        assert a.progress()[peer].match == last
    assert [s.request_id for s in cluster.read_states["a"]] == [b"r2"]


def test_a_leader_elected_with_its_own_removal_pending_takes_no_proposals() -> None:
    """c inherits the uncommitted change removing it. Were it to append proposals, it
    would step down (once the change commits) with a log longer than the remaining
    voter's, refuse that voter's votes, and no leader could ever be elected (swarm
    seed 361 with commit-only appends). It commits only its no-op, then steps down."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    a, b, c = (cluster.nodes[n] for n in "abc")
    cluster.cut_links |= {("a", "b"), ("c", "a")}  # only c gets the change; a never hears
    a.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    cluster.deliver_all()
    assert c.log.last_index() > c.commit_index  # c holds its removal, uncommitted
    cluster.isolate("a")
    cluster.tick("b", 4 * b.config.election_tick)  # b's lease on a runs out
    cluster.drop = lambda msg: isinstance(msg, AppendEntriesResponse)  # c commits nothing yet
    cluster.tick("c", 4 * c.config.election_tick)
    cluster.deliver_all()
    assert c.role is Role.LEADER
    with pytest.raises(ProposalDropped) as refused:
        c.propose(b"x")
    assert refused.value.reason is DropReason.TRANSFERRING_LEADERSHIP
    cluster.drop = lambda msg: False
    cluster.tick("c", c.config.heartbeat_tick)
    cluster.deliver_all()  # c's no-op commits with b: the removal takes effect
    assert c.role is not Role.LEADER and "c" not in c.voters
    assert b.log.last_index() == c.log.last_index()
    cluster.heal()
    for node_id in "ac":  # a (cut off, still leading term 2) and c let their leases run out
        cluster.tick(node_id, 4 * c.config.election_tick)
    cluster.deliver_all()
    cluster.elect("b")  # voters a and b now
    b.propose(b"y")
    cluster.deliver_all()
    assert b.commit_index == b.log.last_index() == a.commit_index
