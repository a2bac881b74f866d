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
import itertools
import os
from collections.abc import Callable

from consensus import RaftNode
from kvstore.runtime.requests import PendingRequests, ProposalTimeout, RuntimeStopped
from kvstore.state.machine import ApplyResult


class ViaLeader:
    def __init__(
        self,
        node: RaftNode,
        pending: PendingRequests,
        wake: Callable[[], None],
        applied_index: Callable[[], int],
    ) -> None:
        self._node = node
        self._pending = pending
        self._wake = wake
        self._applied_index = applied_index
        self._prefix = os.urandom(8)
        self._ids = itertools.count(1)

    def _request_id(self) -> bytes:
        return self._prefix + next(self._ids).to_bytes(8, "big")

    async def barrier(self, loop: asyncio.AbstractEventLoop, timeout: float) -> int:
        """A read index confirmed by a quorum of the leader's term, applied here; see
        NodeRuntime.barrier. Raises NotLeader when no leader is known."""
        request_id = self._request_id()
        self._node.read_index(request_id)
        deadline = loop.time() + timeout
        future = self._pending.add_read(request_id, self._node.term, deadline)
        if self._node.has_ready():  # else it waits for a request or round in flight
            self._wake()
        try:
            index = await future
            if self._applied_index() < index:
                await self._pending.wait_applied(index, deadline)
        finally:
            self._pending.reads.pop(request_id, None)
        return index

    async def propose(self, data: bytes, deadline: float) -> ApplyResult | None:
        """Have the leader propose `data`; the result of applying it here. Raises
        NotLeader (no leader known, or the leader refused as not leading: never
        proposed), ProposalDropped (refused: never proposed), ProposalOverwritten, or
        ProposalTimeout (outcome unknown)."""
        request_id = self._request_id()
        self._node.forward_proposal(request_id, data)
        future = self._pending.add_forwarded(request_id, deadline)
        self._wake()
        try:
            return await future
        except RuntimeStopped as exc:  # perhaps proposed already: the outcome is unknown
            raise ProposalTimeout(f"the forwarded proposal was not answered: {exc}") from None
