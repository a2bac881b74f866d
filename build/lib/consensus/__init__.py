"""Raft consensus as a pure state machine: messages and ticks in, a Ready out.

Nothing in this package does I/O, reads a clock or uses module-level randomness;
the driver (kvstore.node for real, tests.sim for the simulator) does all of that.
"""

from consensus.config import Config
from consensus.errors import ConsensusError, NotLeader, ProposalDropped
from consensus.membership import ConfChange, ConfChangeType, InvalidConfChange
from consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from consensus.node import RaftNode
from consensus.ready import Ready, Status
from consensus.storage import MemoryStorage, Storage, WritableStorage
from consensus.types import (
    Entry,
    EntryType,
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
    "Entry",
    "EntryType",
    "HardState",
    "InstallSnapshot",
    "InvalidConfChange",
    "Membership",
    "MemoryStorage",
    "Message",
    "NodeId",
    "NotLeader",
    "ProposalDropped",
    "RaftNode",
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
