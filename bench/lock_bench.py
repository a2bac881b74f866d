"""Locks and leases, pyraftkv vs etcd, through each one's plain HTTP API.

Three settings, each a closed loop (send, wait for the answer, send the next) per
client, as the neutral benchmark's loadgen.py does (asyncio + aiohttp, one session,
no client tuned for either store; client i talks to endpoint i mod 3, so the load is
spread over the three nodes of each cluster):

- lock_contended: N clients (default 16) take and release ONE lock; one op = an
  acquire (waiting in the queue for its turn) plus the release.
- lock_uncontended: 100 clients, each its own lock; one op = acquire + release.
- keepalive: C clients (default 64), each renewing its own lease; one op = one
  keep-alive answered.

Every client is granted ONE lease (TTL 60 s) before the measurement and uses it for
every iteration on both systems, so both measure the same thing: a lock acquire and
release on an existing lease, and a keep-alive of an existing lease.

    etcd 3.4 (v3 JSON gateway, base64 keys): POST /v3/lease/grant {"TTL"};
      acquire = POST /v3/lock/lock {"name", "lease"} (answers once held; the answer's
      "key" is the ownership key), release = POST /v3/lock/unlock {"key"};
      keep-alive = POST /v3/lease/keepalive {"ID"}; POST /v3/lease/revoke at the end.
    pyraftkv: POST /v1/leases?ttl=60; acquire = POST /v1/locks/{name}?lease=ID&wait=5
      (queues, then answers once held, like etcd's lock call), and only if the answer
      still says held=false, GET /v1/locks/{name}?token=T&wait=5 (long poll until T
      holds); release = DELETE /v1/locks/{name}?token=T;
      keep-alive = POST /v1/leases/{id}/keepalive; DELETE /v1/leases/{id} at the end.

Only ops that complete inside the window [start + warmup, start + warmup + duration]
count; ops/s = completed ops in the window / duration. Any non-200 answer or exception
is an error, counted by kind (the client then pauses 10 ms). Each line also gives the
servers' CPU in the window, the generator's, and what the rest of the machine used
(other tenants; 100 = one core), as loadgen.py does.

Rounds are interleaved (etcd, kv, etcd, kv, ...); each system is started FRESH for
each round with the shared scripts (etcd_cluster.sh, kv_cluster.sh; KV names the kv
executable) and stopped after its three settings. The summary gives, per setting,
the median ops/s of each system over the rounds and the median of the per-round
ratios kv / etcd. The machine is shared: compare by these ratios, not absolute figures.

    .venv/bin/python bench/lock_bench.py run --rounds 3 --duration 8 --out /tmp/locks.jsonl
    .venv/bin/python bench/lock_bench.py summarize /tmp/locks.jsonl
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
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

LEASE_TTL = 60
KV_WAIT_S = 5
REPO = Path(__file__).resolve().parents[1]


class OpError(Exception):
    """A definite failure of one op, by kind (http_<status>, or what the answer lacked)."""


async def _post_json(session: aiohttp.ClientSession, url: str, doc: dict[str, Any]) -> Any:
    async with session.post(url, data=json.dumps(doc).encode()) as r:
        body = await r.read()
        if r.status != 200:
            raise OpError(f"http_{r.status}")
    return json.loads(body)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Etcd:
    """etcd's v3 JSON gateway (3.4)."""

    name = "etcd"

    async def grant(self, s: aiohttp.ClientSession, ep: str) -> str:
        return str((await _post_json(s, ep + "/v3/lease/grant", {"TTL": LEASE_TTL}))["ID"])

    async def revoke(self, s: aiohttp.ClientSession, ep: str, lease: str) -> None:
        await _post_json(s, ep + "/v3/lease/revoke", {"ID": lease})

    async def keepalive(self, s: aiohttp.ClientSession, ep: str, lease: str) -> None:
        doc = await _post_json(s, ep + "/v3/lease/keepalive", {"ID": lease})
        if "TTL" not in doc.get("result", {}):
            raise OpError("lease_not_found")

    async def lock_pair(self, s: aiohttp.ClientSession, ep: str, name: str, lease: str) -> None:
        doc = await _post_json(s, ep + "/v3/lock/lock", {"name": _b64(name), "lease": lease})
        if "key" not in doc:
            raise OpError("no_key")
        await _post_json(s, ep + "/v3/lock/unlock", {"key": doc["key"]})


class KV:
    """pyraftkv's HTTP API (README's API table)."""

    name = "kv"

    async def grant(self, s: aiohttp.ClientSession, ep: str) -> str:
        async with s.post(f"{ep}/v1/leases?ttl={LEASE_TTL}") as r:
            if r.status != 200:
                raise OpError(f"http_{r.status}")
            return str((await r.json())["id"])

    async def revoke(self, s: aiohttp.ClientSession, ep: str, lease: str) -> None:
        async with s.delete(f"{ep}/v1/leases/{lease}") as r:
            await r.read()

    async def keepalive(self, s: aiohttp.ClientSession, ep: str, lease: str) -> None:
        async with s.post(f"{ep}/v1/leases/{lease}/keepalive") as r:
            await r.read()
            if r.status != 200:
                raise OpError(f"http_{r.status}")

    async def lock_pair(self, s: aiohttp.ClientSession, ep: str, name: str, lease: str) -> None:
        path = f"{ep}/v1/locks/{quote(name, safe='')}"
        async with s.post(f"{path}?lease={lease}&wait={KV_WAIT_S}") as r:
            if r.status != 200:
                raise OpError(f"http_{r.status}")
            doc = await r.json()
        token = doc["token"]
        while not doc["held"]:
            async with s.get(f"{path}?token={token}&wait={KV_WAIT_S}") as r:
                if r.status != 200:
                    raise OpError(f"http_{r.status}")
                doc = await r.json()
            if not doc["held"] and not doc.get("queued"):
                raise OpError("left_queue")
        async with s.delete(f"{path}?token={token}") as r:
            await r.read()
            if r.status != 200:
                raise OpError(f"http_{r.status}")


SYSTEMS = {"etcd": Etcd(), "kv": KV()}
SETTINGS = ("lock_contended", "lock_uncontended", "keepalive")


def cpu_seconds(pids: list[int]) -> float | None:
    """user + system CPU seconds of the servers (None if one is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None
    return total / tick


def host_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine: how loaded it was, others included."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


async def measure(
    system: Etcd | KV, setting: str, clients: int, endpoints: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers, skip_auto_headers=("User-Agent",)
    ) as s:
        leases = await _grant_all(system, s, endpoints, clients)
        clock = time.perf_counter
        start = clock() + 0.2
        t0, t1 = start + args.warmup, start + args.warmup + args.duration
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        marks: dict[str, Any] = {}

        async def mark() -> None:
            await asyncio.sleep(max(0.0, t0 - clock()))
            marks["cpu0"], marks["host0"] = cpu_seconds(args.pids), host_busy()
            marks["gen0"] = time.process_time()
            await asyncio.sleep(max(0.0, t1 - clock()))
            marks["cpu1"], marks["host1"] = cpu_seconds(args.pids), host_busy()
            marks["gen1"] = time.process_time()

        async def client(i: int) -> None:
            ep, lease = endpoints[i % len(endpoints)], leases[i]
            name = "bench/lock" if setting == "lock_contended" else f"bench/lock/{i:03d}"
            await asyncio.sleep(max(0.0, start - clock()))
            while (began := clock()) < t1:
                try:
                    if setting == "keepalive":
                        await system.keepalive(s, ep, lease)
                    else:
                        await system.lock_pair(s, ep, name, lease)
                    failure = None
                except OpError as exc:
                    failure = str(exc)
                except Exception as exc:  # every failure is counted by kind, as loadgen does
                    failure = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                ended = clock()
                if t0 <= ended <= t1:
                    if failure is None:
                        latencies.append(ended - began)
                    else:
                        errors[failure] += 1
                if failure is not None:
                    await asyncio.sleep(0.01)

        await asyncio.gather(mark(), *(client(i) for i in range(clients)))
        await asyncio.gather(
            *(
                system.revoke(s, endpoints[i % len(endpoints)], lease)
                for i, lease in enumerate(leases)
            ),
            return_exceptions=True,
        )
    latencies.sort()
    server_cpu = None
    if marks.get("cpu0") is not None and marks.get("cpu1") is not None:
        server_cpu = marks["cpu1"] - marks["cpu0"]
    busy = (marks["host1"][0] - marks["host0"][0]) / max(1, marks["host1"][1] - marks["host0"][1])
    gen_cpu = marks["gen1"] - marks["gen0"]
    # What the rest of the machine (other tenants) used: all busy CPU minus ours.
    other = busy * (os.cpu_count() or 1) * args.duration - gen_cpu - (server_cpu or 0.0)

    def pct(q: float) -> float | None:
        return (
            round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)
            if latencies
            else None
        )

    ok = len(latencies)
    return {
        "system": system.name,
        "setting": setting,
        "clients": clients,
        "duration_s": args.duration,
        "ok": ok,
        "ops_per_s": round(ok / args.duration, 1),
        "lat_ms": {"p50": pct(0.5), "p99": pct(0.99)},
        "errors": dict(errors),
        "server_cpu_ms_per_op": round(1000 * server_cpu / ok, 3) if server_cpu and ok else None,
        "host_busy_pct": round(100 * busy, 1),
        "server_cpu_pct": round(100 * server_cpu / args.duration, 1) if server_cpu else None,
        "gen_cpu_pct": round(100 * gen_cpu / args.duration, 1),
        "other_cpu_pct": round(max(0.0, 100 * other / args.duration), 1),
    }


async def _grant_all(
    system: Etcd | KV, s: aiohttp.ClientSession, endpoints: list[str], clients: int
) -> list[str]:
    """One lease per client, granted through the client's own endpoint; retried for a
    while, since a freshly started cluster may still be settling."""

    async def one(i: int) -> str:
        deadline = time.monotonic() + 30
        while True:
            try:
                return await system.grant(s, endpoints[i % len(endpoints)])
            except (OpError, aiohttp.ClientError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    return list(await asyncio.gather(*(one(i) for i in range(clients))))


def sh(command: str) -> str:
    done = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{command!r} failed: {done.stdout}{done.stderr}")
    return done.stdout.strip()


def run(args: argparse.Namespace) -> None:
    scripts = {
        "etcd": Path(args.bench_dir).resolve() / "etcd_cluster.sh",
        "kv": Path(args.bench_dir).resolve() / "kv_cluster.sh",
    }
    os.environ.setdefault("KV", str(REPO / ".venv" / "bin" / "kv"))
    counts = {
        "lock_contended": args.contended,
        "lock_uncontended": args.locks,
        "keepalive": args.keepalive,
    }
    for round_no in range(1, args.rounds + 1):
        for name in args.systems.split(","):
            script = scripts[name]
            sh(f"{script} start")
            try:
                endpoints = sh(f"{script} endpoints").split(",")
                if name == "kv":
                    args.pids = [int(p) for p in sh(f"{script} pids").split(",")]
                else:
                    args.pids = [int(sh(f"{script} pid n{i}")) for i in (1, 2, 3)]
                for setting in SETTINGS:
                    result = asyncio.run(
                        measure(SYSTEMS[name], setting, counts[setting], endpoints, args)
                    )
                    result["round"] = round_no
                    result["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                    line = json.dumps(result)
                    print(line, flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(line + "\n")
            finally:
                sh(f"{script} stop")


def summarize(path: str) -> str:
    """A markdown table: per setting, each round's ops/s of both systems, the medians,
    and the median of the per-round ratios kv / etcd."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by: dict[tuple[str, str, int], dict[str, Any]] = {
        (r["setting"], r["system"], r["round"]): r for r in rows
    }
    rounds = sorted({r["round"] for r in rows})
    lines = [
        "| setting | clients | etcd ops/s (rounds) | kv ops/s (rounds) | etcd median "
        "| kv median | ratio kv/etcd (median of rounds) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setting in SETTINGS:
        etcd = [by[(setting, "etcd", n)]["ops_per_s"] for n in rounds if (setting, "etcd", n) in by]
        kv = [by[(setting, "kv", n)]["ops_per_s"] for n in rounds if (setting, "kv", n) in by]
        ratios = [
            by[(setting, "kv", n)]["ops_per_s"] / by[(setting, "etcd", n)]["ops_per_s"]
            for n in rounds
            if (setting, "kv", n) in by
            and (setting, "etcd", n) in by
            and by[(setting, "etcd", n)]["ops_per_s"]
        ]
        if not etcd or not kv:
            continue
        clients = next(r["clients"] for r in rows if r["setting"] == setting)
        lines.append(
            f"| {setting} | {clients} | {' / '.join(f'{x:.0f}' for x in etcd)} | "
            f"{' / '.join(f'{x:.0f}' for x in kv)} | {statistics.median(etcd):.0f} | "
            f"{statistics.median(kv):.0f} | {statistics.median(ratios):.2f} "
            f"({' / '.join(f'{x:.2f}' for x in ratios)}) |"
        )
    errors = [(r["system"], r["setting"], r["round"], r["errors"]) for r in rows if r["errors"]]
    if errors:
        lines.append("")
        lines.extend(f"errors: {s} {st} round {n}: {e}" for s, st, n, e in errors)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="interleaved rounds; one JSON line per measurement")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--systems", default="etcd,kv", help="order within a round")
    r.add_argument("--duration", type=float, default=8.0, help="measured seconds per setting")
    r.add_argument("--warmup", type=float, default=2.0)
    r.add_argument("--contended", type=int, default=16, help="clients on the one lock")
    r.add_argument("--locks", type=int, default=100, help="clients, each with its own lock")
    r.add_argument("--keepalive", type=int, default=64, help="clients renewing their lease")
    r.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    r.add_argument("--bench-dir", default="../shared/bench", help="the shared cluster scripts")
    r.add_argument("--out", help="also append the JSON lines here")
    s = sub.add_parser("summarize", help="the markdown table of a run's JSON lines")
    s.add_argument("path")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        print(summarize(args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
