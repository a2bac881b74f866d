"""The per-node driver: the Ready handshake, exactly as the documented order asks.

For each Ready: send what the core marks as `messages_before_persist` (a leader's
appends, as the runtime does, before a slow disk even starts), then (0) install a
snapshot received from the leader, (1) persist hard state and entries in one synced
write, (2) send the other messages, (3) apply committed entries and serve reads, then
`advance`. A crash can be armed to strike before any phase, which is how the simulator
loses "the unsynced tail" at every possible point (also after the early sends).
A persist may also take a few ticks (a slow disk) while the node keeps stepping and,
as the runtime does while a leader's disk syncs, sends `RaftNode.early_messages()`
after each delivery; with no Ready in hand (as the runtime when its ready loop is
idle), after a delivery that moved the commit index or appended a forwarded proposal,
and after a proposal, with the new entries' appends (a follower's forwarded proposal:
its ProposeRequest).
Compaction (a local snapshot of the applied state) runs between Readies.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from consensus import (
    Entry,
    EntryType,
    InstallSnapshot,
    Message,
    ReadState,
    Ready,
    SnapshotMeta,
)
from tests.sim.host import Host, StateMachine
from tests.sim.kv import kv_entry, new_kv

if TYPE_CHECKING:
    from tests.sim.checkers import Checkers
    from tests.sim.cluster import Counters, SimConfig
    from tests.sim.network import Network

PHASES = ("send_early", "persist", "send", "apply")
"""The driver's Ready handling order; a crash can be armed to happen before any phase."""

READY_LIMIT = 100_000
"""Readies handled per node per tick before we call it a livelock (replaying a long log
after a restart with tiny batches legitimately takes one Ready per entry)."""


class ReadyDriver:
    """Mixed into Cluster; relies on the attributes annotated here."""

    check: Checkers
    net: Network
    rng: random.Random
    config: SimConfig
    counters: Counters
    now: int
    applied_payloads: set[bytes]
    snapshot_store: dict[SnapshotMeta, bytes]
    """Snapshot data by metadata: what a real driver would stream to the follower."""

    def _observe(self, host: Host) -> None:
        raise NotImplementedError

    def _crash(self, host: Host, where: str) -> None:
        raise NotImplementedError

    def _drive(self, host: Host) -> None:
        for _ in range(READY_LIMIT):
            node = host.node
            if node is None:
                return
            if host.inflight is not None:
                if host.inflight_due > self.now:
                    return
                ready, host.inflight = host.inflight, None
                self._handle(host, ready)
                continue
            if not node.has_ready():
                return
            ready = node.ready()
            self._observe(host)
            self.check.on_ready(host.nid, node, ready.entries)
            if host.crash_before == "send_early":
                self._crash(host, "before send_early")
                return
            for msg in ready.messages_before_persist:
                self._send(host, msg)
            slow = ready.must_sync or ready.snapshot is not None
            # With snapshot echoes on, an install always takes a while (decoding and
            # writing a snapshot does), so other deliveries race it.
            racing = ready.snapshot is not None and self.config.net.snapshot_echo > 0
            if racing or (slow and self.rng.random() < self.config.slow_disk):
                host.inflight = ready
                host.inflight_due = self.now + self.rng.randint(1, self.config.slow_disk_ticks)
                return
            self._handle(host, ready)
        self.check.fail("liveness", f"{host.nid} still has a Ready after {READY_LIMIT} rounds")

    def _handle(self, host: Host, ready: Ready) -> None:
        """Persist, send, apply, then advance; an armed crash stops it at its phase."""
        for phase in PHASES[1:]:  # the early sends went out when the Ready was made
            if host.crash_before == phase:
                self._crash(host, f"before {phase}")
                return
            if phase == "persist":
                self._persist(host, ready)
                self._observe(host)  # a sole voter's commit counts from here on
            elif phase == "send":
                for msg in ready.messages_after_persist:
                    self._send(host, msg)
            else:
                self._apply_ready(host, ready)
        node = host.node
        assert node is not None
        node.advance(ready)
        self._observe(host)
        if node.applied_index != host.sm.applied_index:
            self.check.fail(
                "state_machine_safety",
                f"{host.nid} core applied {node.applied_index}, driver {host.sm.applied_index}",
            )

    def _persist(self, host: Host, ready: Ready) -> None:
        if ready.snapshot is not None:
            meta = ready.snapshot
            data = host.received.pop(meta, None)
            if data is None:
                self.check.fail("snapshot", f"{host.nid} must install {meta} it never received")
                return
            host.disk.apply_snapshot(meta, data)
            host.sm = StateMachine.restore(data)
            self._check_restored(host, meta)
            self.counters.snapshots_installed += 1
        if ready.must_sync:
            host.disk.save(ready.hard_state, ready.entries)

    def _send(self, host: Host, msg: Message) -> None:
        self.check.on_send(host.nid, host.disk, msg)
        if isinstance(msg, InstallSnapshot):
            stored = host.disk.storage.snapshot_meta()
            if stored != msg.snapshot:
                self.check.fail("snapshot", f"{host.nid} sends {msg} but holds {stored}")
            data = host.disk.storage.snapshot_data()
            assert data is not None
            self.snapshot_store[msg.snapshot] = data
        self.net.send(msg)

    def _deliver(self, host: Host, msg: Message) -> None:
        """Hand a message to a live node; a snapshot's data arrives with it (a real driver
        streams it in chunks first and steps the message once it has all of it). As the
        runtime's SnapshotKeeper does, only the data of a snapshot the core will install
        is kept (the pending one, and the one of a Ready still being handled, which the
        runtime installs before it steps anything else): another delivery (an older
        snapshot, a stale term) racing an install must not take its place."""
        node = host.node
        assert node is not None
        if isinstance(msg, InstallSnapshot):
            host.received[msg.snapshot] = self.snapshot_store[msg.snapshot]
        committed, last = node.commit_index, node.log.last_index()
        node.step(msg)
        # While its disk is still syncing (kvstore.runtime.persist), or with no Ready in
        # hand when the commit index moved or a forwarded proposal was appended
        # (NodeRuntime._send_early's `idle_too`: then with the new entries' appends).
        if host.inflight is not None:
            self.send_early(host)
        elif node.commit_index > committed or node.log.last_index() > last:
            self.send_early(host, replicate=True)
        if isinstance(msg, InstallSnapshot):
            keep = {node.pending_snapshot, host.inflight.snapshot if host.inflight else None}
            host.received = {m: d for m, d in host.received.items() if m in keep}

    def send_early(self, host: Host, replicate: bool = False) -> None:
        """What a leader may send before its next Ready is durable (RaftNode.early_messages)."""
        assert host.node is not None
        for early in host.node.early_messages(replicate):
            self._send(host, early)

    def _apply_ready(self, host: Host, ready: Ready) -> None:
        for outcome in ready.forwarded:
            payload = host.forwarding.pop(outcome.request_id, None)
            if payload is not None:
                # A refusal claims "never proposed": checkable where payloads are unique
                # (KV clients retry the same bytes) and no request was ever duplicated.
                unique = not self.config.kv and self.net.stats.duplicated == 0
                self.check.on_forwarded(host.nid, outcome, payload, unique)
        for entry in ready.committed:
            self._apply(host, entry)
        for state in ready.read_states:
            required = host.reads.pop(state.request_id, None)
            if required is not None:
                self.check.on_read_state(host.nid, state, required)
                host.serving.append((state, required))
        still = []
        for state, required in host.serving:
            if state.index <= host.sm.applied_index:
                self.counters.reads_served += 1
                served = ReadState(state.request_id, host.sm.applied_index)
                self.check.on_read_state(host.nid, served, required)
            else:
                still.append((state, required))
        host.serving = still

    def _apply(self, host: Host, entry: Entry) -> None:
        sm = host.sm
        if entry.index != sm.applied_index + 1:
            self.check.fail(
                "state_machine_safety",
                f"{host.nid} applies index {entry.index} after {sm.applied_index}",
            )
        self.check.on_apply(host.nid, entry)
        sm.applied_index = entry.index
        if entry.type is EntryType.NORMAL:
            sm.payloads.append(entry.data)
            self.applied_payloads.add(entry.data)
        if sm.kv is not None:
            self._apply_kv(host, entry)

    def _apply_kv(self, host: Host, entry: Entry) -> None:
        kv = host.sm.kv
        assert kv is not None
        applied, command = kv_entry(entry)
        ref = command.session if command is not None else None
        had_session = ref is not None and kv.has_session(ref.client_id)
        before = (kv.revision, kv.coordination.copy_wire())
        result = kv.apply(applied)
        self.check.on_kv_apply(
            host.nid,
            entry.index,
            kv.fingerprint(),
            command,
            result,
            (kv.revision, kv.coordination.copy_wire()) != before,
            had_session,
        )

    def new_state_machine(self) -> StateMachine:
        """An empty state machine; in KV mode with a real KVStateMachine beside it."""
        return StateMachine(kv=new_kv() if self.config.kv else None)

    def _check_restored(self, host: Host, meta: SnapshotMeta) -> None:
        sm = host.sm
        self.check.on_restore(host.nid, meta, sm.applied_index, sm.payloads)
        if self.config.kv and sm.kv is None:
            self.check.fail("snapshot", f"{host.nid} snapshot {meta} lacks the KV state")
        if sm.kv is not None:
            if sm.kv.applied_index != meta.index:
                self.check.fail(
                    "snapshot",
                    f"{host.nid} KV snapshot is at {sm.kv.applied_index}, its meta at {meta}",
                )
            self.check.on_kv_snapshot(host.nid, meta.index, sm.kv.fingerprint())

    def _replay_after_restart(self, host: Host) -> None:
        """A fresh state machine: the disk's snapshot, then whatever the core counts as
        applied already (nothing beyond the snapshot today; replay if that changes)."""
        node = host.node
        assert node is not None
        storage = host.disk.storage
        data = storage.snapshot_data()
        meta = storage.snapshot_meta()
        host.sm = StateMachine.restore(data) if data is not None else self.new_state_machine()
        if meta is not None:
            self._check_restored(host, meta)
        if node.applied_index > host.sm.applied_index:
            for entry in storage.entries(host.sm.applied_index + 1, node.applied_index + 1):
                self._apply(host, entry)

    def compact(self, host: Host) -> bool:
        """Snapshot the applied state and drop the log it covers, as a real node does to
        bound its log. Only between Readies, when `snapshot_meta()` is valid."""
        node = host.node
        if node is None or host.inflight is not None:
            return False
        meta = node.snapshot_meta()
        held = host.disk.storage.snapshot_meta()
        if meta.index <= (held.index if held else 0) or meta.index != host.sm.applied_index:
            return False
        host.disk.apply_snapshot(meta, host.sm.snapshot())
        self._observe(host)
        return True
