"""The runtime's view of leadership (a mixin of NodeRuntime, kvstore.node): who leads,
waiting for a leader, logging changes, and handing leadership away before shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from consensus import NodeId, RaftNode, Role
from kvstore.config import Tuning
from kvstore.peers.transport import Transport
from kvstore.runtime.member_view import MemberView
from kvstore.runtime.requests import (
    PendingRequests,
    ReadAborted,
    RuntimeStopped,
    RuntimeUnavailable,
)

log = logging.getLogger("kvstore.runtime.node")


class LeadershipMixin:
    """See the module docstring."""

    node_id: NodeId
    node: RaftNode
    tuning: Tuning
    view: MemberView
    transport: Transport
    pending: PendingRequests
    stopping: bool
    _wake: asyncio.Event
    _leader_known: asyncio.Event
    _seen: tuple[Role, int, NodeId | None]

    @property
    def election_timeout_s(self) -> float:
        return self.tuning.tick_ms * self.tuning.election_ticks / 1000

    async def drain(self, timeout: float) -> None:
        """Before shutdown: hand leadership away (so clients wait one round trip, not an
        election timeout), give waiting requests a moment, then fail the rest."""
        if self.node.role is Role.LEADER and len(self.view.members) > 1:
            voters = self.node.membership.voters  # a learner cannot take over
            reachable = sorted(
                p
                for p, st in self.transport.peer_status().items()
                if st["reachable"] and p in voters
            )
            if reachable:
                with contextlib.suppress(Exception):
                    self.node.transfer_leadership(reachable[0])
                    self._wake.set()
                    log.info("shutting down: handing leadership to %s", reachable[0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.pending.abort_all(RuntimeStopped("the node is shutting down"))

    async def wait_for_leader(self, timeout: float) -> NodeId | None:
        """The known leader, waiting up to `timeout` for one to emerge."""
        if self.node.leader_id is None and timeout > 0 and not self.stopping:
            self._leader_known.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._leader_known.wait()
        return self.node.leader_id

    def _observe_leadership(self) -> None:
        """Log leader changes and fail reads whose leadership was not confirmed in time."""
        node = self.node
        seen = (node.role, node.term, node.leader_id)
        if seen == self._seen:
            return
        _, old_term, old_leader = self._seen
        self._seen = seen
        if node.leader_id is not None:
            self._leader_known.set()
        if node.leader_id != old_leader or node.term != old_term:
            if node.leader_id == self.node_id:
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
        if self.pending.reads:
            keep = node.term if node.role is Role.LEADER else None
            self.pending.fail_reads(
                ReadAborted("leadership changed before the read was confirmed"), keep
            )

    def abort_waiters(self, exc: RuntimeUnavailable) -> None:
        self.pending.abort_all(exc)

    # ------------------------------------------------------------------ status

    @property
    def leader_id(self) -> NodeId | None:
        return self.node.leader_id

    @property
    def is_leader(self) -> bool:
        return self.node.role is Role.LEADER
