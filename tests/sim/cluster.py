"""A simulated cluster: RaftNodes, their disks, a network and the driver that ties them.

One `tick()` advances simulated time by one tick: due messages are delivered with
`step`, every live node is ticked, and every node's Ready is handled in the documented
order (persist -> send -> apply -> advance). A persist may take a few ticks (a slow
disk); the node keeps receiving messages and ticks meanwhile, as the API allows. Node
order is shuffled every tick so interleavings vary with the seed. Every call into a
node is followed by `Checkers.observe`, so a property is checked the moment it breaks.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from consensus import (
    ConfChange,
    ConfChangeType,
    Config,
    ConsensusError,
    Entry,
    Membership,
    NodeId,
    RaftNode,
    Role,
    SnapshotMeta,
)
from tests.sim.checkers import Checkers, SimFailure
from tests.sim.disk import SimDisk
from tests.sim.driver import PHASES, ReadyDriver
from tests.sim.host import Host
from tests.sim.kv import KVWorkload
from tests.sim.network import NetConfig, Network

__all__ = ["PHASES", "Cluster", "Counters", "Host", "SimConfig"]


@dataclass
class SimConfig:
    """Cluster shape and fault-free behaviour; the schedule adds faults on top."""

    nodes: int = 3
    election_tick: int = 10
    heartbeat_tick: int = 2
    max_inflight: int = 8
    max_batch_bytes: int = 256
    pre_vote: bool = True
    check_quorum: bool = True
    net: NetConfig = field(default_factory=NetConfig)
    slow_disk: float = 0.0
    """Probability that persisting a Ready takes 1..slow_disk_ticks extra ticks."""
    slow_disk_ticks: int = 3
    spares: int = 0
    """Node ids beyond the founding voters that membership operations may add."""
    mixed_tuning: bool = False
    """Give every node its own election and heartbeat ticks, inflight window and batch
    size (drawn per node id), as nodes with different cluster.toml files would have."""
    kv: bool = False
    """Apply committed entries to a real KVStateMachine too, and propose KV commands
    (with sessions and retries) instead of opaque payloads; see tests/sim/kv.py."""


@dataclass
class Counters:
    ticks: int = 0
    proposals: int = 0
    reads_served: int = 0
    reads_failed: int = 0
    forwarded: int = 0
    crashes: int = 0
    restarts: int = 0
    elections: int = 0
    compactions: int = 0
    snapshots_installed: int = 0
    membership_changes: int = 0


class Cluster(ReadyDriver):
    """N hosts on one seeded network; every random choice comes from `seed`."""

    def __init__(
        self,
        seed: int,
        config: SimConfig | None = None,
        *,
        disabled_checks: frozenset[str] = frozenset(),
        replay_hint: str = "",
        verbose: bool = False,
        trace_messages: bool = False,
    ) -> None:
        self.seed = seed
        self.config = config or SimConfig()
        self.rng = random.Random(seed)
        self.founders: tuple[NodeId, ...] = tuple(f"n{i}" for i in range(1, self.config.nodes + 1))
        spares = range(self.config.nodes + 1, self.config.nodes + self.config.spares + 1)
        self.ids: tuple[NodeId, ...] = self.founders + tuple(f"n{i}" for i in spares)
        """The whole pool of node ids; spares get a host only once they are added."""
        self.net = Network(random.Random(self.rng.getrandbits(64)), self.ids, self.config.net)
        self.now = 0
        self.ops = 0
        self.counters = Counters()
        self.replay_hint = replay_hint
        self.verbose = verbose
        self.trace_messages = trace_messages
        self.events: deque[str] = deque(maxlen=40)
        self.watchers: list[Callable[[Host], None]] = []
        """Called whenever a node's (role, term) changes; scripted scenarios hook here
        to act at an exact moment (e.g. crash a leader the instant it is elected)."""
        self.check = Checkers(self.founders, self.context, disabled_checks)
        self.snapshot_store: dict[SnapshotMeta, bytes] = {}
        self.applied_payloads: set[bytes] = set()
        self.hosts: dict[NodeId, Host] = {}
        self.retired: set[NodeId] = set()
        """Removed nodes that were stopped for good: never restarted."""
        for nid in self.founders:
            self._add_host(nid, self.founders)
        self._payloads = 0
        self._read_ids = 0
        self._forward_ids = 0
        self._link_losses: list[tuple[int, NodeId, NodeId]] = []
        """(tick, node, peer): `node` sees its connection to the crashed `peer` close."""
        self.workload = KVWorkload(seed) if self.config.kv else None

    def _add_host(self, nid: NodeId, voters: tuple[NodeId, ...]) -> Host:
        """A founder (voters = the founders) or a joining node (voters = ())."""
        disk = SimDisk(nid, self.check.on_save, self.check.on_snapshot)
        self.check.disks[nid] = disk
        c = self.config
        election, heartbeat, inflight, batch = (
            c.election_tick,
            c.heartbeat_tick,
            c.max_inflight,
            c.max_batch_bytes,
        )
        if c.mixed_tuning:  # its own rng: the schedule's choices do not shift
            own = random.Random(f"tuning-{self.seed}-{nid}")
            election = own.choice((election, election + 5, 2 * election))
            heartbeat = own.choice((1, 2, 3))
            inflight = own.choice((1, 2, 8, 64))
            batch = own.choice((30, 100, 4096))
        cfg = Config(
            node_id=nid,
            voters=voters,
            election_tick=election,
            heartbeat_tick=heartbeat,
            max_inflight=inflight,
            max_batch_bytes=batch,
            check_quorum=c.check_quorum,
            pre_vote=c.pre_vote,
        )
        self.hosts[nid] = host = Host(nid, cfg, disk, sm=self.new_state_machine())
        self._start(host)
        return host

    # --- context for failures and traces --------------------------------------------
    def context(self) -> str:
        lines = [
            f"seed={self.seed} tick={self.now} op={self.ops}",
            f"replay: {self.replay_hint or f'Cluster(seed={self.seed}) with the same operations'}",
            "recent events:",
            *(f"  {event}" for event in self.events),
        ]
        return "\n".join(lines)

    @contextlib.contextmanager
    def failures_named(self) -> Iterator[None]:
        """Turn any exception escaping the core or the driver into a SimFailure that
        names the seed and the replay command, like the checkers' own failures."""
        try:
            yield
        except SimFailure:
            raise
        except Exception as exc:
            raise SimFailure(
                f"exception from the core or driver: {type(exc).__name__}: {exc}\n{self.context()}"
            ) from exc

    def event(self, text: str) -> None:
        line = f"t={self.now} {text}"
        self.events.append(line)
        if self.verbose:
            print(line)

    # --- node lifecycle --------------------------------------------------------------
    def _start(self, host: Host) -> None:
        node = RaftNode(host.config, host.disk.storage, random.Random(self.rng.getrandbits(64)))
        hard = host.disk.hard_state
        pristine = hard.term == 0 and host.disk.last_index() == 0
        if not pristine and (node.term, node.vote) != (hard.term, hard.vote):
            self.check.fail("hard_state", f"{host.nid} restarted as {node.status()} from {hard}")
        host.node = node
        self._replay_after_restart(host)
        self.check.restarted(host.nid)
        self._observe(host)

    def crash(self, nid: NodeId, before: str | None = None) -> None:
        """Crash now, or (with `before`) arm a crash at that phase of the next Ready."""
        self.ops += 1
        host = self.hosts.get(nid)
        if host is None or host.node is None:
            return
        if before is not None:
            host.crash_before = before
            self.event(f"arm crash of {nid} before {before}")
            return
        self._crash(host, "now")

    def _crash(self, host: Host, where: str) -> None:
        lost = len(host.inflight.entries) if host.inflight else 0
        self.event(f"crash {host.nid} ({where}; unsynced entries lost: {lost})")
        self.counters.reads_failed += len(host.reads) + len(host.serving)
        host.wipe()
        self.counters.crashes += 1
        # The kernel closes a dead process's connections at once; its peers see that
        # after the bytes it sent before (TCP keeps order): after the slowest delivery.
        due = self.now + self.net.config.max_delay
        self._link_losses += [(due, other.nid, host.nid) for other in self.live()]

    def link_lost(self, nid: NodeId, peer: NodeId) -> None:
        """`nid`'s driver sees its connection to `peer` reset or refused: after `peer`
        crashed, or spuriously (a link that broke and reconnects, or a peer that is
        cut off but alive), when messages may well still flow both ways."""
        host = self.hosts.get(nid)
        if host is None or host.node is None or nid == peer:
            return
        self.event(f"{nid} lost its link to {peer}")
        host.node.peer_unreachable(peer)
        self._observe(host)

    def restart(self, nid: NodeId) -> None:
        self.ops += 1
        host = self.hosts.get(nid)
        if host is not None and host.node is None and nid not in self.retired:
            self.event(
                f"restart {nid} from disk {host.disk.hard_state} last={host.disk.last_index()}"
            )
            self._start(host)
            self.counters.restarts += 1

    def election_tick(self) -> int:
        """The longest election timeout of any node: liveness bounds are counted in it."""
        return max(host.config.election_tick for host in self.hosts.values())

    def live(self) -> list[Host]:
        return [host for host in self.hosts.values() if host.node is not None]

    def crashed(self) -> list[NodeId]:
        return [
            host.nid
            for host in self.hosts.values()
            if host.node is None and host.nid not in self.retired
        ]

    def leaders(self) -> list[Host]:
        return [h for h in self.live() if h.node is not None and h.node.role is Role.LEADER]

    # --- time ----------------------------------------------------------------------------
    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self._tick_once()

    def _tick_once(self) -> None:
        self.now += 1
        self.net.now = self.now
        self.counters.ticks += 1
        for msg in self.net.due():
            host = self.hosts.get(msg.recipient)
            if self.trace_messages:
                self.event(f"deliver {msg}" if host and host.node else f"lost (down) {msg}")
            if host is not None and host.node is not None:
                self._deliver(host, msg)
                self._observe(host)
        due = [loss for loss in self._link_losses if loss[0] <= self.now]
        if due:
            self._link_losses = [loss for loss in self._link_losses if loss[0] > self.now]
            for _, nid, peer in due:
                self.link_lost(nid, peer)
        order = self.live()
        self.rng.shuffle(order)
        for host in order:
            if host.node is not None:
                host.node.tick()
                self._observe(host)
        for host in order:
            if host.node is not None:
                self._drive(host)

    def _observe(self, host: Host) -> None:
        node = host.node
        assert node is not None
        self.check.observe(host.nid, node)
        view = (node.role, node.term)
        if view != host.last_view:
            host.last_view = view
            if node.role is Role.LEADER:
                self.counters.elections += 1
            self.event(f"{host.nid} is {node.role.value} in term {node.term}")
            for watcher in self.watchers:
                watcher(host)
        if host.reads and (node.role, node.term, node.leader_id) != host.read_view:
            self.counters.reads_failed += len(host.reads)
            host.reads.clear()

    # --- client operations -----------------------------------------------------------
    def propose(self, data: bytes | None = None, to: Host | None = None) -> Entry | None:
        """Propose a unique payload to `to` or to some node that believes it leads (maybe a
        stale one)."""
        self.ops += 1
        leaders = self.leaders() if to is None else [to]
        if not leaders:
            return None
        host = self.rng.choice(leaders)
        payload = self._next_payload() if data is None else data
        assert host.node is not None
        try:
            entry = host.node.propose(payload)
        except ConsensusError:
            return None
        if host.inflight is None:  # as the runtime with an idle ready loop: appends now
            self.send_early(host, replicate=True)
        self._observe(host)
        self.counters.proposals += 1
        return entry

    def _next_payload(self) -> bytes:
        self._payloads += 1
        if self.workload is not None:
            return self.workload.next()
        return f"s{self.seed}-p{self._payloads}".encode()

    def _asking(self) -> list[Host]:
        """Nodes a client may talk to: (believed) leaders, and followers knowing one."""
        return [
            h
            for h in self.live()
            if h.node is not None
            and (
                h.node.role is Role.LEADER
                or (h.node.role is Role.FOLLOWER and h.node.leader_id is not None)
            )
        ]

    def read(self, to: Host | None = None) -> bool:
        """A linearizable read on `to` or on a (believed) leader, or on a follower, which
        asks its leader for the read index; remember the commit index known now, which
        the read must not fall behind (checked when it is served)."""
        self.ops += 1
        hosts = self._asking() if to is None else [to]
        if not hosts:
            return False
        host = self.rng.choice(hosts)
        node = host.node
        assert node is not None
        self._read_ids += 1
        request_id = f"r{self._read_ids}".encode()
        try:
            node.read_index(request_id)
        except ConsensusError:
            return False
        host.read_view = (node.role, node.term, node.leader_id)
        host.reads[request_id] = len(self.check.committed)
        self._observe(host)
        return True

    def forward(self, to: Host | None = None) -> bool:
        """A client write on a follower (`to`, or one knowing a leader): it hands the
        command to its leader, and learns where the leader put it (or that it refused it)
        from `Ready.forwarded`."""
        self.ops += 1
        asking = self._asking() if to is None else [to]
        hosts = [h for h in asking if h.node is not None and h.node.role is Role.FOLLOWER]
        if not hosts:
            return False
        host = self.rng.choice(hosts)
        assert host.node is not None
        self._forward_ids += 1
        request_id = f"f{self._forward_ids}".encode()
        payload = self._next_payload()
        try:
            host.node.forward_proposal(request_id, payload)
        except ConsensusError:
            return False
        host.forwarding[request_id] = payload
        if host.inflight is None:  # as the runtime with an idle ready loop: sent now
            self.send_early(host, replicate=True)
        self._observe(host)
        self.counters.forwarded += 1
        return True

    def transfer(self, to: NodeId) -> None:
        self.ops += 1
        for host in self.leaders():
            assert host.node is not None
            self.event(f"transfer leadership {host.nid} -> {to}")
            with contextlib.suppress(ConsensusError):
                host.node.transfer_leadership(to)
            self._observe(host)

    # --- network faults (recorded as events for the trace) -------------------------------
    def partition(self, groups: list[list[NodeId]]) -> None:
        self.ops += 1
        self.net.partition(groups)
        self.event(f"partition {groups}")

    def cut(self, sender: NodeId, recipient: NodeId) -> None:
        self.ops += 1
        self.net.cut(sender, recipient)
        self.event(f"cut {sender}->{recipient}")

    def isolate(self, nid: NodeId) -> None:
        self.ops += 1
        self.net.isolate(nid)
        self.event(f"isolate {nid}")

    def heal(self) -> None:
        self.ops += 1
        self.net.heal()
        self.event("heal")

    def compact_node(self, nid: NodeId) -> None:
        self.ops += 1
        host = self.hosts.get(nid)
        if host is not None and self.compact(host):
            self.counters.compactions += 1
            self.event(f"compact {nid} up to {host.disk.storage.snapshot_meta()}")

    # --- membership changes (one server at a time) ----------------------------------------
    def membership(self) -> Membership:
        """The membership in force: the newest committed configuration."""
        return self.check.membership_at(len(self.check.committed))

    def _conf_change(self, change: ConfChange) -> bool:
        """Propose `change` to some (believed) leader; refusals are simply skipped."""
        self.ops += 1
        leaders = self.leaders()
        if not leaders:
            return False
        host = self.rng.choice(leaders)
        assert host.node is not None
        try:
            host.node.propose_conf_change(change)
        except ConsensusError as refused:
            self.event(f"{host.nid} refuses {change.type.name} {change.node_id}: {refused}")
            return False
        self._observe(host)
        self.counters.membership_changes += 1
        self.event(f"{host.nid} proposes {change.type.name} {change.node_id}")
        return True

    def add_learner(self) -> NodeId | None:
        """Add a spare that was never a member as a learner; it starts as a joining node
        (no voters, no bootstrap) and learns the membership from the leader's log."""
        current = self.membership()
        ever = self.check.ever_members()
        spares = [n for n in self.ids if n not in current and n not in ever]
        if not spares:
            return None
        nid = self.rng.choice(spares)
        if not self._conf_change(ConfChange(ConfChangeType.ADD_LEARNER, nid, nid.encode())):
            return None
        if nid not in self.hosts:
            self._add_host(nid, ())
        return nid

    def promote(self) -> NodeId | None:
        """Promote a learner once some leader sees it caught up with its commit index."""
        for host in self.leaders():
            node = host.node
            assert node is not None
            ready = [
                n
                for n in node.membership.learners
                if n in node.progress() and node.progress()[n].match >= node.commit_index
            ]
            if ready:
                nid = self.rng.choice(ready)
                if self._conf_change(ConfChange(ConfChangeType.PROMOTE, nid)):
                    return nid
        return None

    def remove(self) -> NodeId | None:
        """Remove a member (never the last voter). A leader cannot remove itself: it is
        asked to transfer leadership instead, and the removal is skipped."""
        current = self.membership()
        members = [n for n in current.members() if current.voters != (n,)]
        if not members:
            return None
        nid = self.rng.choice(members)
        if any(h.nid == nid for h in self.leaders()):
            others = [v for v in current.voters if v != nid]
            if others:
                self.transfer(self.rng.choice(others))
            return None
        return nid if self._conf_change(ConfChange(ConfChangeType.REMOVE, nid)) else None

    def retire(self) -> NodeId | None:
        """Stop a node whose removal is committed, for good (the alternative, keeping it
        running, is the default: it must not disrupt the cluster). Only once a voter of
        the new configuration saved that commit (the operator's DELETE is answered by
        such a leader once applied, which follows saving; a removed node hears 410 from
        such a node). Before that the remaining voters may still count the removed node:
        a leader that crashed before saving the commit (seed 15668), or a removed node
        that was elected, committed its own removal and stepped down before anyone else
        learnt it (seed 9954), would leave them without a quorum for ever."""
        current = self.membership()
        gone = [
            h.nid
            for h in self.hosts.values()
            if h.nid not in self.retired
            and h.nid in self.check.ever_members()
            and h.nid not in current
            and self._removal_saved(h.nid)
        ]
        if not gone:
            return None
        nid = self.rng.choice(gone)
        self.ops += 1
        host = self.hosts[nid]
        if host.node is not None:
            self._crash(host, "retired after removal")
        self.retired.add(nid)
        self.event(f"retire {nid}")
        return nid

    def _removal_saved(self, nid: NodeId) -> bool:
        removed = self.check.removed_at.get(nid)
        if removed is None:
            return False
        voters = self.membership().voters
        for host in (h for h in self.hosts.values() if h.nid in voters):
            snapshot = host.disk.storage.snapshot_meta()
            if host.disk.hard_state.commit >= removed or (snapshot and snapshot.index >= removed):
                return True
        return False

    # --- whole-cluster checks ------------------------------------------------------------
    def full_check(self) -> None:
        logs: list[tuple[str, int, list[Entry]]] = []
        for host in self.hosts.values():
            logs.append((f"{host.nid} disk", host.disk.storage.first_index(), host.disk.log()))
            if host.node is not None:
                log = host.node.log
                first = log.first_index()
                logs.append((f"{host.nid} core", first, log.slice(first, log.last_index() + 1)))
        self.check.full_check(logs)
