"""A lone write's commit (kvstore.runtime.lone_write): an idle leader applies, which
answers its client, before it tells the followers the commit index."""

from __future__ import annotations

from dataclasses import replace

from consensus import Entry, Message, Ready, Role
from consensus.messages import AppendEntries
from kvstore.peers.link import PeerLink
from kvstore.runtime.lone_write import answer_first
from tests.kvstore.test_runtime import _eventually, _LocalCluster


def _append(to: str, index: int) -> AppendEntries:
    entries = (Entry(1, index, b"x"),) if index else ()
    return AppendEntries(1, "n1", to, max(index - 1, 0), 1, entries, index - 1, 0)


def test_only_a_leaders_ready_that_saves_nothing_and_commits_one_entry_answers_first() -> None:
    one = Entry(1, 1, b"x")
    ready = Ready(None, (), (_append("n2", 0),), (one,), (), early_messages=1)
    assert answer_first(ready, Role.LEADER)
    assert not answer_first(ready, Role.FOLLOWER)
    assert not answer_first(replace(ready, committed=(one, Entry(1, 2, b"y"))), Role.LEADER)
    assert not answer_first(replace(ready, entries=(Entry(1, 2, b"y"),)), Role.LEADER)


async def test_a_leader_announces_a_lone_writes_commit_once_it_answered_it(
    local: _LocalCluster, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Sequential writes on a follower, then on the leader: the leader announces a lone
    write's commit only once it applied (answered) it; every write succeeds and every
    node ends with all of them."""
    leader = await local.leader()
    origin = next(n for n in local.nodes if n != leader)
    runtime = local.nodes[leader].runtime
    sent: list[tuple[Message, int]] = []  # (message, applied)
    enqueue = PeerLink.enqueue

    def recording(link: PeerLink, msgs: list[Message]) -> None:
        if link.owner is runtime.transport:
            sent.extend((m, runtime.sm.applied_index) for m in msgs)
        enqueue(link, msgs)

    monkeypatch.setattr(PeerLink, "enqueue", recording)
    for node_id in (origin,) * 12 + (leader,) * 12:
        status, _, body = await local.call(node_id, "PUT", f"/v1/kv/{node_id}-{len(sent)}", b"v")
        assert status == 200, body
    told = [(m.leader_commit, applied) for m, applied in sent if type(m) is AppendEntries]
    assert any(applied >= commit > 0 for commit, applied in told)
    assert all(
        applied >= commit for commit, applied in told if commit > runtime.sm.applied_index - 12
    )

    def converged() -> bool:
        indexes = {n.runtime.sm.applied_index for n in local.nodes.values()}
        return len(indexes) == 1

    await _eventually(converged)
