"""A follower's reads and proposals through the leader (consensus.forwarding), and the
leader telling followers a new commit index at once."""

from __future__ import annotations

import pytest

from consensus import (
    AppendEntries,
    AppendEntriesResponse,
    NotLeader,
    ProposeRequest,
    ProposeResponse,
    ReadIndexRequest,
    ReadIndexResponse,
)
from tests.consensus.scripted import ScriptedCluster


def test_follower_reads_share_one_request_and_get_the_leaders_confirmed_commit_index() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.nodes["a"].propose(b"x")
    cluster.deliver_all()
    commit = cluster.nodes["a"].commit_index
    follower = cluster.nodes["b"]
    follower.read_index(b"r1")
    follower.read_index(b"r2")
    cluster.deliver_all()
    requests = [m for m in cluster.delivered if isinstance(m, ReadIndexRequest)]
    assert [m.request_ids for m in requests] == [(b"r1", b"r2")]
    answers = [m for m in cluster.delivered if isinstance(m, ReadIndexResponse)]
    assert [(m.recipient, m.request_ids, m.index) for m in answers] == [
        ("b", (b"r1", b"r2"), commit)
    ]
    assert [(s.request_id, s.index) for s in cluster.read_states["b"]] == [
        (b"r1", commit),
        (b"r2", commit),
    ]
    assert cluster.read_states["a"] == []
    assert follower.commit_index >= commit, "the follower can serve at once"


def test_a_follower_read_waits_for_a_heartbeat_quorum() -> None:
    """With five voters the asking follower and the leader are no quorum: the leader
    answers only after a quorum of its term confirmed it still leads, so a deposed
    leader, cut off from the majority, never answers (the read fails or times out and
    is retried), and its possibly stale commit index is never served."""
    cluster = ScriptedCluster(ids=("a", "b", "c", "d", "e"))
    cluster.elect("a")
    cluster.cut_links |= {(x, y) for x in "a" for y in "cde"} | {(y, "a") for y in "cde"}
    cluster.drop = lambda msg: (
        msg.sender == "b" and msg.recipient == "a" and not isinstance(msg, ReadIndexRequest)
    )
    cluster.nodes["b"].read_index(b"r")
    cluster.deliver_all()
    assert any(isinstance(m, ReadIndexRequest) for m in cluster.delivered)
    assert cluster.read_states["b"] == []
    assert not any(isinstance(m, ReadIndexResponse) for m in cluster.delivered)
    cluster.drop = lambda msg: False
    cluster.tick("a", cluster.nodes["a"].config.heartbeat_tick)
    cluster.deliver_all()
    assert cluster.read_states["b"] == [], "confirmed by the leader and the asker alone"
    cluster.heal()
    cluster.tick("a", cluster.nodes["a"].config.heartbeat_tick)
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["b"]] == [b"r"]


def test_with_three_voters_the_request_completes_the_quorum_and_is_answered_at_once() -> None:
    """The follower's request (of the leader's term) proves the follower had not moved
    past that term after its reads began, and the leader proves it of itself: with
    three voters that is a quorum, so no heartbeat round is needed (two messages)."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.nodes["a"].propose(b"x")
    cluster.deliver_all()
    commit = cluster.nodes["a"].commit_index
    cluster.delivered.clear()
    cluster.isolate("c")
    cluster.nodes["b"].read_index(b"r")
    cluster.deliver_all()
    assert [type(m).__name__ for m in cluster.delivered] == [
        "ReadIndexRequest",
        "ReadIndexResponse",
    ]
    assert [(s.request_id, s.index) for s in cluster.read_states["b"]] == [(b"r", commit)]


def test_a_request_of_another_term_waits_for_a_heartbeat_quorum() -> None:
    """A request sent in a later term than the leader's proves nothing about the
    leader's term (the asker may have elected another leader, which committed writes
    the leader has not seen): it joins a round, which this deposed leader never
    completes, so it never answers with its stale commit index. (No CheckQuorum: the
    cut-off leader stays in office and the others elect at once.)"""
    cluster = ScriptedCluster(check_quorum=False)
    cluster.elect("a")
    old = cluster.nodes["a"]
    cluster.isolate("a")
    cluster.elect("b")
    cluster.nodes["b"].propose(b"w")
    cluster.deliver_all()
    assert cluster.nodes["b"].commit_index > old.commit_index
    newer = cluster.nodes["c"].term
    assert old.role.value == "leader" and old.term < newer
    cluster.heal()
    old.step(ReadIndexRequest(newer, "c", "a", (b"r",)))
    sent = cluster.process_ready("a")
    assert not any(isinstance(m, ReadIndexResponse) for m in sent), "stale index answered"
    cluster.in_flight.extend(sent)
    cluster.deliver_all()
    assert not any(isinstance(m, ReadIndexResponse) for m in cluster.delivered)
    assert old.role.value == "follower", "the round told the old leader of the new term"


def test_a_new_leader_answers_follower_reads_only_after_committing_in_its_term() -> None:
    cluster = ScriptedCluster()
    cluster.drop = lambda msg: isinstance(msg, AppendEntriesResponse)  # nothing commits
    cluster.elect("a")
    leader = cluster.nodes["a"]
    assert leader.log.term(leader.commit_index) != leader.term
    cluster.nodes["b"].read_index(b"r")
    cluster.tick("a", leader.config.heartbeat_tick)
    cluster.deliver_all()
    assert cluster.read_states["b"] == [], "answered before the leader committed in its term"
    cluster.drop = lambda msg: False
    cluster.tick("a", leader.config.heartbeat_tick)
    cluster.deliver_all()
    assert leader.log.term(leader.commit_index) == leader.term
    [state] = cluster.read_states["b"]
    assert state.index == leader.commit_index


def test_a_read_on_a_node_without_a_leader_is_refused() -> None:
    cluster = ScriptedCluster()
    with pytest.raises(NotLeader):
        cluster.nodes["b"].read_index(b"r")


def test_forwarded_proposals_travel_together_and_commit_where_the_leader_put_them() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    follower = cluster.nodes["b"]
    follower.forward_proposal(b"p1", b"one")
    follower.forward_proposal(b"p2", b"two")
    cluster.deliver_all()
    [request] = [m for m in cluster.delivered if isinstance(m, ProposeRequest)]
    assert request.datas == (b"one", b"two")
    outcomes = cluster.forwarded["b"]
    assert [o.request_id for o in outcomes] == [b"p1", b"p2"]
    assert all(o.refused == "" and o.term == cluster.nodes["a"].term for o in outcomes)
    applied = {e.index: e for e in cluster.applied["b"]}
    assert [applied[o.index].data for o in outcomes] == [b"one", b"two"]
    assert [applied[o.index].term for o in outcomes] == [o.term for o in outcomes]


def test_a_proposal_sent_to_a_node_that_no_longer_leads_is_refused_as_never_proposed() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.nodes["b"].step(ProposeRequest(1, "c", "b", (b"p",), (b"data",)))
    [answer] = cluster.process_ready("b")
    assert isinstance(answer, ProposeResponse)
    assert answer.indexes == (0,) and answer.refused == "not_leader"
    last = cluster.nodes["b"].log.last_index()
    cluster.nodes["c"].step(answer)
    cluster.process_ready("c")
    [outcome] = cluster.forwarded["c"]
    assert (outcome.index, outcome.refused) == (0, "not_leader")
    assert cluster.nodes["b"].log.last_index() == last


def test_proposals_still_queued_when_the_leader_changes_are_refused() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    follower = cluster.nodes["b"]
    follower.forward_proposal(b"p", b"data")
    for _ in range(4 * follower.config.election_tick):  # b campaigns before sending
        follower.tick()
    cluster.process_ready("b")
    [outcome] = cluster.forwarded["b"]
    assert (outcome.index, outcome.refused) == (0, "not_leader")


def test_followers_learn_a_new_commit_index_without_waiting_for_a_heartbeat() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    leader.propose(b"x")
    cluster.deliver_all()  # no tick: only messages caused by the proposal
    assert leader.commit_index == leader.log.last_index()
    for follower in ("b", "c"):
        assert cluster.nodes[follower].commit_index == leader.commit_index


def test_a_follower_that_acknowledges_after_the_commit_learns_it_at_once() -> None:
    """The commit is told when the first acknowledgement completes a quorum; the later
    one must still bring its sender the commit without waiting for a heartbeat (a
    follower answering a forwarded write waits for it: measured 25 ms at the tail)."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    entry = leader.propose(b"x")
    appends = cluster.process_ready("a")
    for msg in appends:
        cluster.nodes[msg.recipient].step(msg)
    [ack_b] = cluster.process_ready("b")
    [ack_c] = cluster.process_ready("c")
    leader.step(ack_b)
    told = cluster.process_ready("a")
    assert leader.commit_index == entry.index
    assert [m.recipient for m in told] == ["b"]
    leader.step(ack_c)
    [bump] = cluster.process_ready("a")
    assert isinstance(bump, AppendEntries)
    assert (bump.recipient, bump.leader_commit, bump.entries) == ("c", entry.index, ())
