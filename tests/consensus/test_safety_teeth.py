"""Rules of the core that a review found no test would miss if broken (issue 10).

Each test was seen failing against a core with its rule broken on purpose.
"""

from __future__ import annotations

from consensus import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeType,
    Entry,
    Role,
    TimeoutNow,
)
from tests.consensus.scripted import ScriptedCluster


def run(cluster: ScriptedCluster, ids: tuple[str, ...], ticks: int) -> None:
    """Let time pass on `ids` together, delivering everything after each tick."""
    for _ in range(ticks):
        for node_id in ids:
            cluster.tick(node_id)
        cluster.deliver_all()


# --- early sends: the core marks what may leave before the leader's fsync ---------------


def test_a_leaders_appends_may_leave_before_its_fsync_but_count_only_once_durable() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader, follower = cluster.nodes["a"], cluster.nodes["b"]
    entry = leader.propose(b"x")
    ready = leader.ready()
    assert ready.entries == (entry,)
    early = ready.messages_before_persist
    assert {m.recipient for m in early} == {"b", "c"}
    assert all(isinstance(m, AppendEntries | TimeoutNow) for m in early)
    assert ready.messages == early + ready.messages_after_persist
    # b persists and acknowledges while the leader's own write is still running.
    follower.step(next(m for m in early if m.recipient == "b"))
    answer = follower.ready()
    assert answer.early_messages == 0, "an acknowledgement waits for the follower's fsync"
    cluster.storages["b"].save(answer.hard_state, answer.entries)
    follower.advance(answer)
    [ack] = answer.messages
    assert isinstance(ack, AppendEntriesResponse) and ack.match_index == entry.index
    leader.step(ack)
    assert leader.commit_index < entry.index, "the leader's copy is not durable yet"
    cluster.storages["a"].save(ready.hard_state, ready.entries)
    leader.advance(ready)
    assert leader.commit_index == entry.index


def test_a_leader_whose_term_is_not_durable_sends_nothing_before_its_fsync() -> None:
    """A sole voter wins its election within one tick: the Ready that saves its new
    term already carries appends (to a learner), which must wait for that save."""
    cluster = ScriptedCluster(ids=("a", "b"), joining=("b",))
    cluster.elect("a")
    cluster.nodes["a"].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "b", b"u"))
    run(cluster, ("a",), 3)
    cluster.restart("a")
    node = cluster.nodes["a"]
    while node.role is not Role.LEADER:
        node.tick()
    ready = node.ready()
    assert ready.hard_state is not None and ready.hard_state.term == node.term
    assert any(isinstance(m, AppendEntries) and m.recipient == "b" for m in ready.messages)
    assert ready.early_messages == 0, "appends of a term not yet on disk went out early"


# --- reads --------------------------------------------------------------------------------


def test_a_deposed_leader_never_confirms_a_read_of_the_old_value() -> None:
    """a leads and is cut off; b and c elect a successor, which acknowledges a newer
    write. a, which has not heard of it, is asked for a linearizable read: it must not
    confirm it (answering from its own state would return the old value)."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    old = cluster.nodes["a"]
    old.propose(b"v1")
    run(cluster, ("a",), 2)
    cluster.isolate("a")
    run(cluster, ("b", "c"), 6 * old.config.election_tick)
    new = cluster.leader()
    assert new is not None and new.id != "a" and old.role is Role.LEADER
    newer = new.propose(b"v2")
    run(cluster, (new.id,), 2)
    assert new.commit_index >= newer.index, "the successor acknowledged v2"
    old.read_index(b"stale?")
    run(cluster, ("a",), old.config.election_tick // 2)
    cluster.heal()
    run(cluster, ("a", "b", "c"), 3)
    assert cluster.read_states["a"] == [], "a deposed leader confirmed a read"
    assert old.role is Role.FOLLOWER and old.leader_id == new.id
    new.read_index(b"fresh")
    run(cluster, (new.id,), 2)
    [state] = cluster.read_states[new.id]
    assert state.request_id == b"fresh" and state.index >= newer.index


# --- the leader lease --------------------------------------------------------------------


def test_a_node_that_cannot_hear_the_leader_does_not_depose_it() -> None:
    """The leader lease (§4.2.3): voters that heard from a leader within an election
    timeout ignore vote requests, PreVote or not. Here c stops hearing a (a one-way
    cut) while its log stays as up to date as anyone's, so without the lease its
    pre-votes are granted and it takes over a healthy leader's term."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    term = leader.term
    cluster.cut_links.add(("a", "c"))
    run(cluster, ("a", "b", "c"), 10 * leader.config.election_tick)
    assert leader.role is Role.LEADER and leader.term == term
    assert cluster.nodes["b"].term == term


# --- the follower's commit rule ----------------------------------------------------------


def test_a_follower_commits_only_up_to_the_last_entry_it_got_from_this_leader() -> None:
    """Figure 2: commitIndex = min(leaderCommit, index of last new entry). b's entries
    4 and 5 (term 2) were never checked against this leader's log: the leader's commit
    index (6) does not cover them, however long b's log is."""
    cluster = ScriptedCluster()
    cluster.preload("b", [1, 1, 1, 2, 2], term=2)
    follower = cluster.nodes["b"]
    follower.step(AppendEntries(3, "a", "b", 2, 1, (Entry(1, 3, b""),), leader_commit=6))
    assert follower.commit_index == 3
    ready = follower.ready()
    assert [e.index for e in ready.committed] == [1, 2, 3]
    follower.step(AppendEntries(3, "a", "b", 3, 1, (), leader_commit=6))
    assert follower.commit_index == 3, "a heartbeat matching at 3 proves nothing beyond it"


def test_a_leader_reveals_the_commit_of_a_membership_change_only_once_saved() -> None:
    """A node that learns its removal is committed stops for good. If the leader had
    told it before saving that commit, and then restarted from a disk without it, its
    configuration would still count the stopped node: no quorum, ever (soak seed 14749,
    where the removed node learnt it from an early append of the leader)."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    change = leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    for msg in cluster.process_ready("a"):
        cluster.nodes[msg.recipient].step(msg)
        for reply in cluster.process_ready(msg.recipient):
            leader.step(reply)
    assert leader.commit_index >= change.index
    leader.propose(b"after")
    ready = leader.ready()
    appends = [m for m in ready.messages if isinstance(m, AppendEntries)]
    assert appends and ready.hard_state is not None
    assert all(m.leader_commit < change.index for m in appends), "commit of c's removal leaked"
    assert ready.hard_state.commit >= change.index
    cluster.storages["a"].save(ready.hard_state, ready.entries)
    leader.advance(ready)
    run(cluster, ("a",), 2)
    assert cluster.nodes["b"].commit_index >= change.index
