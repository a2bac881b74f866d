"""Snapshot size and time, and a new node's catch-up time, for N keys (default 100,000).

Part 1 (in process): build a state machine of N keys, then time each step of taking a
snapshot as the runtime does it (capture on the loop, serialize in a thread, store in
LevelDB) and of installing one (decode, which a follower does off its loop).

Part 2 (real processes): start a three-node cluster (`kv serve`, default tuning, so
snapshot_entries = 10,000), write N keys with concurrent clients while recording the
slowest write (compactions happen meanwhile), then start a fourth node with --join,
`POST /v1/members` it and time until it is a voter, plus the InstallSnapshot transfer
the leader logged.

Usage (repository root):
    python bench/snapshot_catchup.py [--keys 100000] [--value-size 100]
    python bench/snapshot_catchup.py --snapshot-entries 1000000   # no compaction: baseline
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus import Entry, Membership, SnapshotMeta
from kvstore.runtime.leveldb_storage import LevelDBStorage
from kvstore.state.commands import Put, encode_command
from kvstore.state.machine import KVStateMachine
from tests.integration.harness import Cluster, request, wait_until


def in_process(keys: int, value_size: int, tmp: Path) -> dict[str, float]:
    sm = KVStateMachine()
    value = b"x" * value_size
    for i in range(keys):
        sm.apply(Entry(2, i + 1, encode_command(Put(f"key-{i:08d}", value, None, None))))
    started = time.perf_counter()
    view = sm.snapshot_view()
    capture = time.perf_counter() - started
    started = time.perf_counter()
    data = view.serialize()
    serialize = time.perf_counter() - started
    storage = LevelDBStorage(tmp / "bench-raft")
    started = time.perf_counter()
    storage.apply_snapshot(SnapshotMeta(keys, 2, Membership(("n1", "n2", "n3"))), data)
    store = time.perf_counter() - started
    storage.close()
    started = time.perf_counter()
    parsed = KVStateMachine.parse(data)
    parse = time.perf_counter() - started
    started = time.perf_counter()
    KVStateMachine().install(parsed)
    install = time.perf_counter() - started
    return {
        "keys": keys,
        "snapshot_bytes": len(data),
        "capture_ms_on_loop": capture * 1000,
        "serialize_ms_in_thread": serialize * 1000,
        "store_ms_on_loop": store * 1000,
        "decode_ms_off_loop": parse * 1000,
        "install_ms_on_loop": install * 1000,
    }


async def fill(url: str, keys: int, value_size: int, concurrency: int = 64) -> dict[str, float]:
    """Write `keys` keys through one node with `concurrency` clients; latency figures."""
    value = b"x" * value_size
    latencies: list[float] = []
    counter = iter(range(keys))

    async def worker(http: aiohttp.ClientSession) -> None:
        for i in counter:
            started = time.perf_counter()
            async with http.put(f"{url}/v1/kv/key-{i:08d}", data=value) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"write {i}: HTTP {resp.status}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "writes": keys,
        "writes_per_s": keys / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
    }


def catch_up(keys: int, value_size: int, root: Path, snapshot_entries: int) -> dict[str, object]:
    tuning = {"election_ticks": 30, "snapshot_entries": snapshot_entries}
    cluster = Cluster(root / "cluster", size=3, tuning=tuning)
    try:
        cluster.start()
        leader = cluster.wait_healthy(timeout=30)
        load = asyncio.run(fill(cluster.url(leader), keys, value_size))
        wait_until(
            lambda: all(cluster.status(n)["applied_index"] >= keys for n in ("n1", "n2", "n3")),
            60,
            "the followers to apply everything",
        )
        leader = cluster.wait_leader()
        snapshots = {n: cluster.status(n)["last_snapshot"] for n in ("n1", "n2", "n3")}
        compactions = cluster.nodes[leader].log_path.read_text().count("compacted the log")
        node = cluster.add_node("n4")
        cluster.start("n4", join=True)
        wait_until(lambda: cluster.status("n4"), 30, "n4 to answer")
        body = json.dumps(
            {"id": "n4", "client_url": node.client_url, "peer_url": node.peer_url}
        ).encode()
        started = time.perf_counter()
        reply = request(cluster.url(leader), "POST", "/v1/members?timeout=120", body, timeout=130)
        voter_s = time.perf_counter() - started
        assert reply.status == 200, reply.body
        n4 = cluster.status("n4")
        sent = [
            line
            for n in ("n1", "n2", "n3")
            for line in cluster.nodes[n].log_path.read_text().splitlines()
            if "sent snapshot" in line
        ]
        received = re.findall(r"installed a snapshot.*", node.log_path.read_text())
        return {
            "load": load,
            "leader_snapshot": snapshots[leader],
            "leader_compactions": compactions,
            "add_until_voter_s": voter_s,
            "n4_first_index": n4["first_index"],
            "n4_keys": n4["keys"],
            "transfer": sent[-1].split("kvstore.transport: ")[-1] if sent else None,
            "installed": received[-1] if received else None,
        }
    finally:
        cluster.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--snapshot-entries", type=int, default=10_000)
    parser.add_argument("--skip-cluster", action="store_true", help="only part 1")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="snapbench-"))
    try:
        print(json.dumps({"in_process": in_process(args.keys, args.value_size, root)}, indent=2))
        if not args.skip_cluster:
            result = catch_up(args.keys, args.value_size, root, args.snapshot_entries)
            print(json.dumps({"cluster": result}, indent=2, default=str))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
