"""Raft consensus as a pure state machine: messages and ticks in, a Ready out.

Nothing in this package does I/O, reads a clock or uses module-level randomness;
the driver (kvstore.node for real, tests.sim for the simulator) does all of that.

Besides the Ready loop, a driver may read (never through private names):
- `RaftNode.progress() -> Mapping[NodeId, PeerProgress]`: on the leader, each member's
  replication progress (`match`, `next`, `state`, `recent_active`); empty elsewhere.
- `RaftNode.pending_snapshot -> SnapshotMeta | None`: the snapshot from the leader
  that the driver must install with the next Ready (None when there is none).
- `ProposalDropped.reason -> DropReason`: why a leader refused a proposal or a
  membership change (a transfer under way, back-pressure, ...), to answer accordingly.
"""

from consensus.config import Config
from consensus.errors import ConsensusError, DropReason, NotLeader, ProposalDropped
from consensus.membership import ConfChange, ConfChangeType, InvalidConfChange
from consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    LeaderDurable,
    Message,
    ProposeRequest,
    ProposeResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from consensus.node import RaftNode
from consensus.progress import PeerProgress
from consensus.ready import Ready, Status
from consensus.storage import MemoryStorage, Storage, WritableStorage
from consensus.types import (
    Entry,
    EntryType,
    ForwardedProposal,
    HardState,
    Membership,
    NodeId,
    ReadState,
    Role,
    SnapshotMeta,
)

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "ConfChange",
    "ConfChangeType",
    "Config",
    "ConsensusError",
    "DropReason",
    "Entry",
    "EntryType",
    "ForwardedProposal",
    "HardState",
    "InstallSnapshot",
    "InvalidConfChange",
    "LeaderDurable",
    "Membership",
    "MemoryStorage",
    "Message",
    "NodeId",
    "NotLeader",
    "PeerProgress",
    "ProposalDropped",
    "ProposeRequest",
    "ProposeResponse",
    "RaftNode",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ReadState",
    "Ready",
    "RequestVote",
    "RequestVoteResponse",
    "Role",
    "SnapshotMeta",
    "Status",
    "Storage",
    "TimeoutNow",
    "WritableStorage",
]
