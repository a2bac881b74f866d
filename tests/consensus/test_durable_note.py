"""A follower commits an entry of its leader's term once the leader said its own copy is
durable and its own copy is durable too, when the two are a majority of a settled
configuration (consensus.durable_note); never otherwise."""

from __future__ import annotations

from consensus import (
    AppendEntries,
    Config,
    EntryType,
    LeaderDurable,
    Membership,
    MemoryStorage,
    ProposeResponse,
)
from consensus.durable_note import DurableNotes, notes_to_send
from consensus.log import RaftLog
from consensus.membership import ConfChange, ConfChangeType
from consensus.progress import Progress
from consensus.types import Entry, HardState
from tests.consensus.scripted import ScriptedCluster

THREE = Membership(("a", "b", "c"))


def _follower_log(terms: list[int], stable: int, conf_at: int = 0) -> RaftLog:
    """b's log: entries of `terms` (index 1, 2, ...), the first `stable` on disk."""
    storage = MemoryStorage()
    entries = [
        Entry(t, i, b"", EntryType.CONF_CHANGE if i == conf_at else EntryType.NORMAL)
        for i, t in enumerate(terms, start=1)
    ]
    storage.save(HardState(term=max(terms)), entries[:stable])
    log = RaftLog(storage)
    log.append(entries[stable:])
    return log


def _notes(log: RaftLog, term: int, index: int) -> DurableNotes:
    notes = DurableNotes("b", log)
    notes.heard(LeaderDurable(term, "a", "b", index))
    return notes


def test_a_lone_write_commits_on_the_follower_before_any_acknowledgement_reaches_the_leader():
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader, follower = cluster.nodes["a"], cluster.nodes["b"]
    follower.forward_proposal(b"r", b"x")
    [request] = cluster.process_ready("b")
    leader.step(request)
    out = cluster.process_ready("a")
    entry = leader.log.entries(leader.log.last_index())[0]
    to_b = [m for m in out if m.recipient == "b" and not isinstance(m, ProposeResponse)]
    assert [type(m) for m in to_b] == [AppendEntries, LeaderDurable]
    assert not any(isinstance(m, LeaderDurable) for m in out if m.recipient == "c"), (
        "no client of c waits for it"
    )
    assert to_b[1].index == entry.index
    for msg in to_b:
        follower.step(msg)
    assert follower.commit_index < entry.index, "its own copy is not durable yet"
    cluster.process_ready("b")  # saves, then commits and applies the entry
    assert follower.commit_index == entry.index
    assert cluster.applied["b"][-1] == entry
    assert leader.commit_index < entry.index, "no acknowledgement reached the leader"


def test_the_leader_sends_no_note_once_the_entry_is_committed_by_acknowledgements():
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    ready = leader.ready()
    leader.propose(b"x")
    ready = leader.ready()
    for msg in ready.messages:  # the appends leave before the leader's own fsync ends
        cluster.nodes[msg.recipient].step(msg)
    for follower in ("b", "c"):
        for ack in cluster.process_ready(follower):
            leader.step(ack)
    cluster.storages["a"].save(ready.hard_state, ready.entries)
    leader.advance(ready)
    assert not any(isinstance(m, LeaderDurable) for m in cluster.process_ready("a"))


def test_an_entry_of_the_current_term_durable_on_both_commits():
    log = _follower_log([1, 2, 2], stable=3)
    _notes(log, 2, 3).commit(2, THREE, 0)
    assert log.committed == 3


def test_an_entry_of_an_older_term_never_commits_by_the_note():
    log = _follower_log([1, 1, 1], stable=3)
    _notes(log, 2, 3).commit(2, THREE, 0)
    assert log.committed == 0


def test_an_unsynced_copy_of_the_follower_does_not_count():
    log = _follower_log([2, 2, 2], stable=1)
    _notes(log, 2, 3).commit(2, THREE, 0)
    assert log.committed == 1, "only what is on its disk"


def test_a_note_of_another_term_does_not_count():
    log = _follower_log([2, 2, 3], stable=3)
    _notes(log, 2, 3).commit(3, THREE, 0)
    assert log.committed == 0


def test_leader_and_follower_not_a_majority_commit_nothing():
    log = _follower_log([2, 2, 2], stable=3)
    _notes(log, 2, 3).commit(2, Membership(("a", "b", "c", "d", "e")), 0)
    assert log.committed == 0
    _notes(log, 2, 3).commit(2, Membership(("b", "c", "d")), 0)  # the leader is no voter
    assert log.committed == 0


def test_a_membership_change_not_in_effect_stops_the_rule():
    log = _follower_log([2, 2, 2], stable=3, conf_at=2)
    _notes(log, 2, 3).commit(2, THREE, conf_index=0)
    assert log.committed == 0
    _notes(log, 2, 3).commit(2, THREE, conf_index=2)  # the change took effect here
    assert log.committed == 3


def test_an_unsettled_leader_sends_no_note():
    log = _follower_log([2, 2], stable=2)
    progress = {peer: Progress(3, Config("a", ("a", "b", "c"))) for peer in ("a", "b", "c")}
    forwarded = {"b": 2, "c": 2}
    assert notes_to_send("a", 2, log, False, forwarded, progress) == []
    notes = notes_to_send("a", 2, log, True, forwarded, progress)
    assert [n.recipient for n in notes] == ["b", "c"]
    progress["c"].maybe_update(2)  # c acknowledged everything: its answer counts already
    assert [n.recipient for n in notes_to_send("a", 2, log, True, forwarded, progress)] == ["b"]
    log.commit_to(1)
    assert notes_to_send("a", 2, log, True, {"b": 1}, progress) == [], "b's write committed"
    log.commit_to(2)
    assert notes_to_send("a", 2, log, True, forwarded, progress) == [], "the commit index says it"


def test_a_pending_membership_change_on_the_leader_holds_the_notes_back():
    cluster = ScriptedCluster(("a", "b", "c", "d"), joining=("d",))
    cluster.elect("a")
    leader = cluster.nodes["a"]
    cluster.deliver_all()
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    out = cluster.process_ready("a")
    assert not any(isinstance(m, LeaderDurable) for m in out)
    cluster.in_flight.extend(out)
    cluster.deliver_all()  # the change is in effect: notes again
    cluster.nodes["b"].forward_proposal(b"r", b"x")
    cluster.deliver_all()
    assert any(isinstance(m, LeaderDurable) for m in cluster.delivered)


def test_a_read_index_covers_what_a_follower_may_have_committed_on_a_note():
    """A follower may answer a write it committed on a note before the leader counts
    it: a read asked meanwhile must wait for that write, not take the commit index."""
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    cluster.nodes["b"].forward_proposal(b"w", b"x")
    [request] = cluster.process_ready("b")
    leader.step(request)
    out = cluster.process_ready("a")
    entry = leader.log.entries(leader.log.last_index())[0]
    assert any(isinstance(m, LeaderDurable) for m in out)
    assert leader.commit_index < entry.index
    leader.read_index(b"r")
    cluster.in_flight.extend(out)
    cluster.deliver_all()
    [read] = cluster.read_states["a"]
    assert read.index == entry.index
