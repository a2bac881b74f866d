"""Watch fan-out: many watchers on one prefix, writes at a fixed rate, pyraftkv vs etcd.

For each target: a local three-node cluster (real `kv serve` processes; etcd through
bench/run_etcd_cluster.sh), WATCHERS streaming watches on one prefix spread over the
three nodes (pyraftkv: `GET /v1/watch` Server-Sent Events; etcd: its JSON gateway's
streaming `POST /v3/watch`), and one writer putting RATE values a second to the leader
for DURATION seconds. Each delivery's latency runs from the write's acknowledgement
(the writer's clock) to its arrival at the watcher (same clock, same process); it can
be slightly negative when a node streams the change before the ack reaches the writer.
Node CPU is the cluster processes' user+system time over the writing window.

    python bench/watch_bench.py --watchers 1000 --rate 10 --duration 20 [--json]

The watchers and the writer share one client process: on a small machine that process
can be the bottleneck of both targets alike (its CPU is reported too).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvstore.chaos.cluster import LocalCluster
from kvstore.client.sse import SSEParser

PREFIX = "wb/"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


class Run:
    """Deliveries of one target: write id -> ack time, and every arrival time."""

    def __init__(self) -> None:
        self.acked: dict[int, float] = {}
        self.arrivals: list[tuple[int, float]] = []
        self.ready = 0

    def latencies_ms(self) -> list[float]:
        return sorted(
            (at - self.acked[wid]) * 1000 for wid, at in self.arrivals if wid in self.acked
        )


async def kv_watcher(session: aiohttp.ClientSession, url: str, run: Run) -> None:
    params = {"prefix": PREFIX}
    async with session.get(f"{url}/v1/watch", params=params, timeout=None) as resp:
        parser = SSEParser()
        async for chunk in resp.content.iter_any():
            now = time.monotonic()
            for msg in parser.feed(chunk):
                if msg.event == "created":
                    run.ready += 1
                elif msg.event == "message":
                    for e in json.loads(msg.data)["events"]:
                        run.arrivals.append((int(base64.b64decode(e["value"])), now))


async def etcd_watcher(session: aiohttp.ClientSession, url: str, run: Run) -> None:
    key = base64.b64encode(PREFIX.encode()).decode()
    end = base64.b64encode(PREFIX[:-1].encode() + bytes([ord(PREFIX[-1]) + 1])).decode()
    body = {"create_request": {"key": key, "range_end": end}}
    async with session.post(f"{url}/v3/watch", json=body, timeout=None) as resp:
        buffer = b""
        async for chunk in resp.content.iter_any():
            now = time.monotonic()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("created"):
                    run.ready += 1
                for e in result.get("events", []):
                    run.arrivals.append((int(base64.b64decode(e["kv"]["value"])), now))


async def kv_put(session: aiohttp.ClientSession, url: str, wid: int) -> bool:
    async with session.put(f"{url}/v1/kv/{PREFIX}k{wid % 10}", data=b"%d" % wid) as resp:
        await resp.read()
        return resp.status == 200


async def etcd_put(session: aiohttp.ClientSession, url: str, wid: int) -> bool:
    key = base64.b64encode(f"{PREFIX}k{wid % 10}".encode()).decode()
    value = base64.b64encode(b"%d" % wid).decode()
    async with session.post(f"{url}/v3/kv/put", json={"key": key, "value": value}) as resp:
        await resp.read()
        return resp.status == 200


async def measure(
    urls: list[str],
    leader: str,
    pids: list[int],
    watcher: Callable[[aiohttp.ClientSession, str, Run], Awaitable[None]],
    put: Callable[[aiohttp.ClientSession, str, int], Awaitable[bool]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    run = Run()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [
            asyncio.create_task(watcher(session, urls[i % len(urls)], run))
            for i in range(args.watchers)
        ]
        deadline = time.monotonic() + 60
        while run.ready < args.watchers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if run.ready < args.watchers:
            raise RuntimeError(f"only {run.ready} of {args.watchers} watches started")
        cpu0, client0, started = cpu_seconds(pids), time.process_time(), time.monotonic()
        writes = int(args.rate * args.duration)
        for wid in range(writes):
            await asyncio.sleep(max(0.0, started + wid / args.rate - time.monotonic()))
            if await put(session, leader, wid):
                run.acked[wid] = time.monotonic()
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pids) - cpu0
        client_cpu = time.process_time() - client0
        expected = len(run.acked) * args.watchers
        deadline = time.monotonic() + 30
        while len(run.arrivals) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lat = run.latencies_ms()
    return {
        "writes_acked": len(run.acked),
        "deliveries": len(lat),
        "expected_deliveries": expected,
        "p50_ms": round(statistics.median(lat), 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2) if lat else None,
        "node_cpu_percent": round(100 * cpu / elapsed, 1),
        "client_cpu_percent": round(100 * client_cpu / elapsed, 1),
    }


async def bench_kv(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kv-watch-bench-") as root:
        async with LocalCluster(Path(root), tuning={}, proxies=False) as cluster:
            leader = await cluster.wait_leader(timeout=20)
            urls = [cluster.client_url(n) for n in cluster.ids]
            pids = [cluster.procs[n].pid for n in cluster.ids]
            return await measure(urls, cluster.client_url(leader), pids, kv_watcher, kv_put, args)


async def bench_etcd(args: argparse.Namespace) -> dict[str, Any]:
    script = Path(__file__).with_name("run_etcd_cluster.sh")
    env = {**os.environ, "KV_BENCH_ETCD_PORT": str(args.etcd_port)}
    proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        urls: list[str] = []
        for line in proc.stdout:
            if line.startswith("client URLs: "):
                urls = line.split(": ", 1)[1].strip().split(",")
                break
        if not urls:
            raise RuntimeError("etcd did not start")
        pids = [int(p) for p in subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()]
        pids = [p for p in pids if Path(f"/proc/{p}/exe").resolve().name == "etcd"]
        return await measure(urls, urls[0], pids, etcd_watcher, etcd_put, args)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="writes per second")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--etcd-port", type=int, default=2600)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {"pyraftkv": asyncio.run(bench_kv(args)), "etcd": asyncio.run(bench_etcd(args))}
    kv, etcd = results["pyraftkv"], results["etcd"]
    if kv["p50_ms"] and etcd["p50_ms"]:
        results["ratio_p50"] = round(kv["p50_ms"] / etcd["p50_ms"], 2)
        results["ratio_p99"] = round(kv["p99_ms"] / etcd["p99_ms"], 2)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.watchers} watchers on one prefix, {args.rate:g} writes/s for {args.duration:g} s")
    print("target     deliveries        p50 ms   p99 ms   node CPU   client CPU")
    for name in ("pyraftkv", "etcd"):
        r = results[name]
        got = f"{r['deliveries']}/{r['expected_deliveries']}"
        print(
            f"{name:<10} {got:<17} {r['p50_ms']!s:<8} {r['p99_ms']!s:<8} "
            f"{r['node_cpu_percent']:>5}%     {r['client_cpu_percent']:>5}%"
        )
    if "ratio_p50" in results:
        print(f"pyraftkv / etcd: p50 x{results['ratio_p50']}, p99 x{results['ratio_p99']}")


if __name__ == "__main__":
    main()
