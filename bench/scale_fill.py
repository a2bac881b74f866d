"""The store at scale: fill a fresh 3-node cluster with N keys, restart it, add a node.

What it records (the goals of issue 17's "Scale" item, at N = 1,000,000 keys of 256 B):
- the fill: N writes of `--value-size` bytes at `--concurrency` to the leader, each
  once (a failure is counted, never retried); failed writes, writes/s, p50/p99/max;
- leader changes during the fill (every node's `kv_raft_leader_changes_total` and term);
- per node at the end: the longest event-loop stall (`loop_lag_max_ms` in /v1/status),
  RSS (/proc), and every snapshot it took (size and timings, from its log);
- a full restart: all three stopped (SIGTERM), started again, time until a
  linearizable read of the first key answers;
- a new node: started with --join, added with POST /v1/members, time until it is a
  voter and has applied everything the leader had committed when it was added.

Usage (repository root; takes ~12 min at 1,000,000 keys on a 2-core machine):
    python bench/scale_fill.py --keys 1000000 [--value-size 256] [--concurrency 64]
Progress goes to stderr, the figures (JSON) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.harness import Cluster, request, wait_until

NODES = ("n1", "n2", "n3")
_SNAPSHOT_LINE = re.compile(
    r"snapshot at index (\d+): (\d+) bytes; capture (\d+) ms \((\d+) ms of it on the loop"
    r".*?serialize and write (\d+) ms.*?commit (\d+) ms"
)


async def fill(url: str, keys: int, value_size: int, concurrency: int) -> dict[str, Any]:
    """Write keys 0..keys-1 once each; count failures instead of stopping."""
    value = b"x" * value_size
    latencies: list[float] = []
    failures: dict[str, int] = {}
    counter = iter(range(keys))
    started = time.perf_counter()

    async def worker(http: aiohttp.ClientSession) -> None:
        for i in counter:
            began = time.perf_counter()
            try:
                async with http.put(f"{url}/v1/kv/key-{i:08d}", data=value) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        code = f"HTTP {resp.status} {body[:80]!r}"
                        failures[code] = failures.get(code, 0) + 1
                        continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - began)

    async def progress() -> None:
        while True:
            await asyncio.sleep(15)
            done = len(latencies) + sum(failures.values())
            rate = done / (time.perf_counter() - started)
            print(f"  {done} written, {rate:.0f}/s, failures {failures}", file=sys.stderr)

    timeout = aiohttp.ClientTimeout(total=60)
    reporter = asyncio.create_task(progress())
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    reporter.cancel()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "writes": keys,
        "failed": sum(failures.values()),
        "failures": failures,
        "seconds": round(elapsed, 1),
        "writes_per_s": round(keys / elapsed),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


def rss_mb(cluster: Cluster, node_id: str) -> float:
    proc = cluster.nodes[node_id].proc
    assert proc is not None
    text = Path(f"/proc/{proc.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def cpu_s(cluster: Cluster, node_id: str) -> float:
    """Seconds of CPU the node's process used so far (all threads; /proc)."""
    proc = cluster.nodes[node_id].proc
    assert proc is not None
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def leader_changes(cluster: Cluster, node_id: str) -> int:
    text = request(cluster.url(node_id), "GET", "/metrics").body.decode()
    match = re.search(r"^kv_raft_leader_changes_total (\S+)$", text, re.M)
    return int(float(match.group(1))) if match else -1


def stalls_over(cluster: Cluster, node_id: str) -> dict[str, int]:
    """How many of the loop's wake-ups (every 10 ms) came over 20 and over 50 ms late."""
    text = request(cluster.url(node_id), "GET", "/metrics").body.decode()
    counts = dict(
        re.findall(r'^kv_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    )
    total = float(counts["+Inf"])
    return {
        f"over_{ms}ms": round(total - float(counts[le])) for ms, le in ((20, "0.02"), (50, "0.05"))
    }


def snapshots(cluster: Cluster, node_id: str) -> list[dict[str, int]]:
    """Every snapshot the node logged taking: index, bytes and timings in ms."""
    names = ("index", "bytes", "capture_ms", "capture_loop_ms", "write_ms", "commit_ms")
    text = cluster.nodes[node_id].log_path.read_text()
    return [dict(zip(names, map(int, m), strict=True)) for m in _SNAPSHOT_LINE.findall(text)]


def node_figures(cluster: Cluster, node_id: str, before: dict[str, int]) -> dict[str, Any]:
    status = cluster.status(node_id, timeout=5)
    taken = snapshots(cluster, node_id)
    return {
        "rss_mb": round(rss_mb(cluster, node_id)),
        "cpu_s": round(cpu_s(cluster, node_id), 1),
        "loop_lag_max_ms": status["loop_lag_max_ms"],
        "loop_lag_max_busy_ms": status["loop_lag_max_busy_ms"],
        "loop_lag_max_loop_cpu_ms": status["loop_lag_max_loop_cpu_ms"],
        "loop_stalls": stalls_over(cluster, node_id),
        "gc_pause_max_ms": status["gc_pause_max_ms"],
        "term": status["term"],
        "leader_changes_in_fill": leader_changes(cluster, node_id) - before[node_id],
        "keys": status["keys"],
        "log_entries": status["log_size"],
        "snapshots_taken": len(taken),
        "largest_snapshot": max(taken, key=lambda s: s["bytes"]) if taken else None,
        "slowest_commit_ms": max((s["commit_ms"] for s in taken), default=None),
        "most_loop_capture_ms": max((s["capture_loop_ms"] for s in taken), default=None),
    }


def restart(cluster: Cluster) -> dict[str, float]:
    """Stop every node, start them again; seconds until a linearizable read answers."""
    for node_id in NODES:
        cluster.stop(node_id, deadline=60)
    started = time.perf_counter()
    cluster.start(initial=False)

    def read() -> bool:
        for node_id in NODES:
            try:
                if cluster.get(node_id, "key-00000000", timeout=2).status == 200:
                    return True
            except OSError:
                pass
        return False

    wait_until(read, 300, "a linearizable read after the restart")
    return {"restart_to_first_read_s": round(time.perf_counter() - started, 2)}


def add_node(cluster: Cluster, new: str = "n4") -> dict[str, Any]:
    """A fourth node joins: seconds until it is a voter and has caught up."""
    leader = cluster.wait_leader(60)
    node = cluster.add_node(new)
    started = time.perf_counter()
    cluster.start(new, join=True)
    wait_until(lambda: cluster.status(new), 60, f"{new} to answer")
    body = json.dumps({"id": new, "client_url": node.client_url, "peer_url": node.peer_url})
    target = cluster.status(leader, timeout=5)["commit_index"]
    for _ in range(5):  # a 503 was certainly not proposed: ask the new leader
        reply = request(
            cluster.url(cluster.wait_leader(60)),
            "POST",
            "/v1/members?timeout=300",
            body.encode(),
            timeout=310,
        )
        if reply.status != 503:
            break
    voter_s = time.perf_counter() - started
    assert reply.status == 200, reply.body
    wait_until(
        lambda: cluster.status(new, timeout=5)["applied_index"] >= target,
        300,
        f"{new} to apply everything",
    )
    caught_up_s = time.perf_counter() - started
    return {
        "start_to_voter_s": round(voter_s, 2),
        "start_to_caught_up_s": round(caught_up_s, 2),
        "new_node_rss_mb": round(rss_mb(cluster, new)),
        "new_node_loop_lag_max_ms": cluster.status(new, timeout=5)["loop_lag_max_ms"],
        "installed": re.findall(r"installed a snapshot.*", node.log_path.read_text())[-1:],
    }


def reuse(root: Path) -> None:
    """The restart and the new node on a cluster kept by an earlier run (--keep)."""
    for stale in ("n4", "n5"):
        shutil.rmtree(root / "cluster" / "data" / stale, ignore_errors=True)
    cluster = Cluster(root / "cluster", size=3)  # fresh ports: founders' come from the file
    try:
        result: dict[str, Any] = {"restart": restart(cluster)}
        print(json.dumps(result), file=sys.stderr)
        result["nodes_rss_mb_after_restart"] = {n: round(rss_mb(cluster, n)) for n in NODES}
        result["join"] = add_node(cluster, "n5")  # n4 joined in the run that kept it
        print(json.dumps(result, indent=2))
    finally:
        cluster.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--reuse", type=Path, help="a kept directory: skip the fill, restart it and add a node"
    )
    args = parser.parse_args()
    if args.reuse is not None:
        reuse(args.reuse)
        return
    root = Path(tempfile.mkdtemp(prefix="scalefill-"))
    cluster = Cluster(root / "cluster", size=3)
    result: dict[str, Any] = {"keys": args.keys, "value_size": args.value_size}
    try:
        cluster.start(initial=False)
        leader = cluster.wait_healthy(timeout=60)
        print(f"filling {args.keys} keys through {leader} ({root})", file=sys.stderr)
        changes = {n: leader_changes(cluster, n) for n in NODES}
        result["fill"] = asyncio.run(
            fill(cluster.url(leader), args.keys, args.value_size, args.concurrency)
        )
        result["leader_after_fill"] = cluster.wait_leader(60)
        result["raw_value_mb"] = round(args.keys * args.value_size / 2**20)
        written = args.keys - result["fill"]["failed"]  # a failed write was never proposed
        wait_until(
            lambda: all(cluster.status(n, timeout=5)["keys"] >= written for n in NODES),
            300,
            "every node to apply the fill",
        )
        result["nodes"] = {n: node_figures(cluster, n, changes) for n in NODES}
        print(json.dumps(result, indent=2), file=sys.stderr)
        result["restart"] = restart(cluster)
        print(json.dumps(result["restart"]), file=sys.stderr)
        result["join"] = add_node(cluster)
        print(json.dumps(result, indent=2))
    finally:
        cluster.stop_all()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
