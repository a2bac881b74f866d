"""Seeded fault schedules with swarm testing, ending in a liveness phase.

Swarm testing (Groce et al., 2012): instead of enabling every fault in every run, each
seed switches a random subset of fault kinds on, with random rates. Runs that never
crash but partition a lot, or that only drop messages, reach states that an
"everything at once" mix almost never does. A run is entirely determined by
(seed, nodes, steps), so `python -m tests.sim.soak --replay SEED` reproduces it.

After the chaos phase every fault is healed and every node restarted; then a leader
must appear and a fresh proposal must commit within `LIVENESS_TIMEOUTS` election
timeouts, and every node must apply it soon after.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from consensus import Role
from consensus.progress import SNAPSHOT_RETRY_TIMEOUTS, heartbeats_per_timeout
from tests.sim.checkers import SimFailure
from tests.sim.cluster import PHASES, Cluster, Counters, Host, SimConfig
from tests.sim.network import NetConfig

FAULT_KINDS = (
    "crash",
    "crash_in_ready",
    "partition",
    "one_way",
    "isolate_leader",
    "flaky_leader",
    "decapitate",
    "compact",
    "drop_burst",
    "duplicate_burst",
    "delay_burst",
    "transfer",
    "slow_disk",
    "lossy_network",
    "reorder",
)
LINK_DROP_FRACTION = 0.5
"""Share of swarm seeds whose drivers also report lost links (RaftNode.peer_unreachable)
while the peer is alive, mostly about their leader; a crash always reports them."""
MEMBERSHIP_FRACTION = 0.25
"""Share of swarm seeds that also change membership (spares n{N+1}, n{N+2} join, voters
leave). Drawn from its own rng so the other seeds keep the schedules they always had."""
MEMBERSHIP_OPS = ("add_learner", "promote", "remove", "retire")
KV_FRACTION = 0.5
LEGACY_FRACTION = 0.3
"""Share of swarm seeds where some nodes predate commit-only appends (they answer
every append): a mixed-version cluster during an upgrade."""
"""Share of swarm seeds whose nodes also apply to a real KVStateMachine (tests/sim/kv.py);
drawn from its own rng, and the workload has its own, so schedules do not shift."""
MIXED_TUNING_FRACTION = 0.3
"""Share of swarm seeds whose nodes each have their own tuning (SimConfig.mixed_tuning)."""
SNAPSHOT_ECHO_FRACTION = 0.3
"""Share of swarm seeds in which snapshots are delivered again later, racing installs
(NetConfig.snapshot_echo); both drawn from their own rng, like the two above."""
LIVENESS_TIMEOUTS = 20
"""Election timeouts allowed, after healing, without progress towards committing a new
proposal (a commit, or more entries replicated under one unchanged leader)."""
CONVERGE_TIMEOUTS = 10
"""Then every node must apply it, never going this many election timeouts without
applying something (a follower far behind legitimately needs long with tiny batches)."""


def replay_command(seed: int, nodes: int, steps: int) -> str:
    return f"python -m tests.sim.soak --replay {seed} --nodes {nodes} --steps {steps}"


@dataclass
class Plan:
    """What one seed chose: the cluster settings, fault kinds and per-tick rates."""

    config: SimConfig
    faults: frozenset[str]
    rates: dict[str, float] = field(default_factory=dict)
    heal_at: int | None = None
    """When a brief isolation (flaky_leader) ends."""

    def describe(self) -> str:
        c = self.config
        return (
            f"faults={sorted(self.faults) or 'none'} heartbeat={c.heartbeat_tick} "
            f"spares={c.spares} kv={c.kv} inflight={c.max_inflight} batch={c.max_batch_bytes} "
            f"pre_vote={c.pre_vote} "
            f"check_quorum={c.check_quorum} net={c.net}"
        )


def make_plan(rng: random.Random, nodes: int, seed: int | None = None) -> Plan:
    faults = frozenset(kind for kind in FAULT_KINDS if rng.random() < 0.5)
    net = NetConfig(min_delay=1, max_delay=rng.randint(1, 4))
    if "lossy_network" in faults:
        net.drop = rng.uniform(0.0, 0.15)
        net.duplicate = rng.uniform(0.0, 0.15)
    if "reorder" in faults:
        net.reorder = rng.uniform(0.05, 0.3)
        net.reorder_extra = rng.randint(2, 25)
    config = SimConfig(
        nodes=nodes,
        heartbeat_tick=rng.choice((1, 2, 3)),
        max_inflight=rng.choice((1, 2, 8, 64)),
        max_batch_bytes=rng.choice((30, 100, 4096)),
        pre_vote=rng.random() < 0.8,
        check_quorum=rng.random() < 0.8,
        net=net,
        slow_disk=rng.uniform(0.1, 0.6) if "slow_disk" in faults else 0.0,
    )
    rates = {kind: rng.uniform(0.003, 0.04) for kind in sorted(faults)}
    rates["propose"] = rng.uniform(0.05, 0.6)
    rates["read"] = rng.uniform(0.0, 0.3)
    rates["forward"] = rng.uniform(0.0, 0.3)
    rates["restart"] = rng.uniform(0.01, 0.08)
    rates["heal"] = rng.uniform(0.01, 0.05)
    if seed is not None:
        side = random.Random(f"membership-{seed}-{nodes}")
        if side.random() < MEMBERSHIP_FRACTION:
            faults |= {"membership"}
            config.spares = 2
            for op in MEMBERSHIP_OPS:
                rates[op] = side.uniform(0.01, 0.06)
        if random.Random(f"kv-{seed}-{nodes}").random() < KV_FRACTION:
            faults |= {"kv"}
            config.kv = True
        side = random.Random(f"tuning-{seed}-{nodes}")
        if side.random() < MIXED_TUNING_FRACTION:
            faults |= {"mixed_tuning"}
            config.mixed_tuning = True
        if side.random() < SNAPSHOT_ECHO_FRACTION:
            faults |= {"snapshot_echo"}
            net.snapshot_echo = side.uniform(0.3, 1.0)
            net.reorder_extra = max(net.reorder_extra, 15)
        side = random.Random(f"legacy-{seed}-{nodes}")
        if side.random() < LEGACY_FRACTION:
            faults |= {"legacy_peers"}
            ids = [f"n{i}" for i in range(1, nodes + 3)]
            net.legacy = frozenset(side.sample(ids, side.randint(1, len(ids) - 1)))
        side = random.Random(f"link-drop-{seed}-{nodes}")
        if side.random() < LINK_DROP_FRACTION:
            faults |= {"link_drop"}
            rates["link_drop"] = side.uniform(0.01, 0.2)
    return Plan(config, faults, rates)


@dataclass
class RunResult:
    seed: int
    plan: Plan
    counters: Counters
    committed: int
    liveness_ticks: int
    fingerprint: int
    """CRC of everything committed and of the counters: equal runs, equal fingerprints."""


def run_schedule(
    seed: int,
    nodes: int = 3,
    steps: int = 300,
    *,
    verbose: bool = False,
    trace_messages: bool = False,
    disabled_checks: frozenset[str] = frozenset(),
) -> RunResult:
    """Run one seeded schedule: `steps` ticks of random operations and faults, then heal
    and demand progress. Raises SimFailure (an AssertionError) naming seed and replay."""
    rng = random.Random(seed)
    plan = make_plan(rng, nodes, seed)
    cluster = Cluster(
        rng.getrandbits(64),
        plan.config,
        disabled_checks=disabled_checks,
        replay_hint=replay_command(seed, nodes, steps),
        verbose=verbose,
        trace_messages=trace_messages,
    )
    cluster.seed = seed  # failures name the schedule seed, the one that replays
    cluster.event(f"plan: {plan.describe()}")
    with cluster.failures_named():
        for _ in range(steps):
            _random_operations(cluster, rng, plan)
            cluster.tick()
        liveness_ticks = liveness_phase(cluster)
        cluster.full_check()
    fingerprint = zlib.crc32(repr((cluster.check.committed, cluster.counters)).encode())
    return RunResult(
        seed, plan, cluster.counters, len(cluster.check.committed), liveness_ticks, fingerprint
    )


def _random_operations(cluster: Cluster, rng: random.Random, plan: Plan) -> None:
    rates = plan.rates
    if plan.heal_at is not None and cluster.now >= plan.heal_at:
        plan.heal_at = None
        cluster.heal()
    ids = list(cluster.ids)
    for kind, rate in rates.items():
        if rng.random() >= rate:
            continue
        live = [h.nid for h in cluster.live()]
        leaders = [h.nid for h in cluster.leaders()]
        if kind == "propose":
            for _ in range(rng.randint(1, 3)):
                cluster.propose()
        elif kind == "read":
            cluster.read()
        elif kind == "forward":
            for _ in range(rng.randint(1, 3)):
                cluster.forward()
        elif kind == "restart" and cluster.crashed():
            cluster.restart(rng.choice(cluster.crashed()))
        elif kind == "heal" and not cluster.net.is_healed():
            cluster.heal()
        elif kind == "crash" and live:
            cluster.crash(rng.choice(live))
        elif kind == "crash_in_ready" and live:
            cluster.crash(rng.choice(live), before=rng.choice(PHASES))
        elif kind == "partition":
            rng.shuffle(ids)
            cut_at = rng.randint(1, len(ids) - 1)
            cluster.partition([ids[:cut_at], ids[cut_at:]])
        elif kind == "one_way":
            sender, recipient = rng.sample(ids, 2)
            cluster.cut(sender, recipient)
        elif kind == "isolate_leader" and leaders:
            cluster.isolate(rng.choice(leaders))
        elif kind == "flaky_leader" and leaders and plan.heal_at is None:
            # Cut a leader off for a few ticks only: many short terms whose uncommitted
            # tails diverge, the ground for Figure 8 of the Raft paper.
            cluster.isolate(rng.choice(leaders))
            plan.heal_at = cluster.now + rng.randint(2, 3 * cluster.election_tick())
        elif kind == "drop_burst":
            ticks, p = rng.randint(3, 40), rng.uniform(0.3, 1.0)
            cluster.net.drop_burst(ticks, p)
            cluster.event(f"drop burst {ticks} ticks p={p:.2f}")
        elif kind == "duplicate_burst":
            ticks, p = rng.randint(3, 40), rng.uniform(0.3, 1.0)
            cluster.net.duplicate_burst(ticks, p)
            cluster.event(f"duplicate burst {ticks} ticks p={p:.2f}")
        elif kind == "delay_burst":
            ticks, p, extra = rng.randint(3, 40), rng.uniform(0.3, 1.0), rng.randint(2, 30)
            cluster.net.delay_burst(ticks, p, extra)
            cluster.event(f"delay burst {ticks} ticks p={p:.2f} up to +{extra}")
        elif kind == "decapitate" and not cluster.watchers:
            # The next node to win an election crashes at once, its no-op (and maybe
            # more) durable only on its own disk: divergent tails of newer terms.
            cluster.watchers.append(_decapitate(cluster, rng.choice(PHASES)))
        elif kind == "link_drop" and live:
            _link_drop(cluster, rng, rng.choice(live))
        elif kind == "compact" and live:
            cluster.compact_node(rng.choice(live))
        elif kind == "transfer":
            cluster.transfer(rng.choice(cluster.ids))
        elif kind == "add_learner":
            cluster.add_learner()
        elif kind == "promote":
            cluster.promote()
        elif kind == "remove":
            cluster.remove()
        elif kind == "retire":
            cluster.retire()


def _link_drop(cluster: Cluster, rng: random.Random, nid: str) -> None:
    """Tell `nid` it lost its link to its leader (mostly) or to another node, perhaps to
    every other follower too at the same moment: none of it may break safety."""
    node = cluster.hosts[nid].node
    leader = node.leader_id if node is not None else None
    if leader is None or rng.random() < 0.2:
        cluster.link_lost(nid, rng.choice(cluster.ids))
        return
    told = [nid] if rng.random() < 0.7 else [h.nid for h in cluster.live() if h.nid != leader]
    for follower in told:
        cluster.link_lost(follower, leader)


def _decapitate(cluster: Cluster, before: str) -> Callable[[Host], None]:
    def watcher(host: Host) -> None:
        if host.node is not None and host.node.role is Role.LEADER:
            cluster.watchers.remove(watcher)
            cluster.crash(host.nid, before=before)

    return watcher


def liveness_phase(cluster: Cluster) -> int:
    """Heal everything, restart every node, then require a new commit within a bound.
    Returns the ticks it took."""
    cluster.event("liveness phase: heal, restart all, benign network")
    cluster.heal()
    cluster.watchers.clear()
    net = cluster.net.config
    net.drop = net.duplicate = net.reorder = net.snapshot_echo = 0.0
    for host in cluster.hosts.values():
        host.crash_before = None
    for nid in cluster.crashed():
        cluster.restart(nid)
    timeout = cluster.election_tick()
    window = max(LIVENESS_TIMEOUTS * timeout, _snapshot_retry_ticks(cluster))
    deadline = cluster.now + window
    payloads: list[bytes] = []
    proposed_to: object = None
    start = cluster.now
    progress = _progress_mark(cluster)
    while not any(p in cluster.applied_payloads for p in payloads):
        mark = _progress_mark(cluster)
        if mark[0] > progress[0] or (mark[1] == progress[1] >= 0 and mark[2] > progress[2]):
            # A backlog of earlier proposals is still replicating: progress, not a stall.
            deadline = cluster.now + window
        progress = mark
        if cluster.now >= deadline:
            _liveness_failure(
                cluster, f"no progress for {LIVENESS_TIMEOUTS} election timeouts after healing"
            )
        voters = cluster.membership().voters
        leaders = [h for h in cluster.leaders() if h.nid in voters]
        if len(leaders) == 1 and leaders[0].last_view != proposed_to:
            # Propose again only to a new leader: the old proposal may have been lost.
            payload = f"live-s{cluster.seed}-{len(payloads)}".encode()
            if cluster.propose(payload, leaders[0]) is not None:
                payloads.append(payload)
                proposed_to = leaders[0].last_view
                cluster.event(f"liveness proposal {payload!r}")
        cluster.tick()
    committed_after = cluster.now - start
    done = next(p for p in payloads if p in cluster.applied_payloads)
    window = max(CONVERGE_TIMEOUTS * timeout, _snapshot_retry_ticks(cluster))
    deadline = cluster.now + window
    applied = _applied_mark(cluster)
    while not all(done in h.sm.payloads for h in _current_members(cluster)):
        if _applied_mark(cluster) > applied:
            applied = _applied_mark(cluster)
            deadline = cluster.now + window
        if cluster.now >= deadline:
            _liveness_failure(cluster, f"a node stopped catching up before applying {done!r}")
        cluster.tick()
    return committed_after


def _current_members(cluster: Cluster) -> list[Host]:
    """Running hosts in the committed membership: removed nodes (which may keep running)
    and joining nodes whose addition never committed get no new entries."""
    members = cluster.membership().members()
    return [h for h in cluster.hosts.values() if h.node is not None and h.nid in members]


def _snapshot_retry_ticks(cluster: Cluster) -> int:
    """A leader re-sends a lost InstallSnapshot only after SNAPSHOT_RETRY_TIMEOUTS
    election timeouts, counted in its heartbeats (the driver may still be streaming it);
    a follower waiting for that is slow, not stuck. The slowest node's tuning counts."""
    return max(
        (SNAPSHOT_RETRY_TIMEOUTS * heartbeats_per_timeout(h.config) + 5) * h.config.heartbeat_tick
        for h in cluster.hosts.values()
    )


def _applied_mark(cluster: Cluster) -> int:
    return sum(host.sm.applied_index for host in cluster.hosts.values())


def _progress_mark(cluster: Cluster) -> tuple[int, int, int]:
    """What counts as progress while a leader works through a backlog: the commit
    index, or, under one unchanged leader, more entries on disks that agree with its
    log. A new leader resets the second part, so election churn never counts."""
    committed = len(cluster.check.committed)
    voters = cluster.membership().voters
    leaders = [h for h in cluster.leaders() if h.nid in voters]
    if len(leaders) != 1 or leaders[0].node is None:
        return (committed, -1, 0)
    log = leaders[0].node.log
    aligned = 0
    for host in cluster.hosts.values():
        storage = host.disk.storage
        last = min(storage.last_index(), log.last_index())
        floor = max(storage.first_index(), log.first_index()) - 1
        while last > floor and storage.term(last) != log.term(last):
            last -= 1
        aligned += last
    return (committed, leaders[0].node.term, aligned)


def _liveness_failure(cluster: Cluster, what: str) -> None:
    status = "; ".join(
        f"{h.node.status()} last_term={h.node.log.last_term()}"
        if h.node is not None
        else f"{h.nid} down"
        for h in cluster.hosts.values()
    )
    raise SimFailure(f"liveness violated: {what}\nstatus: {status}\n{cluster.context()}")
