"""Snapshots on one node: taking them (compaction) and installing the leader's.

Taking: kvstore.runtime.compaction folds the state into a snapshot without stalling
the loop; `between_readies()` starts and finishes that work. When (`snapshot_due`):
never within `snapshot_every` entries of the last snapshot; then at the latest once
the log applied since it began is LOG_TO_SNAPSHOT_RATIO times that snapshot's size (the
bound); and earlier at the node's own points of a grid shared by all nodes. Why tied
to bytes: a snapshot costs O(state) (CPU, disk), so taking one every N entries costs
O(state) per N writes, which at a million keys kept every node's disk and CPU busy and
cost a leader its office; tied to the log's bytes, the cost per byte written is a
constant, whatever the state's size.

Why the grid: every node applies the same log, so by the bound alone all of them
serialize the whole state (~200 MB at a million keys) at the same index, at once;
under load that starved the loops for 100-170 ms and cost a leader change. So once
half the bound is applied, a node snapshots at its first own point of a grid that all
nodes share. The grid's period P is the largest power of two <= GRID_SHARE * index, a
function of the index alone, so every node computes the same P; the node ranked k of
N members (ids in order) owns the points j * P + k * P // N. Two nodes of different
ranks that snapshot at their own points are therefore at least P // N >= index / 36
entries apart (~28,000 at a million keys, several times a snapshot's duration at
5,000 writes/s). While the state grows with the index (a fill) an own point always
falls between half the bound and the bound (see GRID_SHARE); once the state stops
growing P outgrows the bound, which then decides alone and keeps the gaps the fill
left (the next snapshot's index is an increasing function of the last one's). Nodes
that briefly disagree on the members may share a rank; the bound holds regardless.

The bound, for the log on disk and the replay at restart: at most
max(snapshot_every entries, LOG_TO_SNAPSHOT_RATIO * the last snapshot's bytes) of log
applied since the last snapshot began (plus the batch in hand), exactly as before the
grid, which only ever snapshots earlier: between half the bound and the bound, so at
most twice as often (simulated, a fill to a million keys then three million
overwrites: 1.4x as many snapshots as the bound alone).

Receiving: kvstore.peers.snapshot_transfer hands over a complete,
verified snapshot; it is decoded off the event loop, then its InstallSnapshot is
stepped, and the core hands it back in a Ready for `install` (state machine and
storage, before the entries of that Ready are persisted).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, BinaryIO, TypeVar

from consensus import RaftNode
from consensus.errors import ConsensusError
from consensus.messages import InstallSnapshot, Message
from consensus.storage import WritableStorage
from consensus.types import SnapshotMeta
from kvstore.peers.snapshot_transfer import ChunkError
from kvstore.runtime.compaction import Compactor, yield_gil
from kvstore.runtime.free_memory import release_free_memory
from kvstore.runtime.leveldb_storage import CorruptLogError, LevelDBStorage
from kvstore.runtime.persist import DiskWork
from kvstore.runtime.requests import PendingRequests
from kvstore.runtime.snapshot_files import SYNC_EVERY_BYTES
from kvstore.state.machine import KVStateMachine, SnapshotError
from kvstore.state.snapshot import ParsedState

log = logging.getLogger(__name__)
T = TypeVar("T")

LOG_TO_SNAPSHOT_RATIO = 0.5
"""Snapshot once the log since the last snapshot is this fraction of its size: lower
keeps restart replay short, higher writes fewer snapshots."""
GRID_SHARE = LOG_TO_SNAPSHOT_RATIO / (2 + 2 * LOG_TO_SNAPSHOT_RATIO)
"""The grid's period is the largest power of two <= this share of the index. In a fill
(each snapshot about as many bytes as the log up to its index), after a snapshot at L
the window from half the bound to the bound spans R * L / 2 entries and ends at
(1 + R) * L (R: LOG_TO_SNAPSHOT_RATIO), so a period <= GRID_SHARE * index <= R * L / 2
puts one of every node's own points in it."""


def snapshot_due(
    index: int,
    last: int,
    every: int,
    log_bytes: int,
    last_bytes: int,
    me: str,
    members: Iterable[str],
) -> bool:
    """Whether node `me` of `members` snapshots at applied `index`: its last snapshot,
    at index `last` and `last_bytes` long (0: none yet), is followed by `log_bytes` of
    log (see the module docstring)."""
    if index - last < every:
        return False
    bound = LOG_TO_SNAPSHOT_RATIO * last_bytes
    if log_bytes >= bound or 2 * log_bytes < bound:
        return log_bytes >= bound
    ranked = sorted(members)
    if me not in ranked or len(ranked) < 2:
        return False  # nothing to stagger against: the bound alone
    period = 1 << (max(1, int(GRID_SHARE * index)).bit_length() - 1)
    own = ranked.index(me) * period // len(ranked)
    point = index - (index - own) % period  # the latest own grid point <= index
    # ...reached with half the bound applied (the log's bytes taken as even per entry)
    return 2 * (point - last) * log_bytes >= bound * (index - last)


class SnapshotKeeper:
    """Owned by NodeRuntime. `step` hands a message to the core the way peer messages
    go; `running` says whether the node still accepts input; `installed` runs after a
    leader's snapshot replaced the state (the membership may have changed)."""

    def __init__(
        self,
        node: RaftNode,
        sm: KVStateMachine,
        storage: WritableStorage,
        pending: PendingRequests,
        compactor: Compactor,
        snapshot_every: int,
        *,
        step: Callable[[Sequence[Message]], None],
        running: Callable[[], bool],
        installed: Callable[[SnapshotMeta], None],
    ) -> None:
        self._node = node
        self._sm = sm
        self._storage = storage
        self._pending = pending
        self.compactor = compactor
        self.snapshot_every = snapshot_every
        self._step = step
        self._running = running
        self._installed = installed
        self._replayed_at = storage.initial_state().commit
        """The commit index found at start: no snapshot begins until the log up to it is
        applied again. A restart waits for that replay on every node (the CPU is shared),
        and a snapshot begun meanwhile (a due point the replay crosses, or a log left
        longer by an older version's rule) took seconds of that CPU. The log meanwhile is
        the one the node had before the restart; the snapshot due begins right after."""
        self._incoming: dict[SnapshotMeta, tuple[bytes, ParsedState]] = {}
        """Received snapshots by their metadata; only the one the core will install is
        kept. Keyed, not one slot: another delivery (an older snapshot from a newer
        leader, a stale-term one) may arrive between the step and the Ready."""

    async def deliver(self, msg: InstallSnapshot, data: bytes) -> None:
        """A complete, verified snapshot arrived: decode it off the loop, then step it."""
        try:
            parsed = await asyncio.get_running_loop().run_in_executor(
                None, KVStateMachine.parse, data, yield_gil
            )
        except SnapshotError as exc:
            log.error("snapshot %d from %s is unusable: %s", msg.snapshot.index, msg.sender, exc)
            raise ChunkError(400, "bad_snapshot", str(exc)) from None
        self.receive(msg, data, parsed)

    def receive(self, msg: InstallSnapshot, data: bytes, parsed: ParsedState) -> None:
        """Keep the decoded state for the Ready that installs it, then step the message
        that announces it."""
        if not self._running():
            return
        self._incoming[msg.snapshot] = (data, parsed)
        self._step([msg])
        self._keep_pending()

    def _keep_pending(self) -> None:
        """Drop every held snapshot but the one the core's next Ready will install."""
        pending = self._node.pending_snapshot
        for meta in [m for m in self._incoming if m != pending]:
            del self._incoming[meta]

    def holding(self) -> tuple[SnapshotMeta, ...]:
        """The snapshots held for an install (for tests and status)."""
        return tuple(self._incoming)

    def between_readies(self) -> None:
        """Store a finished snapshot, or start one when the log is long. Called between
        Readys: `node.snapshot_meta()` is valid then, since nothing has called `ready()`
        since the last `advance`, so the core's membership matches the applied index."""
        compactor = self.compactor
        compactor.store_if_ready()
        if compactor.running or not self._running() or self._sm.applied_index < self._replayed_at:
            return
        compactor.trim_if_due()
        node = self._node
        if not snapshot_due(
            self._sm.applied_index,
            self._storage.first_index() - 1,
            self.snapshot_every,
            compactor.log_bytes_since(),
            compactor.last_bytes,
            node.id,
            node.membership.members(),
        ):
            return
        try:
            meta = node.snapshot_meta()
        except ConsensusError:
            return  # a snapshot from the leader is being installed: it will do
        if meta.index == self._sm.applied_index:
            compactor.start(meta)

    async def install(self, meta: SnapshotMeta) -> None:
        """The core's Ready asks for the snapshot `meta`: replace state and log prefix.

        The file (hundreds of MB at a million keys) is written and synced in a worker
        thread, and the covered entries deleted in another: done on the loop, as before,
        it stalled a follower for 1.7 s. Only the small synced batch that points the log
        at the file runs here; the runtime awaits this as it awaits a persist."""
        incoming = self._incoming.pop(meta, None)
        if incoming is None:
            raise RuntimeError(f"the core installs snapshot {meta} but no such data arrived")
        self._incoming.clear()
        data, parsed = incoming
        storage = self._storage
        loop = asyncio.get_running_loop()
        if isinstance(storage, LevelDBStorage):
            disk = self.compactor.disk  # no save on the loop meanwhile (runtime.persist)
            write = _on(disk, storage.prepare_snapshot, meta, _writer(data))
            file = await loop.run_in_executor(None, write)
            loop.run_in_executor(None, _on(disk, storage.commit_snapshot(meta, file, sync=True)))
        else:
            storage.apply_snapshot(meta, data)
        self._sm.install(parsed)
        self.compactor.installed(len(data))
        # The new state's key list (a million entries) would otherwise be walked by the
        # next young collections on the loop, and by every full one (Compactor: same).
        gc.freeze()
        loop.run_in_executor(None, release_free_memory)  # the replaced state's memory
        self._pending.snapshot_installed(meta.index)
        self._installed(meta)
        log.info("installed a snapshot from the leader at index %d", meta.index)

    def for_peer(self, meta: SnapshotMeta) -> bytes | None:
        """The stored snapshot's bytes, if it is still the one the core asked to send.

        Runs in a worker thread (the transport reads hundreds of MB off the loop) while
        the loop may replace the snapshot: the bytes count only if the same snapshot is
        stored before and after reading them (a replaced one's file may vanish midway)."""
        if self._storage.snapshot_meta() != meta:
            return None
        try:
            data = self._storage.snapshot_data()
        except CorruptLogError:
            if self._storage.snapshot_meta() != meta:
                return None
            raise
        return data if self._storage.snapshot_meta() == meta else None


def _on(disk: DiskWork, work: Callable[..., T], *args: Any) -> Callable[[], T]:
    """`work(*args)`, counted as heavy disk work while it runs."""

    def run() -> T:
        with disk.running():
            return work(*args)

    return run


def _writer(data: bytes) -> Callable[[BinaryIO], None]:
    """Writes `data` a sync interval at a time, so the file is synced along the way
    (kvstore.runtime.snapshot_files: one sync of it all would hold up the log's)."""

    def fill(out: BinaryIO) -> None:
        view = memoryview(data)
        for start in range(0, len(data), SYNC_EVERY_BYTES):
            out.write(view[start : start + SYNC_EVERY_BYTES])

    return fill
