"""The hand-off from the pure core to its driver.

The driver handles a Ready in this order, and only then calls `advance(ready)`:
0. when `snapshot` is set, install the snapshot the driver received for it (storage
   and state machine) before anything else;
1. persist `hard_state` and `entries` in one synced write (`WritableStorage.save`);
   `messages_before_persist` may already go out before this step;
2. send `messages` (they may promise what step 1 made durable); a driver that sent
   `messages_before_persist` early sends only `messages_after_persist` here;
3. apply `committed` entries in order and serve `read_states` once applied; a
   `forwarded` proposal resolves like one of the driver's own when its index is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from consensus.log import RaftLog
from consensus.messages import AppendEntries, Message, ProposeResponse, TimeoutNow
from consensus.types import (
    Entry,
    ForwardedProposal,
    HardState,
    Membership,
    NodeId,
    ReadState,
    Role,
    SnapshotMeta,
)

_EARLY = (AppendEntries, TimeoutNow, ProposeResponse)
"""What a leader may send before persisting its Ready (see `leader_messages_first`).
A ProposeResponse names where the leader put a forwarded command (or that it refused
it): a fact about its log in memory, which the follower checks against the entry it
applies at that index, so it promises nothing the disk must hold."""


@dataclass(unsafe_hash=True, slots=True)
class Ready:
    """What the driver must persist, send and apply next: a value, never assigned to
    (plain rather than frozen for speed, one per loop turn; see consensus.types)."""

    hard_state: HardState | None
    """New hard state to persist, or None when it did not change."""
    entries: tuple[Entry, ...]
    """Entries to persist; they replace any stored entry at or after entries[0].index."""
    messages: tuple[Message, ...]
    committed: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    snapshot: SnapshotMeta | None = None
    """A snapshot from the leader that replaces this node's log prefix and state."""
    early_messages: int = 0
    """How many of `messages`, from the start, may be sent before persisting (see
    `leader_messages_first`)."""
    forwarded: tuple[ForwardedProposal, ...] = ()
    """Where the leader put the proposals this node forwarded (`forward_proposal`)."""

    @property
    def must_sync(self) -> bool:
        return self.hard_state is not None or bool(self.entries)

    @property
    def messages_before_persist(self) -> tuple[Message, ...]:
        return self.messages[: self.early_messages]

    @property
    def messages_after_persist(self) -> tuple[Message, ...]:
        return self.messages[self.early_messages :]


def outgoing(
    messages: list[Message],
    log: RaftLog,
    leading: bool,
    hard_state: HardState | None,
    saved: HardState,
) -> tuple[tuple[Message, ...], int]:
    """A Ready's messages and how many may leave before it is persisted: a leader's
    are first held back (`hold_back_commit`), then ordered (`leader_messages_first`)."""
    if leading:
        messages = hold_back_commit(messages, log, saved.commit)
    return leader_messages_first(messages, leading, hard_state, saved)


def leader_messages_first(
    messages: list[Message], leading: bool, hard_state: HardState | None, saved: HardState
) -> tuple[tuple[Message, ...], int]:
    """`messages` reordered so that those that may leave before the Ready is persisted
    come first, and how many they are. A leader whose term and vote are already durable
    may send AppendEntries (and TimeoutNow) while its own disk syncs, as in §10.2.1 of
    the Raft dissertation: its own copy counts towards commitment only once durable
    (`Leadership._maybe_commit` uses the stable index), so a crash before its fsync can
    only lose entries that were never counted on it. Everything else waits: a vote or
    an acknowledgement promises what this Ready makes durable, and a message of a term
    that this Ready saves must not outrun the term on disk."""
    durable = hard_state is None or (hard_state.term, hard_state.vote) == (saved.term, saved.vote)
    if not (leading and durable):
        return tuple(messages), 0
    early = [m for m in messages if isinstance(m, _EARLY)]
    late = [m for m in messages if not isinstance(m, _EARLY)]
    return (*early, *late), len(early)


def while_persisting(
    messages: list[Message], log: RaftLog, saved: HardState
) -> tuple[tuple[Message, ...], list[Message]]:
    """A leader's messages split while its Ready persists (`RaftNode.early_messages`):
    those that may leave now (as `leader_messages_first` orders a Ready's), and the rest,
    which wait for the next Ready. `saved` is the hard state on disk before that Ready."""
    out, early = outgoing(messages, log, True, None, saved)
    return out[:early], list(out[early:])


def hold_back_commit(messages: list[Message], log: RaftLog, durable: int) -> list[Message]:
    """A leader's messages with a commit index that covers no membership change beyond
    the commit index on its disk (`durable`). A node that learns its removal is
    committed stops for good; if the leader then restarts from a disk that does not
    know that commit either, it is left with a configuration that still counts the
    stopped node, and never gets a quorum. So the commit of a change is revealed only
    once the leader saved it (a Ready that hands a change out always saves it)."""
    first = log.first_conf_change(durable + 1, log.committed + 1)
    if first is None:
        return messages
    return [
        replace(m, leader_commit=first - 1)
        if isinstance(m, AppendEntries) and m.leader_commit >= first
        else m
        for m in messages
    ]


def hard_state_to_save(current: HardState, saved: HardState, saving: bool) -> HardState | None:
    """What a Ready carries as `hard_state`, given what was saved last. Term and vote
    must be durable before anything that depends on them is sent. The commit index
    alone is not worth a sync of its own (it is relearnt from the leader after a
    restart), so it rides along only when something else is `saving`."""
    if (current.term, current.vote) != (saved.term, saved.vote):
        return current
    if saving and current.commit != saved.commit:
        return current
    return None


@dataclass(frozen=True, slots=True)
class Status:
    """A read-only view of a node for `kv status` and for tests."""

    id: NodeId
    role: Role
    term: int
    leader: NodeId | None
    commit_index: int
    applied_index: int
    last_index: int
    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...] = ()
    first_index: int = 1
    """The first index still in the log; entries before it live in the snapshot."""

    @classmethod
    def of(
        cls,
        node_id: NodeId,
        role: Role,
        term: int,
        leader: NodeId | None,
        log: RaftLog,
        membership: Membership,
    ) -> Status:
        """A node's status from its log and membership (RaftNode.status)."""
        return cls(
            node_id,
            role,
            term,
            leader,
            log.committed,
            log.applied,
            log.last_index(),
            membership.voters,
            membership.learners,
            log.first_index(),
        )
