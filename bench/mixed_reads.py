"""Latency of linearizable reads on the leader while a follower serves reads too.

A user whose services read from every node sends some reads to the leader and some to
followers. A follower obtains each read index from the leader, and the leader may let
its own read rounds wait for such a request to share its frame (consensus.read_index,
HOLD_MIN_ASKS). This measures what that costs the leader's own reads: sequential reads
on the leader, first alone, then while one client reads from a follower every
`--follower-interval` ms. Starts a local three-node cluster (default tuning, real
`kv serve` processes on free loopback ports). Prints p50/p90/max of each phase.

    python bench/mixed_reads.py [--reads 300] [--follower-interval 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvstore.chaos.cluster import LocalCluster

PAUSE_S = 0.013
"""Between two leader reads: not a multiple of the 10 ms tick, so reads fall anywhere
within one."""


async def leader_reads(session: aiohttp.ClientSession, url: str, count: int) -> dict[str, float]:
    """`count` sequential reads of one key; latency percentiles in ms."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        async with session.get(f"{url}/v1/kv/mixed") as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"read on the leader answered {resp.status}")
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(PAUSE_S)
    latencies.sort()
    return {
        "p50_ms": round(latencies[len(latencies) // 2], 2),
        "p90_ms": round(latencies[int(len(latencies) * 0.9)], 2),
        "max_ms": round(latencies[-1], 2),
    }


async def follower_reader(session: aiohttp.ClientSession, url: str, interval: float) -> None:
    """Reads from a follower every `interval` seconds until cancelled."""
    while True:
        async with session.get(f"{url}/v1/kv/mixed") as resp:
            await resp.read()
        await asyncio.sleep(interval)


async def main(reads: int, interval_ms: float) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="kv-mixed-reads-") as root:
        async with LocalCluster(Path(root), tuning={}, proxies=False) as cluster:
            leader = await cluster.wait_leader(timeout=20)
            leader_url = cluster.client_url(leader)
            follower_url = next(cluster.client_url(n) for n in cluster.ids if n != leader)
            async with aiohttp.ClientSession() as session:
                async with session.put(f"{leader_url}/v1/kv/mixed", data=b"v") as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"the first write answered {resp.status}")
                alone = await leader_reads(session, leader_url, reads)
                reader = asyncio.create_task(
                    follower_reader(session, follower_url, interval_ms / 1000)
                )
                try:
                    mixed = await leader_reads(session, leader_url, reads)
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
    return {"leader_reads_alone": alone, "with_follower_reads": mixed}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--follower-interval", type=float, default=20.0, help="ms")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main(args.reads, args.follower_interval))
    if args.json:
        print(json.dumps(result))
    else:
        for phase, figures in result.items():
            print(f"{phase}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
