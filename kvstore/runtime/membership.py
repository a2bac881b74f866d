"""The runtime's membership side (a mixin of NodeRuntime, kvstore.node).

Applied CONF_CHANGE entries update the state machine's member directory; after each,
the runtime re-derives who is where (kvstore.member_view) and re-points the transport.
A node learns that it was removed from its own log or from a peer's 410 answer, says so
clearly and stops, so it can never serve (or campaign) as a member again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from consensus import ConfChange, Entry, NodeId, RaftNode, Role
from kvstore.config import NodeConfig
from kvstore.peers.transport import Transport
from kvstore.runtime.member_view import MemberView
from kvstore.runtime.requests import PendingRequests, ProposalTimeout, RuntimeStopped
from kvstore.state.machine import KVStateMachine

log = logging.getLogger("kvstore.runtime.node")


class MembershipMixin:
    """Membership changes and the member view; see the module docstring."""

    node_id: NodeId
    me: NodeConfig
    node: RaftNode
    sm: KVStateMachine
    view: MemberView
    transport: Transport
    pending: PendingRequests
    removed_reason: str | None
    _on_removed: Callable[[str], None] | None
    _wake: asyncio.Event

    if TYPE_CHECKING:

        def _check_running(self) -> None: ...

    def admit(self, sender: NodeId, sender_url: str | None) -> str | None:
        """The peer API asks whether to take messages from `sender` (see MemberView)."""
        verdict = self.view.admit(sender, sender_url)
        if verdict is None and sender_url and self.view.learn(sender, sender_url):
            self.transport.set_peers(self.view.peer_urls())
        return verdict

    async def propose_conf_change(self, change: ConfChange, timeout: float) -> Entry:
        """Propose a membership change and wait until it is applied here. Raises
        NotLeader / ProposalDropped / InvalidConfChange before anything was proposed,
        ProposalOverwritten or ProposalTimeout after."""
        self._check_running()
        entry = self.node.propose_conf_change(change)
        deadline = asyncio.get_running_loop().time() + timeout
        future = self.pending.add_proposal(entry, deadline)
        self._wake.set()
        try:
            await future
        except RuntimeStopped as exc:
            raise ProposalTimeout(f"entry {entry.index} not applied: {exc}") from None
        finally:
            self.pending.forget_proposal(entry.index, future)
        return entry

    def transfer_leadership(self, to: NodeId) -> None:
        self.node.transfer_leadership(to)
        self._wake.set()

    def replication(self) -> dict[NodeId, int]:
        """On the leader, the match index of every member (its own: its last index).

        The core has no public accessor for per-follower progress, so this reads its
        private `_progress` (reported; read-only use)."""
        if self.node.role is not Role.LEADER:
            return {}
        progress = getattr(self.node, "_progress", {})
        matches = {peer: int(pr.match) for peer, pr in progress.items()}
        matches[self.node_id] = self.node.log.last_index()
        return matches

    def _membership_changed(self) -> None:
        """Re-derive member addresses and peer links after the membership may have
        changed (a conf change applied, a snapshot installed, start-up)."""
        removed = self.sm.removed_members
        peers = self.view.refresh(self.node.membership, self.sm.member_addresses, removed)
        self.transport.set_peers(peers)
        if self.node_id in removed and self.node_id not in self.node.membership:
            self._removed("the log says so")

    def _told_removed(self, peer: NodeId, text: str) -> None:
        self._removed(f"{peer} answered: {text.strip()[:200]}")

    def _removed(self, reason: str) -> None:
        """This node is no longer a member: say so clearly and stop (the server exits)."""
        if self.removed_reason is not None:
            return
        self.removed_reason = reason
        log.warning(
            "node %s was removed from the cluster (%s): it no longer serves as a member "
            "and stops; to add it again, wipe %s and start it with --join, then "
            "`kv member add`",
            self.node_id,
            reason,
            self.me.data_dir,
        )
        if self._on_removed is not None:
            self._on_removed(reason)

    @property
    def members(self) -> dict[NodeId, NodeConfig]:
        """Current members with a known address."""
        return self.view.members

    @property
    def member_ids(self) -> frozenset[NodeId]:
        return frozenset(self.view.known())
