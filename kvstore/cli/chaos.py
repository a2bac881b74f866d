"""`kv chaos`: a fault-injection run against a throw-away local cluster, with a verdict.

The cluster is always new, on loopback, with its data in the run directory: a chaos
run must never be pointed at data someone cares about. `--config` only lends its node
ids, ports and tuning. Exit code 0 means PASS, 1 FAIL, 2 a usage error.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click


def _parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--node-env")
        env[name] = value
    return env


class _ProgressLine:
    """One line, rewritten in place on a terminal; elsewhere a line every few seconds."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.width = 0

    def __call__(self, p: object) -> None:
        from kvstore.chaos.runner import Progress

        assert isinstance(p, Progress)
        c = p.counts
        text = (
            f"{p.elapsed:5.1f}/{p.duration:.0f}s  ok {c['ok']}  fail {c['fail']}  "
            f"unknown {c['unknown']}  faults: {p.faults}"
        )
        if self.tty:
            text = text[:160]
            sys.stderr.write("\r" + text.ljust(self.width))
            self.width = len(text)
            sys.stderr.flush()
        elif time.monotonic() - self.last >= 5.0:
            self.last = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\n")


@click.command("chaos")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Take node ids, ports and tuning from this cluster.toml (its data is never used). "
    "Default: three nodes on free loopback ports.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Seconds of workload under faults.",
)
@click.option(
    "--nemesis",
    "kinds",
    default="kill,pause,partition,delay",
    show_default=True,
    help="Fault kinds to draw from: kill, pause, partition, delay.",
)
@click.option(
    "--schedule",
    default=None,
    help="A named schedule instead: mixed, leader-churn, partitions, flaky-network.",
)
@click.option("--seed", type=int, default=None, help="Seed of the schedule and workload.")
@click.option(
    "--workload",
    type=click.Choice(["kv", "watch", "transfer", "lock"]),
    default="kv",
    show_default=True,
    help="watch: also follow every change with watchers on several nodes and check that "
    "each one saw exactly the committed history. transfer: also move money between "
    "accounts in transactions and check that every range read sums to the total. "
    "lock: also run lock clients (processes) making fenced writes to one key while the "
    "nemesis pauses lock holders past their lease TTL; check the fencing tokens, the "
    "critical sections and that no lease ended before its TTL.",
)
@click.option("--clients", type=click.IntRange(min=1), default=6, show_default=True)
@click.option(
    "--nodes",
    type=click.IntRange(min=1, max=9),
    default=3,
    show_default=True,
    help="Cluster size when no --config is given.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory. Default: chaos-runs/<timestamp>-<seed>/",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.0),
    default=40.0,
    show_default=True,
    help="Operations per second per client at most (0: unlimited).",
)
@click.option(
    "--tls",
    is_flag=True,
    help="https on every client and peer port, with a CA and node certificates made for "
    "the run as `kv certs init` makes them; every client verifies the nodes with that CA.",
)
@click.option(
    "--node-env",
    multiple=True,
    metavar="NAME=VALUE",
    help="Extra environment for the nodes (repeatable); for tests.",
)
def chaos_command(
    config_path: Path | None,
    duration: float,
    kinds: str,
    schedule: str | None,
    seed: int | None,
    workload: str,
    clients: int,
    nodes: int,
    out_dir: Path | None,
    rate: float,
    tls: bool,
    node_env: tuple[str, ...],
) -> None:
    """Run a workload against a local cluster under faults and check it is linearizable."""
    import random

    from kvstore.chaos.nemesis import NAMED_SCHEDULES, parse_kinds
    from kvstore.chaos.runner import RunOptions, default_run_dir, run
    from kvstore.config import ConfigError

    try:
        kind_list = parse_kinds(kinds)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--nemesis") from None
    if schedule is not None and schedule not in NAMED_SCHEDULES:
        choices = ", ".join(NAMED_SCHEDULES)
        raise click.BadParameter(f"unknown schedule (choose {choices})", param_hint="--schedule")
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    out_dir = out_dir or default_run_dir(seed)
    click.echo(f"kv chaos: seed {seed} (replay with --seed {seed}), run directory {out_dir}")
    opts = RunOptions(
        duration=duration,
        kinds=kind_list,
        schedule=schedule,
        seed=seed,
        clients=clients,
        nodes=nodes,
        config_path=config_path,
        out_dir=out_dir,
        extra_env=_parse_env(node_env),
        rate_per_client=rate,
        workload=workload,
        tls=tls,
    )
    line = _ProgressLine()
    try:
        result = run(opts, line)
    except (KeyboardInterrupt, asyncio.CancelledError):
        line.done()
        click.echo("kv chaos: interrupted; every node was stopped", err=True)
        sys.exit(130)
    except (OSError, RuntimeError, ValueError, ConfigError) as exc:
        line.done()
        click.echo(f"kv chaos: error: {exc}", err=True)
        sys.exit(2)
    line.done()
    summary = result.summary
    ops, checks = summary["ops"], summary["checks"]
    by = ops["by_outcome"]
    avail = summary["availability"]
    click.echo(
        f"ops: {ops['total']} (ok {by['ok']}, fail {by['fail']}, unknown {by['unknown']}); "
        f"faults: {len(summary['faults'])} over {summary['faulted_seconds']:.1f} s; "
        f"available (ok or a definite no) during faults "
        f"{_pct(avail['during_faults']['availability'])}, "
        f"outside {_pct(avail['outside_faults']['availability'])}; "
        f"checker {checks['checker_seconds']:.2f} s"
    )
    watch = checks.get("watch")
    if watch is not None:
        click.echo(
            f"watchers: {watch['changes_received']} changes received of "
            f"{watch['history_revision']} revisions, reconnects {watch['reconnects']}"
        )
    transfer = checks.get("transfer")
    if transfer is not None:
        click.echo(
            f"transfers: {transfer['applied']} applied, {transfer['conflicts']} conflicts, "
            f"{transfer['unknown']} unknown, {transfer['unavailable']} unavailable; "
            f"{transfer['audits']} range reads audited; final sum {transfer['final_sum']} "
            f"of {transfer['expected_sum']} at revision {transfer['final_revision']}"
        )
    lock = checks.get("lock")
    if lock is not None:
        click.echo(
            f"locks: {lock['writes_applied']} fenced writes applied in "
            f"{lock['critical_sections_applied']} critical sections by {lock['workers']} "
            f"clients ({lock['holds']} holds, {lock['leases']} leases of TTL {lock['ttl']} s); "
            f"{lock['writes_fenced']} stale writes refused (fenced), {lock['writes_unknown']} "
            f"unknown; holder pauses past the TTL {lock['holder_pauses']} of "
            f"{lock['holder_pauses_planned']} planned; {lock['leases_expired']} leases expired "
            f"(the soonest {lock['shortest_expiry_s']} s after its last keep-alive was sent), "
            f"{lock['early_expiries']} before their TTL"
        )
    if tls:
        click.echo(f"tls: every port https, certificates in {result.run_dir}/cluster/certs/")
    click.echo(f"outputs: {result.run_dir}/ (history.jsonl, summary.json, latency.png)")
    if result.passed:
        extra = "; every watcher saw exactly the committed history" if watch else ""
        if transfer:
            extra += "; every range read of the accounts summed to the total"
        if lock:
            extra += (
                "; fenced writes in token order, no overlapping critical sections, "
                "no lease ended before its TTL"
            )
        click.echo(f"PASS: linearizable, converged, every acknowledged write accounted for{extra}")
        return
    for reason in result.reasons:
        click.echo(f"FAIL: {reason}")
    if result.explanation:
        click.echo(result.explanation)
    sys.exit(1)


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


if __name__ == "__main__":
    chaos_command()
