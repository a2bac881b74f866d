"""A forwarded lone write's appends (kvstore.runtime.lone_write): the origin's leave at
once, the other follower's after the leader's save of that entry, and a held message
never lets a later one to the same peer overtake it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import cast

from consensus import Entry, HardState, Message, Ready, Role
from consensus.messages import AppendEntries, ProposeResponse
from kvstore.peers.link import PeerLink
from kvstore.runtime.lone_write import OriginFirst, answer_first
from kvstore.runtime.persist import FAST_SAVES, Persister
from tests.kvstore.test_runtime import _eventually, _LocalCluster


def _append(to: str, index: int) -> AppendEntries:
    entries = (Entry(1, index, b"x"),) if index else ()
    return AppendEntries(1, "n1", to, max(index - 1, 0), 1, entries, index - 1, 0)


def _forwarded_write(index: int) -> list[Message]:
    """What an idle leader sends for a proposal forwarded by n2: its answer, then appends."""
    return [
        ProposeResponse(1, "n1", "n2", (b"r",), (index,)),
        _append("n2", index),
        _append("n3", index),
    ]


def _ready(entries: int, early: tuple[Message, ...] = ()) -> Ready:
    return Ready(
        hard_state=HardState(1, "n1", 0),
        entries=tuple(Entry(1, i, b"x") for i in range(1, entries + 1)),
        messages=early,
        committed=(),
        read_states=(),
        early_messages=len(early),
    )


def _order(quick_saves: int = FAST_SAVES) -> tuple[OriginFirst, list[list[Message]]]:
    sent: list[list[Message]] = []

    def send(msgs: Sequence[Message]) -> None:
        sent.append(list(msgs))

    persister = cast(Persister, SimpleNamespace(quick_saves=quick_saves))
    return OriginFirst(send, persister), sent


def _to(sent: list[list[Message]], peer: str) -> list[Message]:
    return [m for batch in sent for m in batch if m.recipient == peer]


def test_the_origin_gets_a_forwarded_lone_write_first_the_other_after_the_save() -> None:
    order, sent = _order()
    order.send_early(_forwarded_write(5), idle=True)
    assert _to(sent, "n3") == [] and len(_to(sent, "n2")) == 2
    order.before(_ready(1))  # the Ready that saves the entry: nothing goes before it
    assert _to(sent, "n3") == []
    order.release()  # the leader's save ended
    assert _to(sent, "n3") == [_append("n3", 5)]


def test_nothing_is_held_when_busy_on_a_slow_disk_or_for_the_leaders_own_write() -> None:
    for idle, quick_saves, msgs in (
        (False, FAST_SAVES, _forwarded_write(5)),
        (True, FAST_SAVES - 1, _forwarded_write(5)),
        (True, FAST_SAVES, [_append("n2", 5), _append("n3", 5)]),
    ):
        order, sent = _order(quick_saves)
        order.send_early(msgs, idle=idle)
        assert [m for batch in sent for m in batch] == msgs


def test_a_held_append_leaves_before_any_later_message_to_its_peer() -> None:
    order, sent = _order()
    order.send_early(_forwarded_write(5), idle=True)
    order.send_early([_append("n3", 0)], idle=False)  # a heartbeat while the leader syncs
    assert _to(sent, "n3") == [_append("n3", 5), _append("n3", 0)]
    order.send_early(_forwarded_write(6), idle=True)
    order.before(_ready(2, early=(_append("n3", 7),)))  # a busier Ready sends first
    assert _to(sent, "n3")[2:] == [_append("n3", 6)]
    order.send_early(_forwarded_write(8), idle=True)
    order.before(_ready(2))  # two entries: the other follower may be needed for a quorum
    assert _to(sent, "n3")[3:] == [_append("n3", 8)]


def test_only_a_leaders_ready_that_saves_nothing_and_commits_one_entry_answers_first() -> None:
    one = Entry(1, 1, b"x")
    ready = Ready(None, (), (_append("n2", 0),), (one,), (), early_messages=1)
    assert answer_first(ready, Role.LEADER)
    assert not answer_first(ready, Role.FOLLOWER)
    assert not answer_first(replace(ready, committed=(one, Entry(1, 2, b"y"))), Role.LEADER)
    assert not answer_first(replace(ready, entries=(Entry(1, 2, b"y"),)), Role.LEADER)


async def test_a_cluster_orders_lone_writes_so(local: _LocalCluster, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Sequential writes on a follower, then on the leader: the other follower gets a
    forwarded write's entry after the origin, and once the leader's copy is durable; the
    leader announces a lone write's commit only once it applied (answered) it; every
    write succeeds and every node ends with all of them."""
    leader = await local.leader()
    origin, other = (n for n in local.nodes if n != leader)
    runtime = local.nodes[leader].runtime
    sent: list[tuple[str, Message, int, int]] = []  # (to, message, applied, saved)
    enqueue = PeerLink.enqueue

    def recording(link: PeerLink, msgs: list[Message]) -> None:
        if link.owner is runtime.transport:
            saved = runtime.storage.last_index()
            sent.extend((link.node_id, m, runtime.sm.applied_index, saved) for m in msgs)
        enqueue(link, msgs)

    monkeypatch.setattr(PeerLink, "enqueue", recording)
    for node_id in (origin,) * 12 + (leader,) * 12:
        status, _, body = await local.call(node_id, "PUT", f"/v1/kv/{node_id}-{len(sent)}", b"v")
        assert status == 200, body
    assert runtime.persister.quick_saves >= FAST_SAVES  # memory storage: always quick
    firsts: dict[tuple[str, int], tuple[int, int]] = {}
    for at, (to, msg, _, saved) in enumerate(sent):
        if type(msg) is AppendEntries:
            for entry in msg.entries:
                firsts.setdefault((to, entry.index), (at, saved))
    forwarded = sorted(m.indexes[0] for _, m, _, _ in sent if type(m) is ProposeResponse)
    held = [i for i in forwarded if firsts[(other, i)][1] >= i]  # after the leader's save
    assert len(held) >= 3, "the other follower got no forwarded entry after the leader's save"
    assert all(firsts[(origin, i)][0] < firsts[(other, i)][0] for i in forwarded)
    told = [(m.leader_commit, applied) for _, m, applied, _ in sent if type(m) is AppendEntries]
    assert any(applied >= commit > 0 for commit, applied in told)
    assert all(
        applied >= commit for commit, applied in told if commit > runtime.sm.applied_index - 12
    )

    def converged() -> bool:
        indexes = {n.runtime.sm.applied_index for n in local.nodes.values()}
        return len(indexes) == 1

    await _eventually(converged)
