"""The hand-off from the pure core to its driver.

The driver handles a Ready in this order, and only then calls `advance(ready)`:
0. when `snapshot` is set, install the snapshot the driver received for it (storage
   and state machine) before anything else;
1. persist `hard_state` and `entries` in one synced write (`WritableStorage.save`);
2. send `messages` (they may promise what step 1 made durable);
3. apply `committed` entries in order and serve `read_states` once applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.messages import Message
from consensus.types import Entry, HardState, NodeId, ReadState, Role, SnapshotMeta


@dataclass(frozen=True, slots=True)
class Ready:
    hard_state: HardState | None
    """New hard state to persist, or None when it did not change."""
    entries: tuple[Entry, ...]
    """Entries to persist; they replace any stored entry at or after entries[0].index."""
    messages: tuple[Message, ...]
    committed: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    snapshot: SnapshotMeta | None = None
    """A snapshot from the leader that replaces this node's log prefix and state."""

    @property
    def must_sync(self) -> bool:
        return self.hard_state is not None or bool(self.entries)


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
