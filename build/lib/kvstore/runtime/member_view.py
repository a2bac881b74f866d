"""Where every member is, as this node sees it: the core's membership (who), the state
machine's directory (addresses of members added through the log) and cluster.toml
(addresses of the founders, whose bootstrap entry names ids only).

The log wins over the file: it is the same on every node, a file may be stale. Peers
that contacted this node before it read about them (a new leader it lags behind) are
remembered by the address they sent, so this node can answer them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from consensus.types import Membership, NodeId
from kvstore.config import ConfigError, NodeConfig, member_node_config
from kvstore.state.members import MemberAddress

log = logging.getLogger(__name__)


class MemberView:
    """Derived state only: recomputed by `refresh` whenever membership may have changed."""

    def __init__(self, self_id: NodeId, file_nodes: tuple[NodeConfig, ...], data_root: Path):
        self.self_id = self_id
        self._file = {n.id: n for n in file_nodes}
        self._data_root = data_root
        self._learned: dict[NodeId, str] = {}
        self._from_log: dict[NodeId, NodeConfig] = {}
        self._warned: set[NodeId] = set()
        self._known: dict[NodeId, NodeConfig] = dict(self._file)
        self.membership = Membership(())
        self.removed: frozenset[NodeId] = frozenset()
        self.members: dict[NodeId, NodeConfig] = {}
        """Current members with a known address (voters and learners)."""

    # -------------------------------------------------------------- updating

    def refresh(
        self,
        membership: Membership,
        directory: Mapping[NodeId, MemberAddress],
        removed: frozenset[NodeId],
    ) -> dict[NodeId, str]:
        """Recompute from the core and the state machine; returns the peer links wanted."""
        self.membership, self.removed = membership, removed
        from_log: dict[NodeId, NodeConfig] = {}
        for node_id, address in directory.items():
            config = self._node_config(node_id, address)
            if config is not None:
                from_log[node_id] = config
        self._from_log = from_log
        self._known = known = {**self._file, **from_log}
        self.members = {n: known[n] for n in membership.members() if n in known}
        for node_id in membership.members():
            if node_id not in known and node_id not in self._warned:
                self._warned.add(node_id)
                log.warning("member %s has no known address (not in the log nor the file)", node_id)
        for node_id in list(self._learned):
            if node_id in self._from_log or node_id in removed:
                del self._learned[node_id]
        return self.peer_urls()

    def learn(self, node_id: NodeId, peer_url: str) -> bool:
        """A peer told us its address; True when that is news (links must be updated)."""
        if node_id == self.self_id or node_id in self._known or node_id in self.removed:
            return False
        log.info("learnt peer %s at %s from its own messages", node_id, peer_url)
        self._learned[node_id] = peer_url.rstrip("/")
        return True

    # -------------------------------------------------------------- reading

    def known(self) -> dict[NodeId, NodeConfig]:
        """Every node with an address: the file's, overridden by the log's."""
        return self._known

    def peer_urls(self) -> dict[NodeId, str]:
        """Links to open: every member; while this node is not a member itself (joining,
        or removed and not yet told), also every node of the file, so that it can
        answer whichever of them leads; and peers that introduced themselves."""
        urls = {n: c.peer_url for n, c in self.members.items()}
        if self.self_id not in self.membership:
            urls.update({n: c.peer_url for n, c in self._file.items() if n not in self.removed})
        for node_id, url in self._learned.items():
            urls.setdefault(node_id, url)
        urls.pop(self.self_id, None)
        return urls

    def admit(self, sender: NodeId, sender_url: str | None) -> str | None:
        """The peer API's verdict on a sender: None (accept), "removed" or "unknown"."""
        if sender in self.removed and sender not in self.membership:
            return "removed"
        if sender in self._known or sender in self.membership or sender in self._learned:
            return None
        return None if sender_url else "unknown"

    def client_url(self, node_id: NodeId) -> str | None:
        node = self.members.get(node_id) or self._known.get(node_id)
        return node.client_url if node is not None else None

    # -------------------------------------------------------------- helpers

    def _node_config(self, node_id: NodeId, address: MemberAddress) -> NodeConfig | None:
        cached = self._from_log.get(node_id)
        if cached is not None and (cached.client_url, cached.peer_url) == (
            address.client_url,
            address.peer_url,
        ):
            return cached
        try:
            return member_node_config(
                node_id, address.client_url, address.peer_url, self._data_root
            )
        except ConfigError as exc:
            if node_id not in self._warned:
                self._warned.add(node_id)
                log.warning("member %s has an unusable address in the log: %s", node_id, exc)
            return None
