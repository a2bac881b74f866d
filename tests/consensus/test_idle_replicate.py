"""A leader with no Ready in hand sends a new entry's appends at once
(`RaftNode.early_messages(replicate=True)`, what the runtime does for a lone write when
its ready loop is idle): the next Ready still persists the entry, sends it no second
time, and the leader's own copy counts towards commitment only once that Ready is
durable (`advance`). A follower with no Ready in hand sends its clients' proposals to
the leader at once the same way."""

from __future__ import annotations

from consensus import AppendEntries, ProposeRequest
from consensus.forwarding import NOT_LEADER
from tests.consensus.scripted import ScriptedCluster


def test_an_idle_leader_sends_a_new_entry_at_once_and_counts_its_copy_once_durable() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader = cluster.nodes["a"]
    entry = leader.propose(b"x")
    early = leader.early_messages(replicate=True)
    appends = {m.recipient: m for m in early if type(m) is AppendEntries}
    assert {peer: [e.index for e in m.entries] for peer, m in appends.items()} == {
        "b": [entry.index],
        "c": [entry.index],
    }
    cluster.nodes["b"].step(appends["b"])
    for ack in cluster.process_ready("b"):
        leader.step(ack)
    assert leader.commit_index < entry.index, "one follower and an unsynced leader: no quorum"
    ready = leader.ready()
    assert ready.entries == (entry,)
    again = [m for m in ready.messages if type(m) is AppendEntries and m.entries]
    assert again == [], "the entry was sent twice"
    cluster.storages["a"].save(ready.hard_state, ready.entries)
    leader.advance(ready)
    assert leader.commit_index == entry.index
    assert entry in leader.ready().committed
    assert cluster.nodes["b"].early_messages(replicate=True) == (), "only a leader sends early"


def test_an_idle_follower_sends_its_clients_proposal_at_once_and_only_once() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    leader, origin = cluster.nodes["a"], cluster.nodes["b"]
    origin.forward_proposal(b"r", b"data")
    [request] = origin.early_messages(replicate=True)
    assert type(request) is ProposeRequest and request.recipient == "a"
    assert request.datas == (b"data",)
    ready = origin.ready()
    assert ready.messages == (), "the proposal was sent twice"
    origin.advance(ready)
    assert origin.early_messages() == (), "only with `replicate`"
    leader.step(request)
    cluster.deliver_all()
    assert [e.data for e in cluster.applied["b"]][-1:] == [b"data"]


def test_a_follower_without_a_leader_refuses_its_queued_proposal_as_never_sent() -> None:
    cluster = ScriptedCluster()
    cluster.elect("a")
    origin = cluster.nodes["b"]
    origin.forward_proposal(b"r", b"data")
    cluster.nodes["b"].leader_id = None  # the leader was lost after the proposal queued
    assert origin.early_messages(replicate=True) == ()
    [outcome] = origin.ready().forwarded
    assert (outcome.request_id, outcome.index, outcome.refused) == (b"r", 0, NOT_LEADER)
