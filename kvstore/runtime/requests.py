"""Client requests waiting on the Raft log, and the errors they can end with.

Kept apart from the runtime so the rules that decide an answer's meaning live in one
small place: a proposal resolves only when ITS entry (same index AND term) is applied;
a different entry at its index proves it can never commit (a definite, retryable
failure); anything else that stops the wait leaves a proposed write's outcome unknown.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from consensus import DropReason, Entry, ForwardedProposal, NotLeader, ProposalDropped
from consensus.forwarding import NOT_LEADER
from kvstore.state.machine import ApplyResult

log = logging.getLogger(__name__)


class RuntimeUnavailable(Exception):
    """Base of the runtime's request errors."""


class ProposalOverwritten(RuntimeUnavailable):
    """A different entry was applied at the proposal's index: it can never commit.
    Definite failure; safe to retry."""


class ProposalTimeout(RuntimeUnavailable):
    """The proposal was handed to the core but not confirmed: its outcome is unknown."""


class ReadAborted(RuntimeUnavailable):
    """A linearizable read lost its leader (or term) before it was confirmed; safe to retry."""


class RuntimeStopped(RuntimeUnavailable):
    """The node is shutting down (or stopped on a fatal error)."""


class Waiter(Protocol):
    """What a proposal's outcome is handed to: an asyncio.Future (NodeRuntime.propose)
    or a Callback (the fast lane's writes)."""

    def done(self) -> bool: ...

    def set_result(self, result: ApplyResult | None, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


Outcome = ApplyResult | None | BaseException
"""A proposal's result, or the error that ended its wait."""


class Callback:
    """A Waiter that hands the outcome to `then` at once, from inside the apply loop (or
    the expiry, or the leader change that ended the wait): a fast-lane write answers
    with no future, no task and no turn of the loop in between. A bug in `then` is
    logged, and must not stop the apply loop (the node would stop on it)."""

    __slots__ = ("_done", "_then")

    def __init__(self, then: Callable[[Outcome], None]) -> None:
        self._then = then
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: ApplyResult | None, /) -> None:
        self._tell(result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._tell(exception)

    def _tell(self, outcome: Outcome) -> None:
        self._done = True
        try:
            self._then(outcome)
        except Exception:
            log.exception("a write's answer failed")


@dataclass(slots=True)
class _Proposal:
    index: int
    term: int
    future: Waiter
    deadline: float
    started: float
    """perf_counter() when this leader proposed it (for the commit latency); 0.0 for a
    proposal forwarded to the leader (not counted there)."""


@dataclass(slots=True)
class _Forwarded:
    """A proposal handed to the leader, until it says where it put it."""

    future: Waiter
    deadline: float


ReadDone = Callable[[int | Exception], None]
"""Told a confirmed read index, or why the read failed (kvstore.runtime.via_leader)."""


@dataclass(slots=True)
class _PendingRead:
    """One read index asked of the core on behalf of `size` reads."""

    term: int
    done: ReadDone
    deadline: float
    size: int


class PendingRequests:
    """Futures of proposals (by log index, then term), ReadIndex reads (by request id)
    and reads waiting for the applied index to catch up. Deadlines are enforced by
    `expire`, called by one periodic task, which is cheaper than a timer per request.

    Why (index, term): a leader that lost office, had its uncommitted suffix cut and
    leads again may propose at an index it proposed at before. Both waits stay: the
    first is not yet dead (another node may still hold its entry and commit it as a
    later leader), so only the entry applied at that index decides between them."""

    def __init__(self, commit_latency: Callable[[float], None] | None = None) -> None:
        """`commit_latency` is told, in seconds, how long each of this leader's
        successful proposals took from propose to applied."""
        self._commit_latency = commit_latency
        self.proposals: dict[int, dict[int, _Proposal]] = {}
        self.reads: dict[bytes, _PendingRead] = {}
        self.forwarded: dict[bytes, _Forwarded] = {}
        self._apply_waiters: list[tuple[int, int, asyncio.Future[None], float]] = []
        self._seq = itertools.count()
        self.answered = False
        """Set when a proposal was settled; the ready loop then yields once."""

    def __bool__(self) -> bool:
        return bool(self.proposals or self.reads or self._apply_waiters or self.forwarded)

    # -------------------------------------------------------------- registering

    def add_proposal(self, entry: Entry, deadline: float, waiter: Waiter | None = None) -> Waiter:
        """`entry`, proposed by this leader, settles `waiter` (by default a new future)."""
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        at_index = self.proposals.setdefault(entry.index, {})
        at_index[entry.term] = _Proposal(
            entry.index, entry.term, waiter, deadline, time.perf_counter()
        )
        return waiter

    def _take_proposals(self, keep: Callable[[_Proposal], bool]) -> list[_Proposal]:
        """Remove and return every proposal `keep` rejects."""
        taken: list[_Proposal] = []
        for index in list(self.proposals):
            at_index = self.proposals[index]
            for term in [t for t, p in at_index.items() if not keep(p)]:
                taken.append(at_index.pop(term))
            if not at_index:
                del self.proposals[index]
        return taken

    def add_forwarded(
        self, request_id: bytes, deadline: float, waiter: Waiter | None = None
    ) -> Waiter:
        """A proposal forwarded to the leader (kvstore.runtime.via_leader): resolved by
        `forwarded_outcomes`, then like a proposal of our own; settles `waiter` (by
        default a new future)."""
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        self.forwarded[request_id] = _Forwarded(waiter, deadline)
        return waiter

    def forwarded_outcomes(self, outcomes: tuple[ForwardedProposal, ...], applied: int) -> None:
        """Where the leader put forwarded proposals. Called before the Ready's committed
        entries are applied (they may include these): an accepted one then waits for
        its (index, term) like our own; a refused one was certainly never proposed."""
        for outcome in outcomes:
            waiting = self.forwarded.pop(outcome.request_id, None)
            if waiting is None or waiting.future.done():
                continue
            if outcome.index == 0:
                waiting.future.set_exception(_refusal(outcome.refused))
            elif outcome.index <= applied:  # cannot happen on one ordered peer stream
                waiting.future.set_exception(
                    ProposalTimeout(f"entry {outcome.index} was applied before its answer came")
                )
            else:
                at_index = self.proposals.setdefault(outcome.index, {})
                at_index[outcome.term] = _Proposal(
                    outcome.index, outcome.term, waiting.future, waiting.deadline, 0.0
                )

    def add_read(
        self, request_id: bytes, term: int, deadline: float, done: ReadDone, size: int = 1
    ) -> None:
        """A read index asked of the core for `size` reads: `done` is told it once (the
        index, or the error that ended the wait)."""
        self.reads[request_id] = _PendingRead(term, done, deadline, size)

    def wait_applied(self, index: int, deadline: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._apply_waiters, (index, next(self._seq), future, deadline))
        return future

    def expire(self, now: float) -> None:
        """Fail every wait whose deadline passed: a proposal's outcome is then unknown.
        The runtime calls it periodically (kvstore.runtime.clock): one timer, not one
        per request."""
        if not self:
            return
        for proposal in self._take_proposals(lambda p: p.deadline > now):
            if not proposal.future.done():
                proposal.future.set_exception(
                    ProposalTimeout(
                        f"entry {proposal.index} (term {proposal.term}) not applied in time"
                    )
                )
        for request_id in [r for r, f in self.forwarded.items() if f.deadline <= now]:
            forwarded = self.forwarded.pop(request_id)
            if not forwarded.future.done():
                forwarded.future.set_exception(
                    ProposalTimeout("the leader did not say in time where it put the proposal")
                )
        for request_id in [r for r, p in self.reads.items() if p.deadline <= now]:
            self.reads.pop(request_id).done(TimeoutError("the read was not confirmed in time"))
        if any(w[3] <= now for w in self._apply_waiters):
            for waiter in self._apply_waiters:
                if waiter[3] <= now and not waiter[2].done():
                    waiter[2].set_exception(TimeoutError("the log was not applied in time"))
            self._apply_waiters = [w for w in self._apply_waiters if not w[2].done()]
            heapq.heapify(self._apply_waiters)

    # -------------------------------------------------------------- resolving

    def applied(self, entry: Entry, result: ApplyResult | None) -> None:
        """`entry` was applied with `result`: settle every proposal made at its index
        (the one of its term succeeded; any other can never commit)."""
        at_index = self.proposals.pop(entry.index, None)
        if at_index is None:
            return
        self.answered = True
        for proposal in at_index.values():
            if proposal.future.done():
                continue
            if proposal.term == entry.term:
                if proposal.started and self._commit_latency is not None:
                    self._commit_latency(time.perf_counter() - proposal.started)
                proposal.future.set_result(result)
            else:
                proposal.future.set_exception(
                    ProposalOverwritten(
                        f"entry {entry.index} of term {proposal.term} was replaced by one of "
                        f"term {entry.term}; it will never commit"
                    )
                )

    def applied_up_to(self, applied: int) -> None:
        waiters = self._apply_waiters
        while waiters and waiters[0][0] <= applied:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    def snapshot_installed(self, index: int) -> None:
        """A snapshot replaced the log up to `index`: proposals there were either in it or
        overwritten, and nobody can tell which any more."""
        for proposal in self._take_proposals(lambda p: p.index > index):
            if not proposal.future.done():
                proposal.future.set_exception(
                    ProposalTimeout(f"entry {proposal.index} was folded into a snapshot")
                )
        self.applied_up_to(index)

    def read_confirmed(self, request_id: bytes, index: int) -> None:
        pending = self.reads.pop(request_id, None)
        if pending is not None:
            pending.done(index)

    # -------------------------------------------------------------- failing

    def fail_reads(self, exc: RuntimeUnavailable, keep_term: int | None = None) -> None:
        """Fail unconfirmed reads, except those asked in `keep_term` (still leader there)."""
        for request_id, pending in list(self.reads.items()):
            if keep_term is not None and pending.term == keep_term:
                continue
            del self.reads[request_id]
            pending.done(exc)

    def fail_forwarded(self, reason: str) -> None:
        """Fail forwarded proposals the leader has not placed yet: the leader changed, so
        an answer may never come. The old leader may have appended one (it could still
        commit), so each outcome is unknown (ProposalTimeout), answered now rather than
        at the request's deadline, so the client can retry on the new leader at once."""
        waiting, self.forwarded = self.forwarded, {}
        for forwarded in waiting.values():
            if not forwarded.future.done():
                forwarded.future.set_exception(ProposalTimeout(reason))

    def abort_all(self, exc: RuntimeUnavailable) -> None:
        """Fail everything (shutdown). Proposals fail as ProposalTimeout: a proposed
        write's outcome stays unknown."""
        for proposal in self._take_proposals(lambda p: False):
            if not proposal.future.done():
                proposal.future.set_exception(
                    ProposalTimeout(f"entry {proposal.index} not applied: {exc}")
                )
        for forwarded in self.forwarded.values():
            if not forwarded.future.done():
                forwarded.future.set_exception(
                    ProposalTimeout(f"the forwarded proposal was not answered: {exc}")
                )
        self.forwarded.clear()
        self.fail_reads(exc)
        for _, _, future, _ in self._apply_waiters:
            if not future.done():
                future.set_exception(exc)
        self._apply_waiters.clear()

    def counts(self) -> dict[str, int]:
        return {
            "pending_proposals": sum(len(p) for p in self.proposals.values()) + len(self.forwarded),
            "pending_reads": sum(p.size for p in self.reads.values()),
        }


def _refusal(refused: str) -> Exception:
    """The error for a forwarded proposal the leader refused (never proposed)."""
    if refused == NOT_LEADER:
        return NotLeader(None)
    try:
        reason = DropReason(refused)
    except ValueError:
        reason = DropReason.TRANSFERRING_LEADERSHIP  # an unknown reason: still never proposed
    return ProposalDropped(reason, f"the leader refused the proposal ({refused})")
