"""The runtime's snapshot side (a mixin of NodeRuntime, kvstore.node).

Taking snapshots: kvstore.compaction, started and finished here between Readys.
Receiving one: kvstore.snapshot_transfer hands over a complete, verified snapshot; it
is decoded off the event loop, then its InstallSnapshot is stepped, and the core hands
it back in a Ready for `_install_snapshot` (state machine and storage, before the
entries of that Ready are persisted).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from consensus import RaftNode
from consensus.errors import ConsensusError
from consensus.messages import InstallSnapshot, Message
from consensus.storage import WritableStorage
from consensus.types import SnapshotMeta
from kvstore.peers.snapshot_transfer import ChunkError
from kvstore.runtime.compaction import Compactor
from kvstore.runtime.requests import PendingRequests
from kvstore.state.machine import KVStateMachine, SnapshotError
from kvstore.state.snapshot import ParsedState

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger("kvstore.runtime.node")


class SnapshotMixin:
    """Compaction and snapshot installation; see the module docstring."""

    node: RaftNode
    sm: KVStateMachine
    storage: WritableStorage
    pending: PendingRequests
    compactor: Compactor
    snapshot_every: int
    stopping: bool
    fatal_error: BaseException | None
    _incoming_snapshot: tuple[SnapshotMeta, bytes, ParsedState] | None

    if TYPE_CHECKING:

        def step_messages(self, msgs: Sequence[Message]) -> None: ...

        def _membership_changed(self) -> None: ...

    async def _deliver_snapshot(self, msg: InstallSnapshot, data: bytes) -> None:
        """A complete, verified snapshot arrived: decode it off the loop, then step it."""
        try:
            parsed = await asyncio.get_running_loop().run_in_executor(
                None, KVStateMachine.parse, data
            )
        except SnapshotError as exc:
            log.error("snapshot %d from %s is unusable: %s", msg.snapshot.index, msg.sender, exc)
            raise ChunkError(400, "bad_snapshot", str(exc)) from None
        self.receive_snapshot(msg, data, parsed)

    def receive_snapshot(self, msg: InstallSnapshot, data: bytes, parsed: ParsedState) -> None:
        """Keep the decoded state for the Ready that installs it, then step the message
        that announces it."""
        if self.stopping or self.fatal_error is not None:
            return
        self._incoming_snapshot = (msg.snapshot, data, parsed)
        self.step_messages([msg])
        if self.node.log.pending_snapshot != msg.snapshot:
            self._incoming_snapshot = None  # the core did not need it (already has it)

    def _snapshot_step(self) -> None:
        """Between Readys: store a finished snapshot, or start one when the log is long.
        `node.snapshot_meta()` is valid here: nothing has called `ready()` since the
        last `advance`, so the core's membership matches the applied index."""
        compactor = self.compactor
        compactor.store_if_ready()
        if compactor.running or self.stopping:
            return
        if self.sm.applied_index - self.storage.first_index() < self.snapshot_every:
            return
        try:
            meta = self.node.snapshot_meta()
        except ConsensusError:
            return  # a snapshot from the leader is being installed: it will do
        if meta.index == self.sm.applied_index:
            compactor.start(meta)

    def _install_snapshot(self, meta: SnapshotMeta) -> None:
        incoming = self._incoming_snapshot
        if incoming is None or incoming[0] != meta:
            raise RuntimeError(f"the core installs snapshot {meta} but no such data arrived")
        self._incoming_snapshot = None
        self.storage.apply_snapshot(meta, incoming[1])
        self.sm.install(incoming[2])
        self.pending.snapshot_installed(meta.index)
        self._membership_changed()
        log.info("installed a snapshot from the leader at index %d", meta.index)

    def _snapshot_for_peer(self, meta: SnapshotMeta) -> bytes | None:
        """The stored snapshot's bytes, if it is still the one the core asked to send."""
        if self.storage.snapshot_meta() != meta:
            return None
        return self.storage.snapshot_data()
