"""PendingRequests: every waiting request ends, and with the answer its fate allows.

Proposals are told apart by (index, term): a leader that lost office, had its
uncommitted suffix truncated and proposes again at the same index in a later term
must not make the first waiter unreachable (issue 10, item 3).
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest

from consensus import DropReason, Entry, ForwardedProposal, NotLeader, ProposalDropped, Role
from kvstore.runtime.leadership import LeadershipWatch
from kvstore.runtime.requests import (
    PendingRequests,
    ProposalOverwritten,
    ProposalTimeout,
    RuntimeStopped,
)
from kvstore.runtime.stats import RuntimeStats
from kvstore.state.machine import PutResult


async def test_a_repropose_at_the_same_index_leaves_the_first_waiter_reachable() -> None:
    pending = PendingRequests()
    first = pending.add_proposal(Entry(2, 5, b"a"), deadline=10.0)
    # Lost office, suffix truncated, leader again in term 4: index 5 is proposed again.
    second = pending.add_proposal(Entry(4, 5, b"b"), deadline=20.0)
    pending.expire(now=11.0)
    assert first.done(), "the first proposal at index 5 outlived its deadline"
    with pytest.raises(ProposalTimeout):
        first.result()
    assert not second.done()
    pending.applied(Entry(4, 5, b"b"), PutResult(1, 1))
    assert second.result() == PutResult(1, 1)
    assert not pending


async def test_the_entry_applied_at_an_index_settles_every_proposal_there() -> None:
    pending = PendingRequests()
    old = pending.add_proposal(Entry(2, 5, b"a"), deadline=1e9)
    new = pending.add_proposal(Entry(4, 5, b"b"), deadline=1e9)
    # Another node kept (5, term 2) and committed it as leader of a later term: the
    # FIRST proposal is the one that took effect, the second is the one overwritten.
    pending.applied(Entry(2, 5, b"a"), PutResult(7, 1))
    assert old.result() == PutResult(7, 1)
    with pytest.raises(ProposalOverwritten):
        new.result()
    assert not pending


async def test_shutdown_ends_a_displaced_waiter() -> None:
    pending = PendingRequests()
    first = pending.add_proposal(Entry(2, 5, b"a"), deadline=1e9)
    pending.add_proposal(Entry(4, 5, b"b"), deadline=1e9)
    pending.abort_all(RuntimeStopped("stopping"))
    assert first.done(), "shutdown left the displaced proposal waiting forever"
    assert not pending


@pytest.mark.parametrize("seed", range(40))
async def test_every_waiting_request_ends_by_its_deadline(seed: int) -> None:
    """Random schedules of proposals (re-proposing at taken indexes in later terms),
    applies, snapshot installs and expiry: at the last deadline nothing waits."""
    rng = random.Random(seed)
    pending = PendingRequests()
    futures: list[tuple[asyncio.Future[object], float]] = []
    term, next_index, applied, now = 1, 1, 0, 0.0
    for _ in range(60):
        step = rng.random()
        now += rng.random()
        if step < 0.45:
            deadline = now + rng.uniform(0.5, 5)
            entry = Entry(term, next_index, b"x")
            futures.append((pending.add_proposal(entry, deadline), deadline))  # type: ignore[arg-type]
            next_index += 1
        elif step < 0.6:  # lose office; the uncommitted suffix is cut; win a later term
            term += rng.randint(1, 2)
            next_index = rng.randint(applied + 1, next_index)
        elif step < 0.85 and applied + 1 < next_index:
            applied += 1
            applied_term = rng.choice([term, term - 1, max(1, term - 2)])
            pending.applied(Entry(applied_term, applied, b"x"), None)
            pending.applied_up_to(applied)
        elif step < 0.9:
            applied = max(applied, next_index - 1)
            pending.snapshot_installed(applied)
        pending.expire(now)
        for future, deadline in futures:
            assert future.done() or deadline > now, f"seed {seed}: a wait outlived its deadline"
    pending.expire(now + 10)
    assert all(f.done() for f, _ in futures)
    assert not pending


async def test_a_forwarded_proposal_waits_for_the_entry_the_leader_named() -> None:
    pending = PendingRequests()
    placed = pending.add_forwarded(b"a", deadline=1e9)
    overwritten = pending.add_forwarded(b"b", deadline=1e9)
    pending.forwarded_outcomes(
        (ForwardedProposal(b"a", 5, 3), ForwardedProposal(b"b", 6, 3)), applied=4
    )
    assert not placed.done()
    pending.applied(Entry(3, 5, b"x"), PutResult(9, 1))
    pending.applied(Entry(4, 6, b"y"), PutResult(10, 1))  # another term won index 6
    assert placed.result() == PutResult(9, 1)
    with pytest.raises(ProposalOverwritten):
        overwritten.result()
    assert not pending


async def test_a_refused_forwarded_proposal_says_it_was_never_proposed() -> None:
    pending = PendingRequests()
    not_leader = pending.add_forwarded(b"a", deadline=1e9)
    dropped = pending.add_forwarded(b"b", deadline=1e9)
    pending.forwarded_outcomes(
        (
            ForwardedProposal(b"a", 0, 0, "not_leader"),
            ForwardedProposal(b"b", 0, 0, DropReason.TOO_MANY_UNCOMMITTED.value),
        ),
        applied=0,
    )
    with pytest.raises(NotLeader):
        not_leader.result()
    with pytest.raises(ProposalDropped) as caught:
        dropped.result()
    assert caught.value.reason is DropReason.TOO_MANY_UNCOMMITTED
    assert not pending


async def test_an_unanswered_forwarded_proposal_ends_unknown_at_its_deadline() -> None:
    pending = PendingRequests()
    lost = pending.add_forwarded(b"a", deadline=5.0)
    late = pending.add_forwarded(b"b", deadline=5.0)
    pending.forwarded_outcomes((ForwardedProposal(b"b", 3, 2),), applied=3)  # applied already
    pending.expire(now=6.0)
    for future in (lost, late):
        with pytest.raises(ProposalTimeout):
            future.result()
    assert not pending


async def test_a_leader_change_ends_unplaced_forwarded_proposals_as_unknown_at_once() -> None:
    """A follower whose leader died must not hold its clients until their deadline: when
    the leadership it sees changes, proposals the old leader never placed end now, as
    unknown (the old leader may have appended them), and placed ones keep waiting."""
    pending = PendingRequests()
    node = SimpleNamespace(role=Role.FOLLOWER, term=3, leader_id="n1")
    watch = LeadershipWatch("n2", node, pending, RuntimeStats())  # type: ignore[arg-type]
    watch.observe()  # n1 leads
    placed = pending.add_forwarded(b"placed", deadline=1e9)
    pending.forwarded_outcomes((ForwardedProposal(b"placed", 7, 3),), applied=5)
    unplaced = pending.add_forwarded(b"unplaced", deadline=1e9)
    watch.observe()
    assert not unplaced.done()  # nothing changed yet
    node.role, node.term, node.leader_id = Role.CANDIDATE, 4, None  # n1 went silent
    watch.observe()
    with pytest.raises(ProposalTimeout, match="leadership changed"):
        unplaced.result()
    assert not placed.done()  # its entry decides: it may still commit at index 7
    pending.applied(Entry(3, 7, b"x"), PutResult(9, 1))
    assert placed.result() == PutResult(9, 1)
