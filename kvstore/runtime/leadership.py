"""Who leads, as this node sees it: leader-change logging, waiting for a leader, and
failing linearizable reads whose leadership was not confirmed before it changed (and
forwarded proposals the old leader never placed).

An object of its own (owned by NodeRuntime, kvstore.runtime.node) with two inputs:
`observe()`, called by the ready loop after every batch of Readys, and
`peer_unreachable()`, called by the transport when a peer's connection breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from consensus import NodeId, RaftNode, Role
from kvstore.runtime.requests import PendingRequests, ReadAborted
from kvstore.runtime.stats import RuntimeStats

log = logging.getLogger(__name__)


class LeadershipWatch:
    """Follows the core's (role, term, leader) and tells the rest of the node."""

    def __init__(
        self, node_id: NodeId, node: RaftNode, pending: PendingRequests, stats: RuntimeStats
    ) -> None:
        self._node_id = node_id
        self._node = node
        self._pending = pending
        self._stats = stats
        self.handing_to: NodeId | None = None
        """Set when this leader starts a leadership transfer, so the change has a cause."""
        self._seen: tuple[Role, int, NodeId | None] = (node.role, node.term, None)
        self._leader_known = asyncio.Event()

    async def wait_for_leader(self, timeout: float) -> NodeId | None:
        """The known leader, waiting up to `timeout` for one to emerge."""
        if self._node.leader_id is None and timeout > 0:
            self._leader_known.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._leader_known.wait()
        return self._node.leader_id

    def peer_unreachable(self, peer: NodeId) -> None:
        """The transport lost its connection to `peer` (closed, reset or refused). The
        core decides what that means (RaftNode.peer_unreachable: if `peer` led, an
        early election)."""
        self._node.peer_unreachable(peer)

    def observe(self) -> None:
        """Log leader changes and fail reads whose leadership was not confirmed in time."""
        node = self._node
        seen = (node.role, node.term, node.leader_id)
        if seen == self._seen:
            return
        _, old_term, old_leader = self._seen
        self._seen = seen
        if node.leader_id is not None:
            self._leader_known.set()
        if node.leader_id != old_leader:
            self._stats.leader_changed(node.term, node.leader_id, self._cause(old_leader, old_term))
            self.handing_to = None
        if node.leader_id != old_leader or node.term != old_term:
            if node.leader_id == self._node_id:
                log.info("this node is now the leader (term %d)", node.term)
            elif node.leader_id is not None:
                log.info("leader is %s (term %d)", node.leader_id, node.term)
            elif old_leader is not None:
                log.warning(
                    "lost leader %s (now %s, term %d): writes wait for an election",
                    old_leader,
                    node.role.value,
                    node.term,
                )
        if self._pending.forwarded and (node.leader_id != old_leader or node.term != old_term):
            self._pending.fail_forwarded(
                f"leadership changed (term {old_term} to {node.term}) before the leader "
                "said where it put the proposal"
            )
        if self._pending.reads:
            keep = node.term if node.role is Role.LEADER else None
            self._pending.fail_reads(
                ReadAborted("leadership changed before the read was confirmed"), keep
            )

    def _cause(self, old_leader: NodeId | None, old_term: int) -> str:
        """Why the leader changed, as far as this node can tell from its own view."""
        node, me = self._node, self._node_id
        new = node.leader_id
        if new is not None:
            if self.handing_to == new:
                return f"leadership handed over by this node (term {node.term})"
            winner = "this node" if new == me else new
            return f"{winner} won the election for term {node.term}"
        if old_leader == me:
            if node.term > old_term:
                return f"stepped down: saw the higher term {node.term}"
            return "stepped down: no word from a quorum for an election timeout"
        if node.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            if old_leader is None:
                return "election timeout: no leader known"
            return f"election timeout: no heartbeat from {old_leader}"
        return f"another node started the election for term {node.term}"
