"""How long writes stop when the leader is killed with kill -9.

Starts a local three-node cluster (default tuning, real `kv serve` processes on free
loopback ports), keeps writers busy against the two nodes that will survive, kills
the leader with SIGKILL, and measures the gap from the kill to the first
acknowledgement of a write *sent* after it (writes already in flight do not count).
The killed node is restarted and the cluster allowed to recover before the next
round. Prints every round and the median.

    python bench/failover.py --rounds 10 [--writers 4] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvstore.chaos.cluster import LocalCluster
from kvstore.client.http_session import single_send_session


class Writers:
    """Writers that retry at once against the given nodes and log each acknowledgement."""

    def __init__(self, urls: list[str], count: int) -> None:
        self.urls = urls
        self.count = count
        self.acks: list[tuple[float, float]] = []
        """(sent, acknowledged) times of every successful write."""
        self._stop = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._writer(session, n) for n in range(self.count)))

    def stop(self) -> None:
        self._stop.set()

    async def _writer(self, session: aiohttp.ClientSession, number: int) -> None:
        attempt = 0
        timeout = aiohttp.ClientTimeout(total=0.2)
        while not self._stop.is_set():
            url = self.urls[(number + attempt) % len(self.urls)]
            attempt += 1
            sent = time.monotonic()
            try:
                async with session.put(
                    f"{url}/v1/kv/failover-{number}", data=b"%d" % attempt, timeout=timeout
                ) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self.acks.append((sent, time.monotonic()))
                        continue
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.002)


def after(acks: list[tuple[float, float]], moment: float) -> list[float]:
    return sorted(acked for sent, acked in acks if sent > moment)


async def one_round(cluster: LocalCluster, writers_per_round: int) -> float:
    leader = await cluster.wait_leader(timeout=20)
    survivors = [cluster.client_url(n) for n in cluster.ids if n != leader]
    writers = Writers(survivors, writers_per_round)
    async with single_send_session() as session:
        task = asyncio.create_task(writers.run(session))
        deadline = time.monotonic() + 5
        while len(writers.acks) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        killed_at = time.monotonic()
        await cluster.kill9(leader)
        deadline = killed_at + 10
        while time.monotonic() < deadline and not after(writers.acks, killed_at):
            await asyncio.sleep(0.001)
        writers.stop()
        await task
    resumed = after(writers.acks, killed_at)
    cluster.start_node(leader)
    await cluster.wait_recovered(timeout=30)
    if not resumed:
        raise RuntimeError("writes did not resume within 10 s of the kill")
    return (resumed[0] - killed_at) * 1000


async def main(rounds: int, writers: int) -> list[float]:
    gaps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="kv-failover-") as root:
        async with LocalCluster(Path(root), tuning={}, proxies=False) as cluster:
            for number in range(rounds):
                gap = await one_round(cluster, writers)
                gaps.append(gap)
                print(f"round {number + 1}: writes resumed {gap:.0f} ms after kill -9", flush=True)
    return gaps


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(main(args.rounds, args.writers))
    summary = {
        "rounds": len(results),
        "median_ms": round(statistics.median(results), 1),
        "max_ms": round(max(results), 1),
        "gaps_ms": [round(g, 1) for g in results],
    }
    print(json.dumps(summary) if args.json else f"median {summary['median_ms']} ms")
