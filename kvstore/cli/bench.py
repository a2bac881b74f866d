"""`kv bench`: a time-bounded load generator for this store or, for comparison, etcd.

Loads are bounded on purpose: a run lasts `--duration` seconds (at most an
hour) plus the per-operation timeout, and only loopback URLs are accepted unless
`--allow-remote` says otherwise, so the command cannot be turned on someone
else's service by a typo. A run writes under its own prefix (bench/<run id>/)
and deletes its keys at the end (unless `--keep-keys`).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import click

from kvstore.cli.bench_worker import BenchSpec, cleanup, prefill, run_workers
from kvstore.cli.client_commands import EXIT_UNAVAILABLE, EXIT_USAGE, fail
from kvstore.client.endpoints import is_loopback_url, resolve_endpoints, split_endpoints
from kvstore.client.errors import KVError

MAX_DURATION_S = 3600.0
MAX_PREFILL_KEYS = 1_000_000
DEFAULT_ETCD_ENDPOINTS = "http://127.0.0.1:2379"


class ProgressBar:
    """A one-line progress bar on stderr, drawn only on a terminal (no tqdm dependency)."""

    def __init__(self, duration: float, enabled: bool, width: int = 30) -> None:
        self._duration = duration
        self._enabled = enabled
        self._width = width
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._ops = 0

    def update(self, ops: int, *, force: bool = False) -> None:
        now = time.monotonic()
        self._ops = ops
        if not self._enabled or (now - self._last_draw < 0.2 and not force):
            return
        self._last_draw = now
        elapsed = now - self._start
        done = min(1.0, elapsed / self._duration)
        bar = "#" * int(done * self._width)
        rate = ops / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(
            f"\r[{bar:<{self._width}}] {min(elapsed, self._duration):5.1f}/{self._duration:g}s "
            f"{ops} ops {rate:8.0f} ops/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self._enabled:
            self.update(self._ops, force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


def bench_endpoints(
    target: str, endpoints: str | None, config: Path | None, allow_remote: bool = False
) -> list[str]:
    """Find the URLs to load and refuse any that is not on this machine (unless allowed)."""
    try:
        if target == "etcd":
            urls = split_endpoints(endpoints or DEFAULT_ETCD_ENDPOINTS)
        else:
            urls = resolve_endpoints(endpoints, config)
    except KVError as exc:
        fail(EXIT_USAGE, exc.message)
    remote = [url for url in urls if not is_loopback_url(url)]
    if remote and not allow_remote:
        fail(
            EXIT_USAGE,
            f"refusing to load non-loopback endpoints {', '.join(remote)}: "
            "kv bench targets 127.0.0.1 / localhost unless --allow-remote is given",
        )
    return urls


@click.command("bench")
@click.option(
    "--workload",
    type=click.Choice(["write", "read", "mixed", "range", "txn"]),
    default="write",
    show_default=True,
    help="range: read 100 consecutive keys at once; txn: put 4 keys in one transaction.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 4096),
    default=16,
    show_default=True,
    help="Operations in flight per process.",
)
@click.option(
    "--duration",
    type=click.FloatRange(0.1, MAX_DURATION_S),
    default=10.0,
    show_default=True,
    help="Seconds of load.",
)
@click.option(
    "--value-size",
    type=click.IntRange(0, 16 * 1024 * 1024),
    default=128,
    show_default=True,
    help="Bytes per written value.",
)
@click.option(
    "--keys",
    type=click.IntRange(1, 100_000_000),
    default=1000,
    show_default=True,
    help="Size of the key space (keys chosen uniformly).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Client processes, each with --concurrency operations in flight.",
)
@click.option(
    "--consistency",
    type=click.Choice(["linearizable", "stale"]),
    default="linearizable",
    show_default=True,
    help="Of the reads.",
)
@click.option(
    "--read-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Share of reads in the mixed workload.",
)
@click.option(
    "--prefill/--no-prefill",
    default=True,
    show_default=True,
    help="Write the key space once before a read or mixed run.",
)
@click.option("--target", type=click.Choice(["kv", "etcd"]), default="kv", show_default=True)
@click.option(
    "--endpoints",
    default=None,
    metavar="URL,URL",
    help=f"Node URLs (kv: else $KV_ENDPOINTS / --config; etcd: default {DEFAULT_ETCD_ENDPOINTS}).",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="cluster.toml for the kv target.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds one operation may take, retries included.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Also load endpoints that are not on this machine (a staging cluster, say).",
)
@click.option(
    "--keep-keys",
    is_flag=True,
    help="Leave the run's keys (bench/<run id>/...) in place instead of deleting them.",
)
@click.option("--seed", type=int, default=None, help="Seed of the key and op choices.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal).",
)
def bench_command(
    workload: str,
    concurrency: int,
    duration: float,
    value_size: int,
    keys: int,
    processes: int,
    consistency: str,
    read_fraction: float,
    prefill: bool,
    target: str,
    endpoints: str | None,
    config: Path | None,
    timeout: float,
    allow_remote: bool,
    keep_keys: bool,
    seed: int | None,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Load the cluster (or a local etcd) for a fixed time; report ops/s and latencies."""
    spec = BenchSpec(
        target=target,
        endpoints=tuple(bench_endpoints(target, endpoints, config, allow_remote)),
        workload=workload,
        concurrency=concurrency,
        duration=duration,
        value_size=value_size,
        keys=keys,
        stale=consistency == "stale",
        read_fraction=read_fraction,
        timeout=timeout,
        seed=random.randrange(2**32) if seed is None else seed,
        prefix=f"bench/{secrets.token_hex(4)}/",
    )
    try:
        if prefill and workload != "write":
            _prefill(spec)
        bar = ProgressBar(duration, sys.stderr.isatty() if progress is None else progress)
        try:
            result, failures = run_workers(spec, processes, bar.update)
        finally:
            bar.close()
    finally:
        if not keep_keys:
            _cleanup(spec)
    for failure in failures:
        click.echo(f"kv bench: worker failed: {failure}", err=True)
    settings: dict[str, Any] = {
        "target": target,
        "workload": workload,
        "concurrency": concurrency,
        "processes": processes,
        "duration_s": duration,
        "value_size": value_size,
        "keys": keys,
        "consistency": consistency,
    }
    click.echo(json.dumps(result.to_json(settings)) if as_json else result.to_text(settings))
    if result.ok == 0:
        fail(
            EXIT_UNAVAILABLE,
            "no operation succeeded: is the cluster up at " + ",".join(spec.endpoints) + "?",
        )


def _cleanup(spec: BenchSpec) -> None:
    """Delete the run's keys; say on stderr what is left if that fails."""
    if spec.keys > MAX_PREFILL_KEYS:
        click.echo(
            f"kv bench: keys under {spec.prefix} left in place: {spec.keys} keys are too "
            "many to delete one by one",
            err=True,
        )
        return
    deleted, error = asyncio.run(cleanup(spec, max(60.0, spec.duration)))
    if error is not None or deleted < spec.keys:
        click.echo(
            f"kv bench: could not delete every key under {spec.prefix} "
            f"({error or 'out of time'}; {deleted} of {spec.keys} done)",
            err=True,
        )


def _prefill(spec: BenchSpec) -> None:
    """Write the key space once; a load of reads on missing keys would measure 404s."""
    if spec.keys > MAX_PREFILL_KEYS:
        raise click.UsageError(
            f"--keys {spec.keys} is too many to prefill (max {MAX_PREFILL_KEYS}); use --no-prefill"
        )
    limit = max(60.0, spec.duration)
    written, error = asyncio.run(prefill(spec, limit))
    if error is not None:
        fail(
            EXIT_UNAVAILABLE,
            f"prefill failed ({error}): is the cluster up at {','.join(spec.endpoints)}?",
        )
    if written < spec.keys:
        fail(EXIT_UNAVAILABLE, f"prefill wrote only {written} of {spec.keys} keys in {limit:.0f}s")
