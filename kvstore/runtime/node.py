"""NodeRuntime: the asyncio driver of the pure Raft core on one node.

Only the event loop thread touches the RaftNode. Two tasks drive it:
- the tick task turns the loop clock into logical ticks (one per `tick_ms`);
- the ready loop, woken by an Event after every step/propose/tick/read, hands each
  Ready to the disk, the network and the state machine, then calls `advance`.

Group commit: everything proposed while a Ready is being persisted lands in the next
Ready, so a busy node makes one fsync per batch, not per request. A leader persists in
a worker thread, so its loop keeps reading peers and clients while the disk syncs, and
sends a commit its followers reached meanwhile (kvstore.runtime.persist; followers
persist small Readys inline).

Messages wait for the fsync they depend on (votes, acknowledgements), except those the
core marks as `Ready.messages_before_persist`: a leader's AppendEntries of its current,
already-durable term go out *before* its own fsync (Raft dissertation §10.2.1), so the
leader's disk write overlaps the round trip to the followers. The core decides which
(consensus.ready.leader_messages_first), because only it knows why that is safe.

Snapshots: once enough log follows the last one (`snapshot_entries`, and the log's bytes
against the snapshot's: kvstore.runtime.snapshots) the log is compacted into a state
machine snapshot without stalling the loop (kvstore.compaction); a follower whose
entries are gone gets it in chunks over `/raft/snapshot` (kvstore.snapshot_transfer)
and installs it when the core hands it back in a Ready.

Membership: applied CONF_CHANGE entries update the member directory; the runtime then
re-derives who is where (kvstore.member_view) and re-points the transport. A node told
it was removed (by its own log, or by a peer's 410) stops serving as a member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence

from consensus import ConfChange, Config, Entry, Message, NodeId, RaftNode, Ready, Role
from consensus.storage import WritableStorage
from consensus.types import EntryType
from kvstore.config import ClusterConfig, NodeConfig
from kvstore.peers.auth import PeerAuth
from kvstore.peers.snapshot_transfer import SnapshotReceiver
from kvstore.peers.transport import Transport
from kvstore.runtime.changes import ChangeSignal
from kvstore.runtime.clock import Clock
from kvstore.runtime.compaction import Compactor
from kvstore.runtime.leadership import LeadershipWatch
from kvstore.runtime.leases import CHECK_INTERVAL_S, LeaseKeeper
from kvstore.runtime.lone_write import answer_first
from kvstore.runtime.loop_lag import LagProbe
from kvstore.runtime.member_view import MemberView
from kvstore.runtime.membership import MembershipTracker
from kvstore.runtime.persist import Persister
from kvstore.runtime.requests import PendingRequests, RuntimeStopped, Waiter
from kvstore.runtime.settings import SettingsKeeper
from kvstore.runtime.snapshots import SnapshotKeeper
from kvstore.runtime.stats import RuntimeStats
from kvstore.runtime.via_leader import ViaLeader
from kvstore.runtime.watch_hub import WatchHub
from kvstore.state.commands import Command, encode_command
from kvstore.state.machine import ApplyResult, KeyValue, KVStateMachine

log = logging.getLogger(__name__)

APPLY_SLICE = 64
"""Entries applied per loop turn: 20-150 µs each (quiet to loaded machine); at a million
keys, stacks dumped in loop stalls showed 256-entry slices taking 18-40 ms of the loop
thread's CPU on every node at once, as a new leader committed the writes queued meanwhile."""


class NodeRuntime:
    """Drives one RaftNode; the HTTP and peer layers call into it.

    Its parts are objects of their own: `leadership` (who leads), `membership` (who the
    members are, and whether this node still is one), `snapshots` (taking and installing
    them), `pending` (requests waiting for commit or a read index), `transport` (peer
    links). The runtime owns the event loop side: ticks, the ready loop, and the order
    in which a Ready is persisted, sent and applied."""

    def __init__(
        self,
        cluster: ClusterConfig,
        node_id: NodeId,
        storage: WritableStorage,
        *,
        rng: random.Random | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        join: bool = False,
        on_removed: Callable[[str], None] | None = None,
        peer_ssl: ssl.SSLContext | None = None,
    ) -> None:
        """`peer_ssl`: the client side of mutual TLS for https peer URLs (kvstore.server
        builds it, so that a bad certificate is a start-up error)."""
        t = cluster.tuning
        self.cluster, self.tuning, self.node_id = cluster, t, node_id
        self.me: NodeConfig = cluster.node(node_id)
        self.storage = storage
        self.sm = KVStateMachine()  # its limits come from the log: kvstore.runtime.settings
        snapshot = storage.snapshot_meta()
        if snapshot is not None:  # the state machine starts from the last snapshot
            data = storage.snapshot_data()
            if data is None:
                raise RuntimeError(f"storage has snapshot {snapshot} but no snapshot data")
            self.sm.restore(data)
        self.node = RaftNode(
            Config(
                node_id=node_id,
                voters=self._initial_voters(join),
                election_tick=t.election_ticks,
                heartbeat_tick=t.heartbeat_ticks,
                max_inflight=t.max_inflight,
                max_batch_bytes=t.max_batch_bytes,
                max_inflight_bytes=2 * t.max_batch_bytes,  # two full batches per follower
            ),
            storage,
            rng or random.Random(),
        )
        self.stats = RuntimeStats()
        """Counters and histograms for `GET /metrics` (kvstore.api.metrics)."""
        self.pending = PendingRequests(self.stats.commit_latency.observe)
        self.watches = WatchHub(self.sm, t.watch_buffer_bytes)
        """Every watch served by this node, fed after each applied batch."""
        self.leadership = LeadershipWatch(node_id, self.node, self.pending, self.stats)
        self.applied_changed = ChangeSignal()
        """Notified after every applied batch (lock waits and election observers)."""
        self.leases = LeaseKeeper(
            lambda: self.sm.coordination,
            lambda: self.node.term if self.is_leader else None,
            self.propose,
            t.request_timeout_ms / 1000,
        )
        self.peer_auth = PeerAuth(
            cluster.cluster_id, node_id, cluster.peer_secret, tls=peer_ssl is not None
        )
        """Authenticates every peer request, both ways (kvstore.peers.auth)."""
        self.transport = Transport(
            node_id,
            {},
            auth=self.peer_auth,
            ssl_context=peer_ssl,
            snapshot_source=lambda meta: self.snapshots.for_peer(meta),
            self_url=self.me.peer_url,
            snapshot_chunk_bytes=t.snapshot_chunk_bytes,
            on_removed=lambda peer, text: self.membership.told_removed(peer, text),
            on_unreachable=self.leadership.peer_unreachable,
            max_post_bytes=max(4 * t.max_batch_bytes, 1 << 20),
            request_timeout=max(0.5, 4 * t.tick_ms * t.election_ticks / 1000),
        )
        self.membership = MembershipTracker(
            self.me,
            self.node,
            self.sm,
            MemberView(node_id, cluster.nodes, cluster.data_dir),
            self.transport.set_peers,
            on_removed,
        )
        self.incarnations = self.membership.incarnations  # kvstore.runtime.incarnation
        self.peer_auth.incarnation = self.incarnations.own  # named on every peer request
        self.last_heard: dict[NodeId, float] = {}
        """time.monotonic() of the last message from each peer, for `GET /v1/status`."""
        self._on_fatal = on_fatal
        self.persister = Persister(storage, self.stats, node_id, self.me.data_dir)
        self._wake = asyncio.Event()
        self.via_leader = ViaLeader(self.node, self.pending, self._wake.set, self._applied)
        self.snapshots = SnapshotKeeper(
            self.node,
            self.sm,
            storage,
            self.pending,
            Compactor(self.sm, storage, self._wake.set, node_id, self.stats, self.persister.disk),
            t.snapshot_entries,
            step=self.step_messages,
            running=lambda: not (self.stopping or self.fatal_error is not None),
            installed=self.membership.snapshot_installed,
        )
        self.snapshot_receiver = SnapshotReceiver(
            self.me.data_dir / "incoming-snapshots", self.snapshots.deliver
        )
        self.settings = SettingsKeeper(self.node, self.sm, t, self._wake.set)
        self.clock = Clock(t.tick_ms / 1000, self._tick, LagProbe(self.stats.loop_lag))
        """Ticks, and on them: loop lag, request deadlines (checked every tenth of the
        request timeout, at most 50 ms) and lease expiry (kvstore.runtime.clock)."""
        self.clock.every(min(0.05, t.request_timeout_ms / 10_000), self.pending.expire)
        self.clock.every(CHECK_INTERVAL_S, lambda _: self.leases.check())
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = False
        """The ready loop waits for work, with no Ready in hand (see `_send_early`)."""
        self.stopping = False
        self.fatal_error: BaseException | None = None
        self.membership.changed()

    def _initial_voters(self, join: bool) -> tuple[NodeId, ...]:
        """The founders for a brand-new node; none for one that joins (it must never
        bootstrap a cluster of its own). With existing data the core ignores this."""
        storage = self.storage
        pristine = storage.last_index() == 0 and storage.snapshot_meta() is None
        joining = join or self.me.join
        if joining and not pristine:
            log.info("this node already has data: --join / join = true changes nothing")
        if joining:
            return ()
        return self.cluster.founders

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()  # kept: get_running_loop() costs a getpid()
        self.via_leader.loop = self.loop
        await self.transport.start()
        self._tasks = [
            asyncio.create_task(self._clock_loop(), name=f"tick-{self.node_id}"),
            asyncio.create_task(self._ready_loop(), name=f"ready-{self.node_id}"),
        ]
        self._wake.set()  # committed entries from before a restart are replayed at once
        log.info(
            "node %s started: term %d, log %d..%d, commit %d, snapshot at %d",
            self.node_id,
            self.node.term,
            self.storage.first_index(),
            self.storage.last_index(),
            self.persister.persisted.commit,
            self.sm.applied_index,
        )

    async def stop(self) -> None:
        """Stop ticking, let the ready loop finish the Ready in hand, close the transport
        and the disk. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        self.pending.abort_all(RuntimeStopped("the node is shutting down"))
        self.watches.close()
        self._wake.set()
        for task in self._tasks:
            if not task.get_name().startswith("ready-"):
                task.cancel()  # the ready loop itself finishes the Ready in hand
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5.0)
        await self.transport.close()
        self.persister.close()
        self.snapshots.compactor.close()
        self.snapshot_receiver.close()
        close = getattr(self.storage, "close", None)
        if close is not None:
            close()
        log.info("stopped at term %d, applied index %d", self.node.term, self.sm.applied_index)

    def _fatal(self, exc: BaseException) -> None:
        if self.fatal_error is None:
            self.fatal_error = exc
            log.critical("node %s cannot continue: %s", self.node_id, exc, exc_info=exc)
            self.pending.abort_all(RuntimeStopped(f"the node hit a fatal error: {exc}"))
            if self._on_fatal is not None:
                self._on_fatal(exc)

    def _applied(self) -> int:
        return self.sm.applied_index

    def _check_running(self) -> None:
        if self.stopping or self.fatal_error is not None:
            raise RuntimeStopped("the node is shutting down")

    # ------------------------------------------------------------------ inputs

    def step_messages(self, msgs: Sequence[Message]) -> None:
        """Messages from a peer (already checked by the peer API)."""
        if self.stopping or self.fatal_error is not None:
            return
        node = self.node
        step, committed, last = node.step, node.commit_index, node.log.last_index()
        for msg in msgs:
            step(msg)
        # A commit while our fsync runs (idle: lone_write.answer_first), or a forwarded proposal.
        syncing, idle = self.persister.syncing, self._idle
        if (syncing and node.commit_index > committed) or (idle and node.log.last_index() > last):
            self._send_early(idle_too=True)
        if msgs:
            self.last_heard[msgs[0].sender] = time.monotonic()
        self._wake.set()

    def _send_early(self, idle_too: bool = False) -> None:
        """What may leave before the next Ready is durable (RaftNode.early_messages): while
        a leader's own fsync runs, on every tick and when acknowledgements moved the commit
        index (not on every one: a frame per acknowledgement cost ~7% more CPU per write
        at concurrency 64); `idle_too`: also with no Ready in hand, then with the appends
        of new entries, so a lone write's appends and commit skip a loop turn and a Ready
        (60-180 µs each at concurrency 1, loaded); once per idle spell, so a burst that
        follows is batched in that Ready."""
        idle = idle_too and self._idle
        if self.persister.syncing or idle:
            early = self.node.early_messages(replicate=idle)
            if early:
                self._idle = False
                self.transport.send(early)

    async def propose(self, command: Command, timeout: float) -> ApplyResult | None:
        """Replicate and apply one command (a follower hands it to the leader over the
        peer link: kvstore.runtime.via_leader). Raises NotLeader / ProposalDropped before
        anything was proposed, ProposalOverwritten when it definitely failed, and
        ProposalTimeout when the outcome is unknown."""
        future: asyncio.Future[ApplyResult | None] = self.loop.create_future()
        self.submit(command, self.loop.time() + timeout, future)
        return await future

    def submit(self, command: Command, deadline: float, waiter: Waiter) -> None:
        """`propose` without a coroutine (the fast lane's writes): raises NotLeader,
        ProposalDropped or RuntimeStopped when nothing was proposed; otherwise `waiter`
        gets the result, ProposalOverwritten or ProposalTimeout."""
        self._check_running()
        data = encode_command(command)
        if self.node.role is not Role.LEADER:
            self.via_leader.propose(data, deadline, waiter)
        else:
            self._until_applied(self.node.propose(data), deadline, waiter)
        if self._idle:  # a lone write: its appends (a follower: its request) leave now
            self._send_early(idle_too=True)

    async def propose_conf_change(self, change: ConfChange, timeout: float) -> Entry:
        """Propose a membership change and wait until it is applied here. Raises
        NotLeader / ProposalDropped / InvalidConfChange before anything was proposed,
        ProposalOverwritten or ProposalTimeout after."""
        self._check_running()
        entry = self.node.propose_conf_change(change)
        future: asyncio.Future[ApplyResult | None] = self.loop.create_future()
        self._until_applied(entry, self.loop.time() + timeout, future)
        await future
        return entry

    def _until_applied(self, entry: Entry, deadline: float, waiter: Waiter) -> None:
        self.pending.add_proposal(entry, deadline, waiter)
        self._wake.set()
        self.stats.proposals += 1

    async def read(self, key: str, linearizable: bool, timeout: float) -> KeyValue | None:
        """Read a key; linearizable reads confirm leadership with a ReadIndex round first.
        Raises NotLeader, ReadAborted, RuntimeStopped or TimeoutError (at the deadline)."""
        if not linearizable:
            return self.sm.get(key)
        await self.barrier(timeout)
        return self.sm.get(key)

    async def barrier(self, timeout: float) -> int:
        """Confirm the leader's office with a quorum (ReadIndex, asked of the leader by a
        follower) and wait until everything committed before the call is applied here;
        returns the read index. Afterwards the state machine holds every write
        acknowledged before the call began. Raises NotLeader when no leader is known."""
        self._check_running()
        return await self.via_leader.barrier(timeout)

    # ------------------------------------------------------------------ leadership

    @property
    def leader_id(self) -> NodeId | None:
        return self.node.leader_id

    @property
    def is_leader(self) -> bool:
        return self.node.role is Role.LEADER

    @property
    def election_timeout_s(self) -> float:
        return self.tuning.tick_ms * self.tuning.election_ticks / 1000

    async def wait_for_leader(self, timeout: float) -> NodeId | None:
        """The known leader, waiting up to `timeout` for one to emerge."""
        if self.stopping:
            return self.node.leader_id
        return await self.leadership.wait_for_leader(timeout)

    def transfer_leadership(self, to: NodeId) -> None:
        self.node.transfer_leadership(to)
        self.leadership.handing_to = to
        self._wake.set()

    def replication(self) -> dict[NodeId, int]:
        """On the leader, the match index of every member (its own: its durable log);
        empty elsewhere."""
        return {peer: pr.match for peer, pr in self.node.progress().items()}

    async def drain(self, timeout: float) -> None:
        """Before shutdown: hand leadership away (so clients wait one round trip, not an
        election timeout), give waiting requests a moment, then fail the rest."""
        if self.node.role is Role.LEADER and len(self.membership.members) > 1:
            voters = self.node.membership.voters  # a learner cannot take over
            reachable = sorted(
                p
                for p, st in self.transport.peer_status().items()
                if st["reachable"] and p in voters
            )
            if reachable:
                with contextlib.suppress(Exception):
                    self.transfer_leadership(reachable[0])
                    log.info("shutting down: handing leadership to %s", reachable[0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.pending.abort_all(RuntimeStopped("the node is shutting down"))

    # ------------------------------------------------------------------ peers

    def admit(self, sender: NodeId, sender_url: str | None) -> str | None:
        """The peer API asks whether to take messages from `sender` (see MemberView)."""
        return self.membership.admit(sender, sender_url)

    # ------------------------------------------------------------------ the clock

    async def _clock_loop(self) -> None:
        """A tick that raises is a bug in the core: a node that kept serving without
        ticks would never again elect or heartbeat, so it stops, as for the ready loop."""
        try:
            await self.clock.run(lambda: self.fatal_error is None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fatal(exc)

    def _tick(self) -> None:
        self.node.tick()
        self._send_early()
        self._wake.set()

    # ------------------------------------------------------------------ the ready loop

    async def _ready_loop(self) -> None:
        try:
            while True:
                self._idle = True
                await self._wake.wait()
                self._idle = False
                self._wake.clear()
                node = self.node
                while node.has_ready():
                    rd = node.ready()
                    await self._handle_ready(rd)
                    if rd.committed and self.pending.answered:
                        # Let the handlers just resolved write their answers before this
                        # loop spends system calls on the next Ready (often the commit
                        # index going out to followers, which nobody waits for).
                        self.pending.answered = False
                        await asyncio.sleep(0)
                self.snapshots.between_readies()
                self.leadership.observe()
                self.settings.observe()
                if self.stopping:
                    return
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a disk error or a bug: never keep running half-way
            self._fatal(exc)

    async def _handle_ready(self, rd: Ready) -> None:
        node, transport = self.node, self.transport
        late = answer_first(rd, node.role)  # every message after the apply
        early = rd.early_messages if rd.must_sync or rd.snapshot is not None else 0
        if early:  # else nothing waits for the disk: one frame per peer, below
            transport.send(rd.messages_before_persist)
        if rd.snapshot is not None:
            started = time.perf_counter()
            await self.snapshots.install(rd.snapshot)
            self.stats.snapshot_install_seconds.observe(time.perf_counter() - started)
        if rd.must_sync:
            await self.persister.save(rd, node.role is Role.LEADER)
        if len(rd.messages) > early and not late:
            transport.send(rd.messages[early:])
        if rd.forwarded:  # before applying: the Ready may commit these very entries
            self.pending.forwarded_outcomes(rd.forwarded, self.sm.applied_index)
        for at in range(0, len(rd.committed), APPLY_SLICE):  # the loop runs in between
            if at:
                await asyncio.sleep(0)
            self._apply(rd.committed[at : at + APPLY_SLICE])
        if late:
            transport.send(rd.messages)
        self.watches.advance()
        for rs in rd.read_states:
            self.pending.read_confirmed(rs.request_id, rs.index)
        node.advance(rd)
        self.snapshots.between_readies()

    def _apply(self, entries: Sequence[Entry]) -> None:
        sm_apply, pending = self.sm.apply, self.pending
        track, conf_changed = bool(pending.proposals), False
        for entry in entries:
            result = sm_apply(entry)
            if entry.type is EntryType.CONF_CHANGE:
                self.membership.change_applied(entry)
                conf_changed = True
            if track:
                pending.applied(entry, result)
        if conf_changed:
            self.membership.changed()
        self.stats.applied(entries)
        pending.applied_up_to(self.sm.applied_index)
        self.applied_changed.notify()
