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


def test_a_follower_that_has_not_acknowledged_yet_learns_the_commit_at_once() -> None:
    """The commit is told when the first acknowledgement completes a quorum, also to
    the follower whose own fsync is still running: it holds the entry (sent in order),
    and waiting for its acknowledgement would cost a follower answering a forwarded
    write one more round trip. It applies the entry only after persisting it."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    entry = leader.propose(b"x")
    appends = cluster.process_ready("a")
    for msg in appends:
        cluster.nodes[msg.recipient].step(msg)
    [ack_b] = cluster.process_ready("b")
    leader.step(ack_b)
    told = cluster.process_ready("a")
    assert leader.commit_index == entry.index
    assert sorted(m.recipient for m in told) == ["b", "c"]
    [bump] = [m for m in told if m.recipient == "c"]
    assert isinstance(bump, AppendEntries)
    assert (bump.prev_log_index, bump.leader_commit, bump.entries) == (entry.index, entry.index, ())
    follower = cluster.nodes["c"]
    follower.step(bump)
    assert follower.commit_index == entry.index
    ready = follower.ready()
    assert (ready.entries, ready.committed) == ((entry,), (entry,)), "persisted, then applied"
    follower.advance(ready)
    for ack in ready.messages:
        leader.step(ack)
    assert cluster.process_ready("a") == [], "c knows the commit already"


def test_a_commit_told_to_a_follower_that_lost_the_entry_is_rejected_and_repaired() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    entry = leader.propose(b"x")
    appends = cluster.process_ready("a")
    # the append to c is lost, and b hears nothing of the leader's own fsync
    [to_b] = [m for m in appends if m.recipient == "b" and isinstance(m, AppendEntries)]
    cluster.nodes["b"].step(to_b)
    [ack_b] = cluster.process_ready("b")
    leader.step(ack_b)
    [bump] = [m for m in cluster.process_ready("a") if m.recipient == "c"]
    cluster.nodes["c"].step(bump)
    [rejection] = cluster.process_ready("c")
    assert isinstance(rejection, AppendEntriesResponse) and not rejection.success
    leader.step(rejection)
    cluster.deliver_all()
    assert cluster.nodes["c"].commit_index == entry.index
    assert cluster.applied["c"][-1] == entry


def test_while_the_leader_persists_a_commit_the_followers_reached_goes_out_early() -> None:
    """`early_messages` between `ready` and `advance`: the answer to a forwarded
    proposal and the commit two followers' acknowledgements reached leave while the
    leader's own disk syncs; the leader applies the entry only after its own persist."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader, origin = cluster.nodes["a"], cluster.nodes["b"]
    origin.forward_proposal(b"r", b"data")
    [request] = cluster.process_ready("b")
    leader.step(request)
    ready = leader.ready()  # the driver is now syncing it
    [entry] = ready.entries
    early = ready.messages_before_persist
    assert {type(m) for m in early} == {AppendEntries, ProposeResponse}
    for msg in early:
        cluster.nodes[msg.recipient].step(msg)
    for follower in ("b", "c"):
        for ack in cluster.process_ready(follower):
            leader.step(ack)
    assert leader.commit_index == entry.index
    told = leader.early_messages()
    assert sorted((m.recipient, m.leader_commit) for m in told) == [
        ("b", entry.index),
        ("c", entry.index),
    ]
    assert origin.early_messages() == (), "a follower's messages wait for its disk"
    cluster.storages["a"].save(ready.hard_state, ready.entries)
    leader.advance(ready)
    assert entry in leader.ready().committed


def test_reads_asked_while_a_request_is_in_flight_share_the_next_one() -> None:
    """One ReadIndexRequest in flight at a time: reads asked meanwhile wait for its
    answer and then travel together (fewer frames, system calls and Readys per read)."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    follower = cluster.nodes["b"]
    follower.read_index(b"r1")
    [first] = cluster.process_ready("b")
    assert isinstance(first, ReadIndexRequest) and first.request_ids == (b"r1",)
    follower.read_index(b"r2")
    follower.read_index(b"r3")
    assert cluster.process_ready("b") == [], "a second request went out before the answer"
    cluster.in_flight.append(first)
    cluster.deliver_all()
    requests = [m.request_ids for m in cluster.delivered if isinstance(m, ReadIndexRequest)]
    assert requests == [(b"r1",), (b"r2", b"r3")]
    assert [s.request_id for s in cluster.read_states["b"]] == [b"r1", b"r2", b"r3"]


def test_a_lost_read_request_holds_the_next_one_back_only_for_a_few_ticks() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    follower = cluster.nodes["b"]
    follower.read_index(b"lost")
    [lost] = cluster.process_ready("b")  # never delivered
    follower.read_index(b"r")
    retry_ticks = 2 * follower.config.heartbeat_tick
    cluster.tick("b", retry_ticks - 1)
    assert not any(isinstance(m, ReadIndexRequest) for m in cluster.process_ready("b"))
    cluster.tick("b")
    [request] = [m for m in cluster.process_ready("b") if isinstance(m, ReadIndexRequest)]
    assert request.request_ids == (b"r",)
    cluster.in_flight.append(request)
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["b"]] == [b"r"]
    assert lost.request_ids == (b"lost",)


def test_a_new_leader_is_asked_at_once_whatever_the_old_one_owed() -> None:
    cluster = ScriptedCluster(check_quorum=False)  # the others elect at once
    cluster.elect("a")
    follower = cluster.nodes["c"]
    follower.read_index(b"unanswered")
    cluster.process_ready("c")  # to a, which is cut off before it answers
    cluster.isolate("a")
    cluster.elect("b")
    follower.read_index(b"r")
    [request] = [m for m in cluster.process_ready("c") if isinstance(m, ReadIndexRequest)]
    assert (request.recipient, request.request_ids) == ("b", (b"r",))


def test_a_read_is_unsent_only_until_its_request_leaves_and_never_on_the_leader() -> None:
    """The runtime lets later reads share a read's request id while this holds
    (kvstore.runtime.via_leader): the leader answers after receiving the request."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    follower, leader = cluster.nodes["b"], cluster.nodes["a"]
    follower.read_index(b"r1")
    assert follower.read_unsent(b"r1")
    [first] = cluster.process_ready("b")
    assert not follower.read_unsent(b"r1")
    follower.read_index(b"r2")  # held back: r1's request is in flight
    follower.read_index(b"r3")
    assert cluster.process_ready("b") == []
    assert follower.read_unsent(b"r3") and not follower.read_unsent(b"r2")
    leader.read_index(b"own")
    assert not leader.read_unsent(b"own")
    cluster.in_flight.append(first)
    cluster.deliver_all()
    assert not follower.read_unsent(b"r3")
