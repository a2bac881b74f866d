"""Typed errors raised by the consensus core to its driver."""

from __future__ import annotations

import enum

from consensus.types import NodeId


class ConsensusError(Exception):
    """Base class of every error the core raises."""


class NotLeader(ConsensusError):
    """The request needs the leader; `leader_id` is the best guess of who it is (or None)."""

    def __init__(self, leader_id: NodeId | None) -> None:
        super().__init__(f"not the leader (leader is {leader_id or 'unknown'})")
        self.leader_id = leader_id


class DropReason(enum.Enum):
    """Why a leader refused a proposal. Every refusal is temporary, but they clear on
    different time scales, so a driver may answer or retry differently for each."""

    TRANSFERRING_LEADERSHIP = "transferring_leadership"
    """A leadership transfer is under way: proposals would only be lost with the old
    term. It ends within an election timeout (a new leader, or the transfer abandoned)."""
    TOO_MANY_UNCOMMITTED = "too_many_uncommitted"
    """Back-pressure: `Config.max_uncommitted_entries` entries await commitment because
    followers do not keep up (or no quorum is reachable)."""
    TERM_NOT_COMMITTED = "term_not_committed"
    """A membership change waits until the new leader has committed an entry of its own
    term (its no-op), normally one round trip after the election."""
    CONF_CHANGE_PENDING = "conf_change_pending"
    """Another membership change is in the log but has not taken effect yet: changes go
    one at a time."""


class ProposalDropped(ConsensusError):
    """The leader cannot take the proposal now and did not append it; `reason` says why
    (a `DropReason`) and the message says so in words."""

    def __init__(self, reason: DropReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CompactedError(ConsensusError):
    """The requested index is no longer in the log because it was compacted into a snapshot."""


class UnavailableError(ConsensusError):
    """The requested index is beyond what storage holds."""
