"""Unit tests of the core, each named after the rule of the Raft paper it checks."""

from __future__ import annotations

import pytest

from consensus import (
    AppendEntries,
    AppendEntriesResponse,
    DropReason,
    Entry,
    EntryType,
    Message,
    NotLeader,
    ProposalDropped,
    RequestVote,
    RequestVoteResponse,
    Role,
)
from tests.consensus.scripted import ScriptedCluster


def test_new_leader_appends_and_commits_a_noop_of_its_term() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    bootstrap, noop = cluster.applied["a"]
    assert bootstrap.type is EntryType.CONF_CHANGE and bootstrap.index == 1
    assert (noop.type, noop.term) == (EntryType.NOOP, leader.term)
    assert leader.commit_index == 2


def test_figure_8_leader_counts_replicas_only_for_entries_of_its_own_term() -> None:
    cluster = ScriptedCluster()
    cluster.preload("a", [1, 2], term=2)
    cluster.preload("b", [1], term=2)
    cluster.preload("c", [1], term=2)
    cluster.drop = lambda msg: isinstance(msg, AppendEntries)  # replies are scripted below
    cluster.elect("a")
    leader = cluster.nodes["a"]
    assert leader.term == 3 and leader.log.last_index() == 3  # term-2 entry + own no-op
    leader.step(AppendEntriesResponse(3, "b", "a", success=True, match_index=2))
    assert leader.commit_index == 0, "an old-term entry on a majority must not be committed"
    leader.step(AppendEntriesResponse(3, "b", "a", success=True, match_index=3))
    assert leader.commit_index == 3, "the current-term entry commits the older one with it"


def test_vote_is_refused_to_a_candidate_whose_log_is_shorter() -> None:
    cluster = ScriptedCluster()
    cluster.preload("b", [1, 1], term=1)
    voter = cluster.nodes["b"]
    voter.step(RequestVote(2, "c", "b", last_log_index=1, last_log_term=1))
    [reply] = cluster.process_ready("b")
    assert isinstance(reply, RequestVoteResponse) and not reply.granted
    assert voter.vote is None


def test_vote_is_refused_to_a_candidate_whose_last_term_is_older() -> None:
    cluster = ScriptedCluster()
    cluster.preload("b", [1, 2], term=2)
    voter = cluster.nodes["b"]
    voter.step(RequestVote(3, "c", "b", last_log_index=5, last_log_term=1))
    [reply] = cluster.process_ready("b")
    assert isinstance(reply, RequestVoteResponse) and not reply.granted


def test_granted_vote_is_in_the_same_ready_as_its_response_so_it_is_persisted_first() -> None:
    cluster = ScriptedCluster()
    voter = cluster.nodes["b"]
    voter.step(RequestVote(2, "c", "b", last_log_index=1, last_log_term=1))
    ready = voter.ready()
    assert ready.hard_state is not None and ready.hard_state.vote == "c"
    assert [m.granted for m in ready.messages if isinstance(m, RequestVoteResponse)] == [True]


def test_one_vote_per_term_survives_a_restart() -> None:
    cluster = ScriptedCluster()
    cluster.nodes["b"].step(RequestVote(2, "c", "b", last_log_index=1, last_log_term=1))
    cluster.process_ready("b")
    cluster.restart("b")
    cluster.nodes["b"].step(RequestVote(2, "a", "b", last_log_index=9, last_log_term=1))
    [reply] = cluster.process_ready("b")
    assert isinstance(reply, RequestVoteResponse) and not reply.granted


def test_stale_leader_steps_down_when_it_meets_a_higher_term() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.isolate("a")
    cluster.tick("c", 10)  # c stops trusting the lease of the silent leader
    cluster.elect("b")
    old = cluster.nodes["a"]
    assert old.role is Role.LEADER and old.term < cluster.nodes["b"].term
    cluster.heal()
    cluster.tick("a", old.config.heartbeat_tick)
    cluster.deliver_all()
    assert old.role is Role.FOLLOWER
    cluster.tick("b")
    cluster.deliver_all()
    assert old.leader_id == "b"
    with pytest.raises(NotLeader):
        old.propose(b"x")


def test_check_quorum_leader_without_a_quorum_steps_down() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.isolate("a")
    leader = cluster.nodes["a"]
    for _ in range(2 * leader.config.election_tick):
        leader.tick()
        cluster.deliver_all()
    assert leader.role is Role.FOLLOWER


def test_prevote_partitioned_node_returning_does_not_depose_the_leader() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    term = cluster.nodes["a"].term
    cluster.isolate("c")
    for _ in range(10 * cluster.nodes["c"].config.election_tick):
        cluster.nodes["c"].tick()
        cluster.deliver_all()
    assert cluster.nodes["c"].term == term, "pre-votes must not raise the term"
    cluster.heal()
    for _ in range(3):
        cluster.tick("a")
        cluster.deliver_all()
    assert cluster.nodes["a"].role is Role.LEADER and cluster.nodes["a"].term == term
    assert cluster.nodes["c"].leader_id == "a"


def test_without_prevote_a_returning_node_disrupts_the_leader() -> None:
    """The counterpart of the test above: it shows what PreVote prevents."""
    cluster = ScriptedCluster(pre_vote=False, check_quorum=False)
    cluster.elect("a")
    term = cluster.nodes["a"].term
    cluster.isolate("c")
    cluster.tick("c", 4 * cluster.nodes["c"].config.election_tick)
    cluster.deliver_all()
    assert cluster.nodes["c"].term > term
    cluster.heal()
    cluster.tick("a")
    cluster.deliver_all()
    assert cluster.nodes["a"].term > term


def test_a_candidate_that_cannot_win_does_not_postpone_an_election() -> None:
    """Only a leader's message or a granted vote restarts the election timer (§3.4).
    Found by hypothesis: without PreVote, a voter with a stale log campaigning more
    often than its peer's election timeout kept the only electable node from ever
    campaigning, and the two stayed candidates for ever."""
    cluster = ScriptedCluster(pre_vote=False, check_quorum=False)
    cluster.elect("a")
    cluster.isolate("c")
    cluster.nodes["a"].propose(b"c misses this")
    cluster.deliver_all()
    cluster.heal()
    cluster.isolate("a")
    follower, stale = cluster.nodes["b"], cluster.nodes["c"]
    stale_term = follower.term
    for tick in range(4 * follower.config.election_tick):
        if tick % 4 == 0 and follower.role is not Role.LEADER:
            stale_term += 1  # c campaigns every 4 ticks, scripted by hand
            last_index, last_term = stale.log.last_index(), stale.log.last_term()
            follower.step(RequestVote(stale_term, "c", "b", last_index, last_term))
        follower.tick()
        cluster.deliver_all()
    assert follower.role is Role.LEADER, "b must campaign despite c's requests"


def test_read_index_refused_before_the_leaders_first_commit_in_its_term() -> None:
    cluster = ScriptedCluster()
    cluster.drop = lambda msg: isinstance(msg, AppendEntries) and bool(msg.entries)
    cluster.elect("a")
    leader = cluster.nodes["a"]
    assert leader.commit_index == 1  # the bootstrap entry, not yet the no-op of its term
    leader.read_index(b"r1")
    for _ in range(5):
        leader.tick()
        cluster.deliver_all()
    assert cluster.read_states["a"] == [], "no read before the no-op of the term commits"
    cluster.drop = lambda msg: False
    for _ in range(2 * leader.config.election_tick):  # lost appends are re-sent after a stall
        leader.tick()
        cluster.deliver_all()
    [state] = cluster.read_states["a"]
    assert state.request_id == b"r1" and state.index == leader.commit_index == 2


def test_read_index_needs_a_quorum_of_heartbeat_acknowledgements() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.isolate("a")
    cluster.nodes["a"].read_index(b"r1")
    cluster.deliver_all()
    assert cluster.read_states["a"] == []
    cluster.heal()
    cluster.nodes["a"].read_index(b"r2")
    cluster.deliver_all()
    assert cluster.read_states["a"] == [], "r2 waits for r1's round, whose acks were lost"
    cluster.tick("a", cluster.nodes["a"].config.heartbeat_tick)  # the heartbeat confirms it
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["a"]] == [b"r1", b"r2"]


def test_reads_asked_while_a_round_is_in_flight_share_the_next_round() -> None:
    """One round in flight at a time: reads that arrive meanwhile cannot join it (its
    heartbeats left before they began), so they wait and share the next one, however
    many Readys they arrive in."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    cluster.delivered.clear()
    leader.read_index(b"r1")
    first = cluster.process_ready("a")
    for rid in (b"r2", b"r3"):
        leader.read_index(rid)
        assert cluster.process_ready("a") == [], "a second round while one is in flight"
    first_seq = {m.read_seq for m in first if isinstance(m, AppendEntries)}
    cluster.in_flight.extend(first)
    cluster.deliver_all()
    heartbeats = [m for m in cluster.delivered if isinstance(m, AppendEntries) and not m.entries]
    assert len(heartbeats) == 2, "two rounds, each to one follower (a quorum with us)"
    assert {m.read_seq for m in heartbeats} == {min(first_seq), min(first_seq) + 1}
    assert [s.request_id for s in cluster.read_states["a"]] == [b"r1", b"r2", b"r3"]


def test_conflict_back_off_skips_a_whole_term_per_round_trip() -> None:
    """Figure 7's follower (f): the leader must not walk back one index at a time."""
    cluster = ScriptedCluster()
    cluster.preload("a", [1, 1, 1, 4, 4, 5, 5, 6, 6, 6], term=6)
    cluster.preload("c", [1, 1, 1, 4, 4, 5, 5, 6, 6, 6], term=6)
    cluster.preload("b", [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], term=3)
    cluster.elect("a")
    cluster.tick("a")
    cluster.deliver_all()
    rejections = [
        m
        for m in cluster.delivered
        if isinstance(m, AppendEntriesResponse) and m.sender == "b" and not m.success
    ]
    assert 1 <= len(rejections) <= 3
    expected = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7]
    assert [e.term for e in cluster.storages["b"].entries(1, 12)] == expected


def test_follower_never_truncates_on_a_delayed_shorter_append() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    for value in (b"1", b"2", b"3"):
        cluster.nodes["a"].propose(value)
    cluster.deliver_all()
    follower = cluster.nodes["b"]
    last = follower.log.last_index()
    stale = AppendEntries(1, "a", "b", 1, 1, (Entry(1, 2, b"1"),), leader_commit=0)
    follower.step(stale)
    assert follower.log.last_index() == last


def test_flow_control_bounds_inflight_appends_to_an_unresponsive_follower() -> None:
    cluster = ScriptedCluster(max_inflight=4)
    cluster.elect("a")
    cluster.isolate("c")
    cluster.sent.clear()
    leader = cluster.nodes["a"]
    for number in range(200):
        leader.propose(b"%d" % number)
        cluster.deliver_all()
    appends_to_c = [
        m for m in cluster.sent if isinstance(m, AppendEntries) and m.recipient == "c" and m.entries
    ]
    appends_to_b = [
        m for m in cluster.sent if isinstance(m, AppendEntries) and m.recipient == "b" and m.entries
    ]
    assert len(appends_to_c) == 4, "at most max_inflight unacknowledged appends"
    assert len(appends_to_b) == 200


def test_batches_respect_the_byte_limit() -> None:
    cluster = ScriptedCluster(max_batch_bytes=1000)
    cluster.elect("a")
    cluster.isolate("b")
    cluster.isolate("c")
    leader = cluster.nodes["a"]
    for _ in range(20):
        leader.propose(b"x" * 300)
    cluster.deliver_all()  # the single-entry appends are lost on the cut links
    cluster.heal()
    for _ in range(2 * leader.config.election_tick):  # lost appends are re-sent after a stall
        leader.tick()
        cluster.deliver_all()
    sizes = [
        sum(e.size() for e in m.entries)
        for m in cluster.delivered
        if isinstance(m, AppendEntries) and len(m.entries) > 1
    ]
    assert sizes and max(sizes) <= 1000
    assert cluster.nodes["b"].log.last_index() == leader.log.last_index()


def test_leadership_transfer_makes_the_target_leader() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.nodes["a"].transfer_leadership("b")
    cluster.deliver_all()
    assert cluster.nodes["b"].role is Role.LEADER
    assert cluster.nodes["a"].role is Role.FOLLOWER


def test_leadership_transfer_refuses_proposals_while_it_runs() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.isolate("b")
    cluster.nodes["a"].propose(b"behind")
    cluster.deliver_all()
    cluster.nodes["a"].transfer_leadership("b")
    with pytest.raises(ProposalDropped) as caught:
        cluster.nodes["a"].propose(b"x")
    assert caught.value.reason is DropReason.TRANSFERRING_LEADERSHIP
    assert "transferred to b" in str(caught.value)


def test_single_node_cluster_elects_itself_and_commits() -> None:
    cluster = ScriptedCluster(ids=("solo",))
    cluster.elect("solo")
    cluster.nodes["solo"].propose(b"v")
    cluster.deliver_all()
    assert [e.data for e in cluster.applied["solo"][1:]] == [b"", b"v"]


def test_restarted_node_replays_committed_entries_from_storage() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    cluster.nodes["a"].propose(b"v")
    cluster.deliver_all()
    cluster.tick("a")
    cluster.deliver_all()
    cluster.restart("b")
    cluster.tick("a")
    cluster.deliver_all()
    assert [e.data for e in cluster.applied["b"][1:]] == [b"", b"v"]


def test_a_slow_but_moving_pipeline_is_not_rewound() -> None:
    """Acks that arrive three heartbeats late are slow, not lost: no entry is re-sent."""
    cluster = ScriptedCluster(heartbeat_tick=1)
    cluster.elect("a")
    leader = cluster.nodes["a"]
    held: list[list[Message]] = []
    sent_to_b: list[int] = []
    for number in range(20):
        leader.propose(b"%d" % number)
        leader.tick()
        out = cluster.process_ready("a")
        sent_to_b += [e.index for m in out if m.recipient == "b" for e in getattr(m, "entries", ())]
        held.append(out)
        if len(held) > 3:
            for msg in held.pop(0):
                cluster.nodes[msg.recipient].step(msg)
            for follower in ("b", "c"):
                for reply in cluster.process_ready(follower):
                    leader.step(reply)
    assert len(sent_to_b) == len(set(sent_to_b)), "entries were sent twice"
    assert leader.commit_index > 10


def test_uncommitted_entries_are_bounded() -> None:
    cluster = ScriptedCluster(max_uncommitted_entries=5)
    cluster.elect("a")
    cluster.isolate("b")
    cluster.isolate("c")
    leader = cluster.nodes["a"]
    for _ in range(5):
        leader.propose(b"x")
    with pytest.raises(ProposalDropped) as caught:
        leader.propose(b"one too many")
    assert caught.value.reason is DropReason.TOO_MANY_UNCOMMITTED
    assert "5 entries await commitment" in str(caught.value)


def test_a_round_asks_one_follower_and_a_heartbeat_confirms_it_when_that_one_is_gone() -> None:
    """With three voters a round needs one follower's echo, so it is sent to one only
    (the one that echoed last); if that one is cut off, the next heartbeat, which goes
    to every follower with the newest round number, confirms the round through the
    other."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    leader.read_index(b"r1")
    [ask] = [m for m in cluster.process_ready("a") if isinstance(m, AppendEntries)]
    cluster.isolate(ask.recipient)
    cluster.in_flight.append(ask)
    cluster.deliver_all()
    assert cluster.read_states["a"] == []
    cluster.tick("a", leader.config.heartbeat_tick)
    cluster.deliver_all()
    assert [s.request_id for s in cluster.read_states["a"]] == [b"r1"]
