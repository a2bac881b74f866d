"""The load loop of `kv bench`, and running it in N threads or processes.

One Python process tops out at one core of client work, which would make the
client, not the cluster, the bottleneck; `--processes N` runs N copies of the
loop, each with its own client (and exactly-once session), and merges their
results. Workers are forked where the platform allows it: `spawn` re-imports
the caller's `__main__`, which re-runs any script without a main guard. The
fork happens before the parent opens any event loop or socket. With one
process the loop runs in a thread so the main thread can draw the progress bar.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kvstore.cli.bench_stats import BenchResult
from kvstore.cli.bench_targets import BenchOpError, Target, make_target

# Spawning a process and importing aiohttp takes a while; allowed on top of the run itself.
STARTUP_GRACE_S = 60.0
ERROR_PAUSE_S = 0.01  # after a failed op, so a dead cluster is not hammered in a tight loop
RANGE_KEYS = 100  # the `range` workload reads this many consecutive keys
TXN_KEYS = 4  # the `txn` workload puts this many keys in one transaction


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """Everything a worker needs; plain data so it pickles into a spawned process."""

    target: str
    endpoints: tuple[str, ...]
    workload: str
    concurrency: int
    duration: float
    value_size: int
    keys: int
    stale: bool
    read_fraction: float
    timeout: float
    seed: int
    prefix: str = "bench/"
    """Every key of the run starts with it: run-specific, so the run's keys can be
    told apart from anything else in the cluster and removed at the end."""


class CounterLike(Protocol):
    value: int


class _Counter:
    """The thread-mode twin of a shared `multiprocessing` integer."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


def key_name(spec: BenchSpec, index: int) -> str:
    return f"{spec.prefix}{index:08d}"


def _target(spec: BenchSpec) -> Target:
    return make_target(
        spec.target,
        list(spec.endpoints),
        timeout=spec.timeout,
        stale=spec.stale,
        max_connections=spec.concurrency,
    )


async def run_load(spec: BenchSpec, counter: CounterLike, worker_index: int) -> BenchResult:
    """Keep `concurrency` operations in flight until `duration` has passed; never start later."""
    result = BenchResult()
    loop = asyncio.get_running_loop()
    base_rng = random.Random(spec.seed * 1000 + worker_index)
    value = base_rng.randbytes(spec.value_size)
    read_fraction = {"read": 1.0, "write": 0.0}.get(spec.workload, spec.read_fraction)
    target = _target(spec)
    start = loop.time()
    deadline = start + spec.duration

    async def one_stream(rng: random.Random) -> None:
        while loop.time() < deadline:
            index = rng.randrange(spec.keys)
            key = key_name(spec, index)
            op = spec.workload
            if op not in ("range", "txn"):
                op = "read" if rng.random() < read_fraction else "write"
            began = time.perf_counter()
            try:
                if op == "range":
                    await target.range(key, key_name(spec, index + RANGE_KEYS), RANGE_KEYS)
                elif op == "txn":
                    keys = [key_name(spec, rng.randrange(spec.keys)) for _ in range(TXN_KEYS)]
                    await target.txn(sorted(set(keys)), value)
                elif op == "write":
                    await target.put(key, value)
                elif not await target.get(key):
                    result.not_found += 1
            except BenchOpError as exc:
                result.errors[exc.kind] += 1
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            result.record(op, time.perf_counter() - began)
            counter.value += 1

    try:
        streams = [random.Random(base_rng.random()) for _ in range(spec.concurrency)]
        await asyncio.gather(*(one_stream(rng) for rng in streams))
    finally:
        await target.close()
    result.finish(loop.time() - start)
    return result


async def prefill(spec: BenchSpec, limit_s: float) -> tuple[int, str | None]:
    """Write every key once so reads measure hits (see `_every_key`)."""
    value = random.Random(spec.seed).randbytes(spec.value_size)
    return await _every_key(spec, limit_s, lambda target, key: target.put(key, value))


async def cleanup(spec: BenchSpec, limit_s: float) -> tuple[int, str | None]:
    """Delete every key of the run's key space, so a benchmark leaves nothing behind."""
    return await _every_key(spec, limit_s, lambda target, key: target.delete(key))


async def _every_key(
    spec: BenchSpec, limit_s: float, action: Callable[[Target, str], Awaitable[None]]
) -> tuple[int, str | None]:
    """Apply `action` to every key of the key space, `concurrency` at a time.

    Returns how many keys were done and the first error: the first failure stops the
    pass, so a cluster that is down is reported in seconds.
    """
    target = _target(spec)
    next_key = 0
    done = 0
    error: str | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s

    async def worker() -> None:
        nonlocal next_key, done, error
        while next_key < spec.keys and error is None and loop.time() < deadline:
            index, next_key = next_key, next_key + 1
            try:
                await action(target, key_name(spec, index))
            except BenchOpError as exc:
                error = error or exc.kind
            else:
                done += 1

    try:
        await asyncio.gather(*(worker() for _ in range(min(spec.concurrency, spec.keys))))
    finally:
        await target.close()
    return done, error


def worker_main(spec: BenchSpec, index: int, counter: CounterLike, results: Any) -> None:
    """Entry point of a worker thread or process: always posts exactly one message."""
    try:
        outcome = asyncio.run(run_load(spec, counter, index))
    except BaseException as exc:
        results.put((index, None, f"{type(exc).__name__}: {exc}"))
    else:
        results.put((index, outcome, None))


def run_workers(
    spec: BenchSpec, processes: int, on_progress: Callable[[int], None]
) -> tuple[BenchResult, list[str]]:
    """Run the load in `processes` workers; return the merged result and worker failures."""
    handles: list[threading.Thread | multiprocessing.process.BaseProcess]
    if processes == 1:
        counters: list[CounterLike] = [_Counter()]
        results: Any = queue.Queue()
        handles = [
            threading.Thread(target=worker_main, args=(spec, 0, counters[0], results), daemon=True)
        ]
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        counters = [ctx.Value("q", 0, lock=False) for _ in range(processes)]
        results = ctx.Queue()
        handles = [
            ctx.Process(target=worker_main, args=(spec, i, counters[i], results), daemon=True)
            for i in range(processes)
        ]
    for handle in handles:
        handle.start()
    merged, failures = BenchResult(), []
    try:
        received = _collect(spec, handles, results, counters, on_progress)
        for _, outcome, error in received:
            if outcome is not None:
                merged.merge(outcome)
            else:
                failures.append(error)
        missing = len(handles) - len(received)
        failures += ["a worker did not report (killed or stuck)"] * missing
    finally:
        for handle in handles:
            if isinstance(handle, multiprocessing.process.BaseProcess) and handle.is_alive():
                handle.terminate()
            handle.join(timeout=5)
    return merged, failures


def _collect(
    spec: BenchSpec,
    handles: list[Any],
    results: Any,
    counters: list[CounterLike],
    on_progress: Callable[[int], None],
) -> list[tuple[int, BenchResult | None, str | None]]:
    """Poll for results, reporting progress, until all came in or the time bound passed."""
    limit = time.monotonic() + spec.duration + spec.timeout + STARTUP_GRACE_S
    received: list[tuple[int, BenchResult | None, str | None]] = []
    while len(received) < len(handles) and time.monotonic() < limit:
        on_progress(sum(c.value for c in counters))
        try:
            received.append(results.get(timeout=0.2))
        except queue.Empty:
            if not any(h.is_alive() for h in handles) and results.empty():
                break
    on_progress(sum(c.value for c in counters))
    return received
