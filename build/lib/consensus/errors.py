"""Typed errors raised by the consensus core to its driver."""

from __future__ import annotations

from consensus.types import NodeId


class ConsensusError(Exception):
    """Base class of every error the core raises."""


class NotLeader(ConsensusError):
    """The request needs the leader; `leader_id` is the best guess of who it is (or None)."""

    def __init__(self, leader_id: NodeId | None) -> None:
        super().__init__(f"not the leader (leader is {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDropped(ConsensusError):
    """The leader cannot take the proposal now (for example a leadership transfer is running)."""


class CompactedError(ConsensusError):
    """The requested index is no longer in the log because it was compacted into a snapshot."""


class UnavailableError(ConsensusError):
    """The requested index is beyond what storage holds."""
