"""One chaos run from start to verdict.

Start a cluster behind proxies, run the workload for the duration while the nemesis
plays its schedule, heal everything, wait until the cluster has recovered, read every
key from every node, stop the cluster, then judge: linearizable history, converged
replicas, acknowledged writes all explained, and enough operations succeeded to make
the first judgement mean something. Everything is written to the run directory, and
the cluster is stopped by PID whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kvstore.chaos import transfers as tx
from kvstore.chaos.cluster import CHAOS_TUNING, LocalCluster, fresh_layout, layout_from_config
from kvstore.chaos.history import Operation, write_history
from kvstore.chaos.linearizability import (
    check_acknowledged_writes,
    check_convergence,
    check_history,
)
from kvstore.chaos.lock_clients import LockClients, holder_schedule, judge_locks
from kvstore.chaos.nemesis import (
    KINDS,
    Nemesis,
    PlannedFault,
    monotonic_clock,
    named_schedule,
    random_schedule,
)
from kvstore.chaos.report import build_summary, is_available, plot_latency
from kvstore.chaos.watchers import WATCH_TUNING, Watchers, check_watchers, read_history
from kvstore.chaos.workload import Workload, WorkloadConfig
from kvstore.client import KVError
from kvstore.config import Tuning, load_cluster_config

NodeStates = dict[str, dict[str, tuple[bytes, int]]]


@dataclass
class RunOptions:
    duration: float = 60.0
    kinds: tuple[str, ...] = KINDS
    schedule: str | None = None
    """A named schedule (chaos.nemesis.NAMED_SCHEDULES) instead of a random one."""
    seed: int | None = None
    clients: int = 6
    nodes: int = 3
    config_path: Path | None = None
    """Take node ids, ports and tuning from this cluster.toml (never its data_dir)."""
    out_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    """Added to the nodes' environment (e.g. test-only switches)."""
    op_timeout_s: float | None = None
    """Client-side limit per request; default: the server's request timeout + 0.5 s, so a
    slow write usually comes back as the server's definite 504, not a client give-up."""
    rate_per_client: float = 40.0
    check_time_limit_s: float = 60.0
    min_ok_ops: int = 100
    min_ok_share: float = 0.30
    leader_timeout_s: float = 30.0
    recovery_timeout_s: float = 30.0
    workload: str = "kv"
    """"watch": also run watchers (kvstore.chaos.watchers) and check their streams;
    "transfer": also run transfers between accounts (kvstore.chaos.transfers);
    "lock": also run lock clients and pause lock holders (kvstore.chaos.lock_clients)."""
    tls: bool = False
    """https everywhere: certificates made for the run, every client verifies with its CA."""


@dataclass(frozen=True)
class Progress:
    elapsed: float
    duration: float
    counts: dict[str, int]
    faults: str


@dataclass
class RunResult:
    passed: bool
    reasons: list[str]
    explanation: str | None
    run_dir: Path
    seed: int
    summary: dict[str, Any]


def default_run_dir(seed: int, base: Path = Path("chaos-runs")) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return base / f"{stamp}-{seed}"


def run(opts: RunOptions, progress: Callable[[Progress], None] | None = None) -> RunResult:
    """The blocking entry point for the CLI and tests.

    SIGTERM cancels the run like Ctrl-C does (the nodes run in sessions of their own, so
    only this process can stop them): the cancellation unwinds through every `finally`,
    which heals the faults and stops the nodes by PID; then CancelledError is raised.
    """
    return asyncio.run(_run_until_signal(opts, progress))


async def _run_until_signal(
    opts: RunOptions, progress: Callable[[Progress], None] | None
) -> RunResult:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_chaos(opts, progress)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def run_chaos(
    opts: RunOptions, progress: Callable[[Progress], None] | None = None
) -> RunResult:
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 31)
    run_dir = (opts.out_dir or default_run_dir(seed)).resolve()
    if opts.config_path is not None:
        layout, tuning = layout_from_config(load_cluster_config(opts.config_path))
    else:
        layout, tuning = fresh_layout(opts.nodes), dict(CHAOS_TUNING)
    if opts.workload in ("watch", "lock"):  # the checkers read the whole history back
        tuning = {**WATCH_TUNING, **tuning}
    run_dir.mkdir(parents=True, exist_ok=True)
    if opts.schedule:
        schedule = named_schedule(opts.schedule, seed, opts.duration)
    else:
        schedule = random_schedule(seed, opts.duration, opts.kinds)
    if opts.workload == "lock":
        schedule = sorted(schedule + holder_schedule(seed, opts.duration), key=lambda f: f.at)
    request_timeout_ms = tuning.get("request_timeout_ms", Tuning.request_timeout_ms)
    op_timeout_s = opts.op_timeout_s or request_timeout_ms / 1000 + 0.5
    cluster = LocalCluster(
        run_dir / "cluster", layout, tuning=tuning, extra_env=opts.extra_env, tls=opts.tls
    )
    client_tls = cluster.client_tls
    wl_config = WorkloadConfig(
        clients=opts.clients,
        op_timeout_s=op_timeout_s,
        rate_per_client=opts.rate_per_client,
        seed=seed,
        tls=client_tls,
    )
    ids = [n.id for n in layout]
    settings = _settings(opts, seed, run_dir, ids, tuning, schedule, op_timeout_s)
    reasons: list[str] = []
    ops: list[Operation] = []
    node_states: NodeStates = {}
    leader: str | None = None
    now = monotonic_clock()
    nemesis = Nemesis(cluster, schedule, now)
    end_of_run = 0.0
    watchers: Watchers | None = None
    watch_stats: dict[str, Any] | None = None
    transfers: tx.Transfers | None = None
    transfer_stats: dict[str, Any] | None = None
    locks: LockClients | None = None
    lock_stats: dict[str, Any] | None = None
    try:
        await cluster.start()
        if await _started(cluster, opts.leader_timeout_s, reasons):
            now = nemesis.now = monotonic_clock()  # time 0 = the workload's start
            urls = [cluster.client_url(n) for n in cluster.ids]
            workload = Workload(urls, now, wl_config)
            ops = workload.ops
            if opts.workload == "watch":
                watchers = Watchers(urls, seed, client_tls)
                watchers.start()
            if opts.workload == "transfer":
                transfers = tx.Transfers(urls, seed, op_timeout_s, tls=client_tls)
                await transfers.setup()
                transfers.start()
            if opts.workload == "lock":
                t0 = time.monotonic() - now()
                ca_file = None if client_tls is None else client_tls.ca_file
                locks = LockClients(
                    urls, run_dir, seed=seed, t0=t0, op_timeout_s=op_timeout_s, ca_file=ca_file
                )
                locks.start()
                nemesis.client_faults = locks.fault_handlers(cluster)
            end_of_run = await _play(opts, workload, nemesis, now, progress)
            try:
                statuses = await cluster.wait_recovered(opts.recovery_timeout_s)
                leader = next(iter(statuses.values())).get("leader")
                node_states = await _final_states(cluster, list(wl_config.keys))
                if watchers is not None:
                    watch_stats = await _judge_watchers(
                        cluster, watchers, ops, node_states, leader, reasons
                    )
                if transfers is not None:
                    await transfers.stop()
                    transfer_stats = await _judge_transfers(transfers, urls, reasons)
                if locks is not None:
                    await locks.stop()
                    lock_stats = await judge_locks(locks, cluster, nemesis.windows, reasons)
            except (TimeoutError, RuntimeError, OSError, aiohttp.ClientError) as exc:
                reasons.append(f"no recovery after healing: {exc}")
                await _dump_state(cluster, run_dir / "stuck-state.json")
    finally:
        if watchers is not None:
            await watchers.stop()
        if transfers is not None:
            await transfers.stop()
        if locks is not None:
            await locks.stop()
        await cluster.stop()

    checks, explanation = _judge(ops, node_states, leader, opts.check_time_limit_s, reasons)
    if watch_stats is not None:
        checks["watch"] = watch_stats
    if transfer_stats is not None:
        checks["transfer"] = transfer_stats
    if lock_stats is not None:
        checks["lock"] = lock_stats
    ok = sum(1 for op in ops if is_available(op))
    if ok < opts.min_ok_ops or ok < opts.min_ok_share * max(1, len(ops)):
        reasons.append(
            f"too few answered operations to judge: {ok} answered (ok or a definite no) "
            f"of {len(ops)} (need >= {opts.min_ok_ops} and >= {opts.min_ok_share:.0%})"
        )
    verdict = "FAIL" if reasons else "PASS"
    summary = build_summary(
        ops=ops,
        windows=nemesis.windows,
        end_of_run=end_of_run,
        settings=settings,
        checks=checks,
        verdict=verdict,
        reasons=reasons,
    )
    _write_outputs(run_dir, ops, summary, nemesis, end_of_run, op_timeout_s, seed)
    return RunResult(not reasons, reasons, explanation, run_dir, seed, summary)


async def _started(cluster: LocalCluster, timeout: float, reasons: list[str]) -> bool:
    try:
        await cluster.wait_leader(timeout)
    except TimeoutError as exc:
        logs = "\n".join(f"--- {n}:\n{cluster.log_tail(n, 800)}" for n in cluster.ids)
        reasons.append(f"the cluster did not start: {exc}\n{logs}")
        return False
    return True


async def _play(
    opts: RunOptions,
    workload: Workload,
    nemesis: Nemesis,
    now: Callable[[], float],
    progress: Callable[[Progress], None] | None,
) -> float:
    """Workload and nemesis side by side for the duration; everything healed after."""
    wl_task = asyncio.create_task(workload.run())
    nem_task = asyncio.create_task(nemesis.run())
    try:
        while (left := opts.duration - now()) > 0 and not wl_task.done():
            if progress is not None:
                counts = {o: workload.counts[o] for o in ("ok", "fail", "unknown")}
                progress(Progress(now(), opts.duration, counts, nemesis.describe_active()))
            await asyncio.sleep(min(left, 0.5))
    finally:
        workload.stop()
        nem_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await nem_task
        await nemesis.heal_all()
        await asyncio.wait_for(wl_task, workload.config.op_timeout_s + 10.0)
    return now()


async def _judge_watchers(
    cluster: LocalCluster,
    watchers: Watchers,
    ops: list[Operation],
    node_states: NodeStates,
    leader: str | None,
    reasons: list[str],
) -> dict[str, Any]:
    """After recovery: let the watchers catch up, then compare them with the history
    every node holds (kvstore.chaos.watchers). Returns what the summary shows of it."""
    histories = {}
    for node_id in cluster.ids:
        _, histories[node_id] = await read_history(cluster.session, cluster.client_url(node_id))
    last = max((c[0] for h in histories.values() for c in h), default=0)
    await watchers.caught_up(last, timeout=30.0)
    final = node_states.get(leader or "", next(iter(node_states.values()), {}))
    problems = watchers.errors + check_watchers(histories, watchers.streams, ops, final)
    reasons += [f"watch: {p}" for p in problems]
    return {
        "history_revision": last,
        "changes_received": [len(s) for s in watchers.streams],
        "reconnects": watchers.reconnects,
        "problems": problems,
    }


async def _judge_transfers(
    transfers: tx.Transfers, urls: list[str], reasons: list[str]
) -> dict[str, Any]:
    """After recovery: read every account once more and check the transfer invariants."""
    try:
        final = await tx.final_page(urls, transfers.timeout, transfers.tls)
    except KVError as exc:
        final = None
        transfers.stats.errors.append(f"final read of the accounts failed: {exc}")
    problems = tx.check_transfers(transfers.stats, final)
    reasons += [f"transfer: {p}" for p in problems]
    return tx.summary(transfers.stats, final, problems)


async def _dump_state(cluster: LocalCluster, path: Path) -> None:
    """What every node and link looked like when recovery failed, for the post-mortem."""
    links = {
        f"{src}->{dst}": [{"url": p.url, "state": p.state.describe(), **p.stats} for p in group]
        for (src, dst), group in cluster.net.links.items()
    }
    state = {"statuses": await cluster.statuses(), "links": links}
    path.write_text(json.dumps(state, indent=2, default=str) + "\n")


async def _final_states(cluster: LocalCluster, keys: list[str]) -> NodeStates:
    """Every key as every node holds it locally (stale reads), after recovery."""
    states: NodeStates = {}
    for node_id in cluster.ids:
        states[node_id] = {}
        for key in keys:
            found = await cluster.stale_get(node_id, key)
            if found is not None:
                states[node_id][key] = found
    return states


def _judge(
    ops: list[Operation],
    node_states: NodeStates,
    leader: str | None,
    time_limit: float,
    reasons: list[str],
) -> tuple[dict[str, Any], str | None]:
    """Run the checkers; append a reason per failed check. Returns (checks, explanation)."""
    started = time.monotonic()
    result = check_history(ops, time_limit=time_limit)
    checker_s = time.monotonic() - started
    explanation = None
    if result.ok is False:
        reasons.append(f"not linearizable (key {result.key!r})")
        explanation = result.explanation
    elif result.ok is None:
        reasons.append(f"linearizability undecided: {result.explanation}")
    convergence: list[str] | None = None
    acknowledged: list[str] | None = None
    if node_states:
        convergence = check_convergence(node_states)
        if convergence:
            reasons.append("replicas did not converge: " + "; ".join(convergence))
        final = node_states.get(leader or "", next(iter(node_states.values())))
        # On a history that is itself not linearizable this would only repeat the violation.
        if result.ok is not False:
            acknowledged = check_acknowledged_writes(ops, final, time_limit=time_limit)
        if acknowledged:
            reasons.append("final state not explained by the history")
            explanation = "\n".join(filter(None, [explanation, *acknowledged]))
    checks = {
        "linearizable": result.ok,
        "checker_seconds": round(checker_s, 3),
        "checker_message": result.explanation,
        "violating_keys": result.violations,
        "undecided_keys": result.undecided,
        "converged": None if convergence is None else not convergence,
        "convergence_problems": convergence,
        "acknowledged_writes_ok": None if acknowledged is None else not acknowledged,
        "acknowledged_write_problems": acknowledged,
        "final_state": {
            node: {
                k: {"value": v.decode("utf-8", "replace"), "version": n} for k, (v, n) in d.items()
            }
            for node, d in node_states.items()
        },
    }
    return checks, explanation


def _settings(
    opts: RunOptions,
    seed: int,
    run_dir: Path,
    node_ids: list[str],
    tuning: dict[str, int],
    schedule: list[PlannedFault],
    op_timeout_s: float,
) -> dict[str, Any]:
    return {
        "seed": seed,
        "duration": opts.duration,
        "kinds": list(opts.kinds),
        "schedule_name": opts.schedule or "random",
        "clients": opts.clients,
        "nodes": node_ids,
        "tuning": tuning,
        "extra_env": opts.extra_env,
        "tls": opts.tls,
        "op_timeout_s": op_timeout_s,
        "rate_per_client": opts.rate_per_client,
        "run_dir": str(run_dir),
        "planned_faults": [asdict(f) for f in schedule],
    }


def _write_outputs(
    run_dir: Path,
    ops: list[Operation],
    summary: dict[str, Any],
    nemesis: Nemesis,
    end_of_run: float,
    op_timeout_s: float,
    seed: int,
) -> None:
    write_history(run_dir / "history.jsonl", sorted(ops, key=lambda op: op.call))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"kv chaos seed {seed}: {summary['verdict']}, {len(ops)} ops"
    plot_latency(run_dir / "latency.png", ops, nemesis.windows, end_of_run, title, op_timeout_s)
