"""What TLS + authentication cost: write throughput at concurrency 64 on the same
three-node cluster open and secure, for pyraftkv and for etcd 3.4, in interleaved
rounds of one run (kv open, kv secure, etcd open, etcd secure; then again).

Secure means: TLS on client and peer ports with kvstore.certs certificates (mutual
TLS between peers) plus users and tokens on, the generator writing as a user with
readwrite on `bench/` only (bench/secure_clusters.py builds both clusters). The load is
the neutral benchmark's own (shared/bench/loadgen.py, imported: its closed loop, its
window, its counting, its KVAdapter and EtcdAdapter); the secure rounds only add what a
real client of such a cluster sends, an `ssl` context that verifies the nodes against
the cluster CA and an `Authorization` header (pyraftkv: `Bearer <token>`, 300 s
lifetime; etcd: its simple token, 300 s TTL renewed on use; both outlast a round). Each
round's cluster is fresh and stopped by PID. The figure per system is the median of the
per-round ratios secure / open: on a shared machine only ratios within a run mean
anything.

    .venv/bin/python bench/secure_cost.py --rounds 3 --duration 8 [--systems kv,etcd]
    (--loadgen-dir defaults to ../shared/bench beside the project root)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
from pathlib import Path
from typing import Any

from secure_clusters import ROOT, Cluster, EtcdCluster, KVCluster

CLUSTERS: dict[str, type[Cluster]] = {"kv": KVCluster, "etcd": EtcdCluster}


class _WithSSL:
    """A session whose put/post carry the secure cluster's ssl context, so that the
    generator's own write() (URL, body, status check) runs unchanged over https."""

    def __init__(self, session: Any, context: Any) -> None:
        self.session, self.context = session, context

    def put(self, *args: Any, **kwargs: Any) -> Any:
        return self.session.put(*args, ssl=self.context, **kwargs)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        return self.session.post(*args, ssl=self.context, **kwargs)


def secure_adapter(base: type) -> type:
    """loadgen's adapter `base`, sending what a client of a TLS + auth cluster sends."""

    class SecureAdapter(base):  # type: ignore[misc, valid-type]
        def __init__(self, cfg: argparse.Namespace) -> None:
            super().__init__(cfg)
            self.headers = {**self.headers, "Authorization": cfg.authorization}
            self.ssl_context = cfg.ssl_context

        async def write(self, session: Any, ep: str, ki: int) -> str | None:
            result: str | None = await super().write(_WithSSL(session, self.ssl_context), ep, ki)
            return result

    return SecureAdapter


def measure(loadgen: Any, cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    cfg = loadgen.build_parser().parse_args(
        [
            *("--target", cluster.system, "--endpoints", ",".join(cluster.endpoints)),
            *("--mode", "write", "--concurrency", str(args.concurrency)),
            *("--duration", str(args.duration), "--warmup", str(args.warmup)),
            *("--label", f"{cluster.system}-{cluster.label}"),
        ]
    )
    cfg.endpoints = list(cluster.endpoints)
    cfg.server_pids = cluster.pids()
    if cluster.secure:
        target = f"{cluster.system}-secure"
        loadgen.ADAPTERS[target] = secure_adapter(loadgen.ADAPTERS[cluster.system])
        cfg.target, cfg.authorization = target, cluster.authorization
        cfg.ssl_context = cluster.context
    result: dict[str, Any] = loadgen.run(cfg)  # procs=1: the adapter runs in this process
    result.update(system=cluster.system, security=cluster.label)
    return result


def table(rows: list[dict[str, Any]], systems: list[str]) -> str:
    """One line per system: medians, p50s, per-round ratios and their median."""
    lines = [
        "| system | open ops/s | TLS+auth ops/s | p50 open / TLS+auth ms "
        "| per-round ratio TLS+auth/open | median ratio |",
        "|---|---|---|---|---|---|",
    ]
    for system in systems:
        open_ = [r for r in rows if r["system"] == system and r["security"] == "open"]
        secure = [r for r in rows if r["system"] == system and r["security"] == "secure"]
        ratios = [s["ops_per_s"] / o["ops_per_s"] for o, s in zip(open_, secure, strict=True)]

        def med(part: list[dict[str, Any]], pick: Any) -> float:
            return float(statistics.median(pick(r) for r in part))

        def ops(r: dict[str, Any]) -> float:
            return float(r["ops_per_s"])

        def p50(r: dict[str, Any]) -> float:
            return float(r["lat_ms"]["p50"])

        lines.append(
            f"| {system} | {med(open_, ops):.0f} | {med(secure, ops):.0f} "
            f"| {med(open_, p50):.0f} / {med(secure, p50):.0f} "
            f"| {', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--systems", default="kv,etcd", help="comma-separated: kv, etcd")
    parser.add_argument("--loadgen-dir", type=Path, default=ROOT.parent / "shared" / "bench")
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    args = parser.parse_args()
    systems = args.systems.split(",")
    unknown = sorted(set(systems) - set(CLUSTERS))
    if unknown or not systems:
        parser.error(f"--systems: unknown {', '.join(unknown)} (use {', '.join(CLUSTERS)})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the nodes are stopped too
    sys.path.insert(0, str(args.loadgen_dir))
    import loadgen  # the neutral generator, unchanged

    rows: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for system in systems:
            for secure in (False, True):
                cluster = CLUSTERS[system](secure)
                try:
                    cluster.start()
                    result = measure(loadgen, cluster, args)
                finally:
                    cluster.stop()
                result["round"] = round_no
                rows.append(result)
                print(
                    f"round {round_no} {result['label']:11} {result['ops_per_s']:8.1f} ops/s  "
                    f"p50 {result['lat_ms']['p50']} ms  p99 {result['lat_ms']['p99']} ms  "
                    f"cpu: servers {result['server_cpu_pct']}% generator "
                    f"{result['gen_cpu_pct']}% others {result['other_cpu_pct']}%  "
                    f"errors {result['errors']}",
                    flush=True,
                )
                if args.out is not None:
                    with args.out.open("a") as out:
                        out.write(json.dumps(result) + "\n")
    print(table(rows, systems))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KV_LOG_LEVEL", "WARNING")
    sys.exit(main())
