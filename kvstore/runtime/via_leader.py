"""What a node asks of the leader for its own clients, over the peer link: read indexes
(on the leader itself a ReadIndex round) and, on a follower, proposals.

A follower serves a linearizable read itself: the core asks the leader for a read
index (consensus.forwarding), and the read waits until this node has applied it. A
follower's write goes to the leader as a ProposeRequest; the leader answers where it
put the command (index, term), and the proposal then waits here exactly like one of
the leader's own (kvstore.runtime.requests): the entry this node applies at that
index decides, and this node's own state machine gives the result (it is the same
on every node: the state machine reads nothing but the log). No second HTTP request,
and the answer rides on messages the peer link carries anyway.

Request ids start with a random prefix per process: an answer meant for an earlier
incarnation of this node (still on its way at a restart) must never match a new one.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from consensus import NotLeader, RaftNode
from kvstore.runtime.requests import PendingRequests, ReadDone, Waiter

log = logging.getLogger(__name__)


_SLACK_S = 0.1
"""A read joins a batch whose deadline is at most this much earlier than its own (in
one turn of the loop deadlines differ by microseconds; a retry has a nearer one)."""


@dataclass(slots=True)
class _Batch:
    """Reads that share one read index (see ViaLeader.confirm)."""

    deadline: float
    waiters: list[ReadDone]
    request_id: bytes = b""
    """Once asked of the core (`_ask`)."""

    def tell(self, outcome: int | Exception) -> None:
        for done in self.waiters:
            try:
                done(outcome)
            except Exception:  # a bug in one waiter must not stop the others or the loop
                log.exception("a read waiter failed")


def _settle(future: asyncio.Future[int], outcome: int | Exception) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _applied(batch: _Batch, index: int, future: asyncio.Future[None]) -> None:
    error = future.exception()  # TimeoutError or RuntimeStopped
    batch.tell(index if error is None else cast(Exception, error))


class ViaLeader:
    def __init__(
        self,
        node: RaftNode,
        pending: PendingRequests,
        wake: Callable[[], None],
        applied_index: Callable[[], int],
    ) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        """Set by NodeRuntime.start (asking asyncio for it costs a getpid())."""
        self._open: _Batch | None = None
        """The batch that reads asked in this turn of the loop join."""
        self._queued: _Batch | None = None
        """The batch asked of the core last (see confirm)."""
        self._node = node
        self._pending = pending
        self._wake = wake
        self._applied_index = applied_index
        self._prefix = os.urandom(8)
        self._ids = itertools.count(1)

    def _request_id(self) -> bytes:
        return self._prefix + next(self._ids).to_bytes(8, "big")

    def confirm(self, done: ReadDone, deadline: float) -> None:
        """Tell `done` a read index confirmed by a quorum of the leader's term once this
        node has applied it (or the error that ended the wait: NotLeader when no leader
        is known, ReadAborted, TimeoutError at `deadline`, RuntimeStopped). Reads asked
        in one turn of the event loop share one request id, asked of the core at the
        end of that turn (`_ask`): each of them began before it, so the index the core
        then obtains serves them all (joining after the core recorded it would not be
        safe), and they share one wait for the apply. `done` must not raise. On a
        follower a read also joins the batch asked last while the core still holds it
        for its next request (one is in flight): the leader answers after receiving that
        request, so after every read in it began (consensus.forwarding)."""
        batch = self._open
        if batch is not None and batch.deadline <= deadline <= batch.deadline + _SLACK_S:
            batch.waiters.append(done)
            return
        batch = self._queued
        if batch is not None and batch.deadline <= deadline <= batch.deadline + _SLACK_S:
            pending = self._pending.reads.get(batch.request_id)  # None: told already
            if pending is not None and self._node.read_unsent(batch.request_id):
                batch.waiters.append(done)
                pending.size += 1
                return
        batch = _Batch(deadline, [done])
        if self._open is None:
            self._open = batch
        assert self.loop is not None, "reads begin after NodeRuntime.start"
        self.loop.call_soon(self._ask, batch)

    async def barrier(self, timeout: float) -> int:
        """`confirm` for a coroutine; see NodeRuntime.barrier."""
        loop = self.loop
        assert loop is not None, "reads begin after NodeRuntime.start"
        future: asyncio.Future[int] = loop.create_future()
        self.confirm(functools.partial(_settle, future), loop.time() + timeout)
        return await future

    def _ask(self, batch: _Batch) -> None:
        if batch is self._open:
            self._open = None
        request_id = batch.request_id = self._request_id()
        try:
            self._node.read_index(request_id)
        except NotLeader as exc:
            batch.tell(exc)
            return
        self._queued = batch
        self._pending.add_read(
            request_id,
            self._node.term,
            batch.deadline,
            functools.partial(self._confirmed, batch),
            len(batch.waiters),
        )
        if self._node.has_ready():  # else it waits for a request or round in flight
            self._wake()

    def _confirmed(self, batch: _Batch, outcome: int | Exception) -> None:
        if isinstance(outcome, Exception) or self._applied_index() >= outcome:
            batch.tell(outcome)
            return
        applied = self._pending.wait_applied(outcome, batch.deadline)
        applied.add_done_callback(functools.partial(_applied, batch, outcome))

    def propose(self, data: bytes, deadline: float, waiter: Waiter) -> None:
        """Have the leader propose `data` (queued in the core now: the caller may send it
        at once, RaftNode.early_messages); `waiter` gets the result of applying it here,
        or NotLeader (no leader known, or the leader refused as not leading: never
        proposed), ProposalDropped (refused: never proposed), ProposalOverwritten, or
        ProposalTimeout (outcome unknown)."""
        request_id = self._request_id()
        self._node.forward_proposal(request_id, data)
        self._pending.add_forwarded(request_id, deadline, waiter)
        self._wake()
