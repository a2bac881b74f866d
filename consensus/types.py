"""Plain values shared by every part of the consensus core.

Everything here is a value: never assign to one once built, so that a value handed to
the runtime (to persist or send) can never be changed behind its back by the core. The
ones built for every write (Entry, HardState, ReadState, ForwardedProposal) are plain
dataclasses, equal and hashed by their fields, with that rule documented instead of
enforced: a frozen dataclass's __init__ sets each field through object.__setattr__
(building an Entry 1.31 against 0.46 us), and each node builds every entry at least
once (the leader when proposing, a follower when decoding), as it does each message
(see consensus.messages).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

NodeId = str


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryType(enum.IntEnum):
    """NORMAL carries client data; NOOP is what a new leader appends to commit its term;
    CONF_CHANGE carries an encoded `membership.ConfChange`."""

    NORMAL = 0
    NOOP = 1
    CONF_CHANGE = 2


@dataclass(unsafe_hash=True, slots=True)
class Entry:
    term: int
    index: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL

    def size(self) -> int:
        """Approximate wire size, used to bound batches in bytes."""
        return len(self.data) + ENTRY_OVERHEAD


ENTRY_OVERHEAD = 24
"""What `Entry.size` adds to the data's length for the term, index and type."""


def entry_sizes(entries: Iterable[Entry]) -> list[int]:
    """Each entry's `size()`, in one list comprehension: the leader sizes every entry
    several times (the batch limit, flow control, the link's queue, the log cache), and
    a generator calling `size()` took ~1.6 times as long."""
    return [len(entry.data) + ENTRY_OVERHEAD for entry in entries]


def entries_size(entries: Sequence[Entry]) -> int:
    """The sum of the entries' `size()` (see `entry_sizes`)."""
    return sum([len(entry.data) for entry in entries]) + ENTRY_OVERHEAD * len(entries)


@dataclass(unsafe_hash=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it leaves the node."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(unsafe_hash=True, slots=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches `index`."""

    request_id: bytes
    index: int


@dataclass(unsafe_hash=True, slots=True)
class ForwardedProposal:
    """The fate of a proposal a follower forwarded (`RaftNode.forward_proposal`): the
    leader appended it at (`index`, `term`), or refused it (`index` 0, `refused` says
    why) and then it was certainly never proposed."""

    request_id: bytes
    index: int
    term: int
    refused: str = ""


@dataclass(frozen=True, slots=True)
class Membership:
    """Who votes and who only replicates (learners catching up before promotion)."""

    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...] = ()

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.voters or node_id in self.learners

    def members(self) -> tuple[NodeId, ...]:
        return self.voters + self.learners


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The log position a snapshot covers and the membership in force there."""

    index: int
    term: int
    membership: Membership


class RandomSource(Protocol):
    """The randomness the core needs, injected so that a seed replays a run exactly;
    `random.Random(seed)` is one."""

    def randrange(self, start: int, stop: int) -> int: ...
