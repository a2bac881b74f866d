"""Cluster settings on one node: the first leader writes them into the log, and every
node says so when its own cluster.toml disagrees with what the log decided.

Why in the log: `session_ttl_entries` and `max_sessions` decide whether a write applies
(session expiry and eviction). Read from each node's file, two nodes could apply the
same log differently, and a write acknowledged by one could be a no-op on the other. So
the state machine takes them only from a SetSettings entry (kvstore.state.commands),
and keeps them in its snapshots; a node's [tuning] only supplies what a leader proposes
when the log has none yet (`only_if_unset`, so racing leaders agree on the first).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from consensus import NotLeader, ProposalDropped, RaftNode, Role
from kvstore.config import Tuning
from kvstore.state.commands import SetSettings, encode_command
from kvstore.state.machine import KVStateMachine
from kvstore.state.snapshot import ClusterSettings

log = logging.getLogger(__name__)


class SettingsKeeper:
    """Owned by NodeRuntime; `observe()` runs after every batch of Readys."""

    def __init__(
        self, node: RaftNode, sm: KVStateMachine, tuning: Tuning, wake: Callable[[], None]
    ) -> None:
        self._node = node
        self._sm = sm
        self._wanted = ClusterSettings(
            tuning.session_ttl_entries, tuning.max_sessions, tuning.history_revisions
        )
        self._wake = wake
        self._seen: ClusterSettings | None = None
        self._proposed_in_term = 0

    def observe(self) -> None:
        settings = self._sm.settings
        if settings is not None and settings != self._seen:
            self._seen = settings
            self._report(settings)
        if settings is None and self._node.role is Role.LEADER:
            self._propose()

    def _report(self, settings: ClusterSettings) -> None:
        if settings == self._wanted:
            log.info("cluster settings from the log: %s", settings)
            return
        log.warning(
            "cluster settings from the log: %s; this node's cluster.toml says %s, but apply "
            "results must not depend on a node's own file: it follows the log",
            _describe(settings),
            _describe(self._wanted),
        )

    def _propose(self) -> None:
        """Once per term: a proposal that is lost goes with the term that made it."""
        term = self._node.term
        if self._proposed_in_term == term:
            return
        wanted = self._wanted
        command = SetSettings(*wanted.to_wire(), only_if_unset=True)
        try:
            self._node.propose(encode_command(command))
        except (NotLeader, ProposalDropped):
            return  # try again after the next Ready
        self._proposed_in_term = term
        self._wake()


def _describe(settings: ClusterSettings) -> str:
    return (
        f"session_ttl_entries={settings.session_ttl_entries}, "
        f"max_sessions={settings.max_sessions}, history_revisions={settings.history_revisions}"
    )
