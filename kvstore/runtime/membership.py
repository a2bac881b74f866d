"""The node's side of membership: who the members are and where, and whether this
node itself is still one.

Applied CONF_CHANGE entries update the state machine's member directory; after each
(and after a snapshot install, and at start) `changed()` re-derives who is where
(kvstore.runtime.member_view) and re-points the peer links. A node learns that it was
removed from its own log or from a peer's 410 answer, says so clearly and stops, so it
can never serve (or campaign) as a member again. A 410 counts only from a member known
from the log or cluster.toml (and signed, kvstore.peers.link checks, with a secret): a
peer that merely introduced itself cannot make a node stop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping

from consensus import Entry, Membership, NodeId, RaftNode
from consensus.membership import InvalidConfChange, apply_change, decode_conf_change
from consensus.types import SnapshotMeta
from kvstore.config import NodeConfig
from kvstore.runtime.incarnation import NodeIncarnations
from kvstore.runtime.member_view import MemberView
from kvstore.state.machine import KVStateMachine

log = logging.getLogger(__name__)


class MembershipTracker:
    """Owned by NodeRuntime; `set_peers` re-points the peer links (the transport)."""

    def __init__(
        self,
        me: NodeConfig,
        node: RaftNode,
        sm: KVStateMachine,
        view: MemberView,
        set_peers: Callable[[Mapping[NodeId, str]], None],
        on_removed: Callable[[str], None] | None,
    ) -> None:
        self._me = me
        self.incarnations = NodeIncarnations(me.data_dir)
        """This node's incarnation and the ones it has seen of its peers, which forgets
        members once their removal applies, so that a new disk may join again."""
        self._node = node
        self._sm = sm
        self.view = view
        self._set_peers = set_peers
        self._on_removed = on_removed
        self.removed_reason: str | None = None
        snapshot = node.log.storage.snapshot_meta()
        self.applied: Membership = snapshot.membership if snapshot else Membership(())
        """The membership as of the state machine's applied index. The core's moves
        earlier (when a change is handed out for applying, possibly while the runtime
        is still persisting that Ready), so anything captured together with the
        applied state (a backup) must use this one."""

    def admit(self, sender: NodeId, sender_url: str | None) -> str | None:
        """The peer API asks whether to take messages from `sender` (see MemberView)."""
        verdict = self.view.admit(sender, sender_url)
        if verdict is None and sender_url and self.view.learn(sender, sender_url):
            self._set_peers(self.view.peer_urls())
        return verdict

    def changed(self) -> None:
        """Re-derive member addresses and peer links after the membership may have
        changed (a conf change applied, a snapshot installed, start-up)."""
        removed = self._sm.removed_members
        self._set_peers(
            self.view.refresh(self._node.membership, self._sm.member_addresses, removed)
        )
        self.incarnations.forget(n for n in removed if n not in self._node.membership)
        if self._me.id in removed and self._me.id not in self._node.membership:
            self._removed("the log says so")

    def change_applied(self, entry: Entry) -> None:
        """A CONF_CHANGE entry was applied to the state machine."""
        with contextlib.suppress(InvalidConfChange):  # undecodable: the core ignores it too
            self.applied = apply_change(self.applied, decode_conf_change(entry.data))

    def snapshot_installed(self, meta: SnapshotMeta) -> None:
        """A leader's snapshot replaced the state (and maybe the membership)."""
        self.applied = meta.membership
        self.changed()

    def told_removed(self, peer: NodeId, text: str) -> None:
        """A peer answered 410 `removed_member` (the transport's callback)."""
        if peer not in self.view.known():
            log.warning("ignoring 'removed' from %s: not a member of the log or the file", peer)
            return
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
            self._me.id,
            reason,
            self._me.data_dir,
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
