"""Raft consensus as a pure state machine: messages and ticks in, a Ready out.

Nothing in this package does I/O, reads a clock or uses module-level randomness;
the driver (kvstore.node for real, tests.sim for the simulator) does all of that.
"""

from consensus.config import Config
from consensus.errors import ConsensusError, NotLeader, ProposalDropped
from consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from consensus.node import RaftNode
from consensus.ready import Ready, Status
from consensus.storage import MemoryStorage, Storage, WritableStorage
from consensus.types import Entry, EntryType, HardState, NodeId, ReadState, Role

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "Config",
    "ConsensusError",
    "Entry",
    "EntryType",
    "HardState",
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
    "Status",
    "Storage",
    "TimeoutNow",
    "WritableStorage",
]
