"""One simulated node process: its core, its disk, its state machine and driver state.

Kept apart from the cluster so the process model (what a crash wipes, what survives on
disk) is visible in one small place: everything here except `disk` is lost on a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from consensus import Config, NodeId, RaftNode, ReadState, Ready, Role, SnapshotMeta
from kvstore.state.machine import KVStateMachine
from tests.sim.disk import SimDisk
from tests.sim.kv import new_kv


@dataclass
class StateMachine:
    """The tiny deterministic state machine: the list of applied payloads, and in KV
    mode a real KVStateMachine beside it. Snapshot data is [applied index, payloads]
    plus, in KV mode, the KV machine's own snapshot bytes."""

    applied_index: int = 0
    payloads: list[bytes] = field(default_factory=list)
    kv: KVStateMachine | None = None

    def snapshot(self) -> bytes:
        fields: list[object] = [self.applied_index, self.payloads]
        if self.kv is not None:
            fields.append(self.kv.snapshot())
        return msgpack.packb(fields, use_bin_type=True)

    @classmethod
    def restore(cls, data: bytes) -> StateMachine:
        applied_index, payloads, kv_data = unpack_snapshot(data)
        sm = cls(applied_index, payloads)
        if kv_data is not None:
            sm.kv = new_kv()
            sm.kv.restore(kv_data)
        return sm


def unpack_snapshot(data: bytes) -> tuple[int, list[bytes], bytes | None]:
    """(applied index, payloads, KV snapshot bytes or None) from the sim's snapshot data."""
    applied_index, payloads, *rest = msgpack.unpackb(data, raw=False)
    return applied_index, [bytes(p) for p in payloads], bytes(rest[0]) if rest else None


@dataclass
class Host:
    """One node's process: the core (None while crashed), its disk and driver state."""

    nid: NodeId
    config: Config
    disk: SimDisk
    node: RaftNode | None = None
    sm: StateMachine = field(default_factory=StateMachine)
    inflight: Ready | None = None
    """A Ready whose persist is still running (slow disk); lost on a crash."""
    inflight_due: int = 0
    crash_before: str | None = None
    """An armed crash: the next Ready handling stops before this phase."""
    reads: dict[bytes, int] = field(default_factory=dict)
    """Waiting reads: request id -> commit index that was known when it was asked."""
    read_view: tuple[Role, int, NodeId | None] | None = None
    """(role, term, leader) when the waiting reads were asked: a change fails them, as
    the runtime's LeadershipWatch does (a follower's read index is asked of its leader)."""
    forwarding: dict[bytes, bytes] = field(default_factory=dict)
    """Proposals this follower forwarded to its leader: request id -> payload."""
    serving: list[tuple[ReadState, int]] = field(default_factory=list)
    received: dict[SnapshotMeta, bytes] = field(default_factory=dict)
    """Snapshot data this node's driver has received, waiting for the core to install."""
    last_view: tuple[Role, int] | None = None

    def wipe(self) -> None:
        """A crash: everything but the disk is gone."""
        self.node = None
        self.inflight = None
        self.crash_before = None
        self.reads.clear()
        self.forwarding.clear()
        self.serving.clear()
        self.received.clear()
        self.last_view = None
