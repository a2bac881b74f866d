"""A simulated disk per node: a `MemoryStorage` that survives crashes of its node.

The driver syncs each Ready with one `save`, so the disk holds exactly what completed
`save` calls wrote; a crash anywhere in Ready handling (before the save, after it but
before the messages went out, after sending but before applying) loses everything the
core only held in memory, which is the unsynced tail. A restart builds a new RaftNode
from `storage` alone. Observers see every save before it lands, which is where the
checkers verify that committed entries are never overwritten and that term and vote
only move forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from consensus import Entry, HardState, MemoryStorage, NodeId, SnapshotMeta

SaveObserver = Callable[[NodeId, "SimDisk", HardState | None, Sequence[Entry]], None]
SnapshotObserver = Callable[[NodeId, "SimDisk", SnapshotMeta, bytes], None]


class SimDisk:
    """Durable state of one node; only `save` and `apply_snapshot` change it."""

    def __init__(
        self,
        node_id: NodeId,
        observer: SaveObserver | None = None,
        snapshot_observer: SnapshotObserver | None = None,
    ) -> None:
        self.node_id = node_id
        self.storage = MemoryStorage()
        self.saves = 0
        self.snapshots = 0
        self._observer = observer
        self._snapshot_observer = snapshot_observer

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """One atomic synced write, as the driver's persist step performs it."""
        if self._observer is not None:
            self._observer(self.node_id, self, hard_state, entries)
        self.storage.save(hard_state, entries)
        self.saves += 1

    def apply_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Store a snapshot and drop the log it covers (one atomic synced write): used
        both for local compaction and for installing a snapshot from the leader."""
        if self._snapshot_observer is not None:
            self._snapshot_observer(self.node_id, self, meta, data)
        self.storage.apply_snapshot(meta, data)
        self.snapshots += 1

    # --- read-only views for the checkers --------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self.storage.initial_state()

    def last_index(self) -> int:
        return self.storage.last_index()

    def entry(self, index: int) -> Entry | None:
        """The stored entry at `index`, or None when the disk does not hold it."""
        if index < self.storage.first_index() or index > self.storage.last_index():
            return None
        return self.storage.entries(index, index + 1)[0]

    def log(self) -> list[Entry]:
        return self.storage.entries(self.storage.first_index(), self.storage.last_index() + 1)
