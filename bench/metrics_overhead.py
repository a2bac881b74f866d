"""What the metrics cost: write throughput with `/metrics` on and off, in one run.

Starts two three-node clusters side by side (`kv cluster up`), one with KV_METRICS=off
and one with metrics on, then loads them in turns with short `kv bench --workload write
--concurrency 64` bursts (the idle one only sends heartbeats), so drift on a shared
machine hits both alike. While the metrics cluster is loaded, every node's /metrics is
scraped every `--scrape-every` seconds, as Prometheus would (it usually waits 15 s).
Prints every burst and the median of the paired (neighbouring bursts) ratios.

    .venv/bin/python bench/metrics_overhead.py --bursts 6 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

KV = [sys.executable, "-m", "kvstore.cli.main"]


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def get(url: str, timeout: float = 1.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except OSError:
        return None


class BenchCluster:
    """A three-node `kv cluster up` in a temp dir, with or without metrics."""

    def __init__(self, metrics: bool) -> None:
        self.metrics = metrics
        root = Path(tempfile.mkdtemp(prefix="kv-overhead-"))
        ports = free_ports(6)
        self.urls = [f"http://127.0.0.1:{p}" for p in ports[:3]]
        lines = ["[cluster]", 'name = "bench"', 'data_dir = "./data"', ""]
        for i, (url, peer) in enumerate(zip(self.urls, ports[3:], strict=True)):
            lines += ["[[nodes]]", f'id = "n{i + 1}"', f'client_url = "{url}"']
            lines += [f'peer_url = "http://127.0.0.1:{peer}"', ""]
        (root / "cluster.toml").write_text("\n".join(lines))
        self.env = {**os.environ, "KV_METRICS": "on" if metrics else "off"}
        self.env["KV_LOG_LEVEL"] = "WARNING"
        self.proc = subprocess.Popen(
            [*KV, "cluster", "up", "--config", str(root / "cluster.toml")],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_leader(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            roles = [json.loads(b).get("role") for u in self.urls if (b := get(u + "/v1/status"))]
            if len(roles) == 3 and "leader" in roles:
                return
            time.sleep(0.1)
        raise TimeoutError("no leader")

    def cpu_seconds(self) -> float:
        """User + system CPU the nodes used so far (Linux /proc): unlike throughput,
        barely moved by what else the machine is doing."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ticks = 0
        for child in children:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def burst(self, duration: float, concurrency: int, every: float) -> dict[str, float]:
        stop = threading.Event()
        scrapes = [0]

        def scrape() -> None:
            while not stop.wait(every):
                scrapes[0] += sum(get(u + "/metrics") is not None for u in self.urls)

        scraper = threading.Thread(target=scrape, daemon=True)
        if self.metrics and every > 0:
            scraper.start()
        cpu_before = self.cpu_seconds()
        try:
            out = subprocess.run(
                [*KV, "bench", "--workload", "write", "--concurrency", str(concurrency),
                 "--duration", str(duration), "--json", "--no-progress",
                 "--endpoints", ",".join(self.urls)],
                env=self.env, capture_output=True, text=True, check=True,
            )  # fmt: skip
        finally:
            stop.set()
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return {
            "cpu_us_per_write": 1e6 * (self.cpu_seconds() - cpu_before) / max(1, result["ops"]),
            "ops_per_sec": result["ops_per_sec"],
            "p99_ms": result["latency_ms"]["p99"],
            "errors": sum(result["errors"].values()),
            "scrapes": scrapes[0],
        }

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=6, help="per cluster")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds; 0: none")
    args = parser.parse_args()
    clusters = {False: BenchCluster(False), True: BenchCluster(True)}
    runs: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    try:
        for c in clusters.values():
            c.wait_leader()
        for b in range(args.bursts):
            for metrics in (False, True) if b % 2 == 0 else (True, False):
                res = clusters[metrics].burst(args.duration, args.concurrency, args.scrape_every)
                runs[metrics].append(res["ops_per_sec"])
                cpu[metrics].append(res["cpu_us_per_write"])
                label = "on " if metrics else "off"
                print(
                    f"burst {b + 1} metrics {label}: {res['ops_per_sec']:7.0f} writes/s  "
                    f"p99 {res['p99_ms']:6.1f} ms  {res['cpu_us_per_write']:5.0f} CPU us/write  "
                    f"errors {res['errors']:.0f}  "
                    f"scrapes {res['scrapes']}",
                    flush=True,
                )
    finally:
        for c in clusters.values():
            c.stop()
    # Each burst is compared with its neighbour of the other cluster (same moment, same
    # machine load); the median of those ratios shrugs off a burst that hit a busy spell.
    speed = statistics.median(on / off for on, off in zip(runs[True], runs[False], strict=True))
    cost = statistics.median(on / off for on, off in zip(cpu[True], cpu[False], strict=True))
    print(
        f"median writes/s: off {statistics.median(runs[False]):.0f}, "
        f"on {statistics.median(runs[True]):.0f}; paired, metrics on vs off: throughput "
        f"{100 * (speed - 1):+.1f}%, node CPU per write {100 * (cost - 1):+.1f}%"
    )


if __name__ == "__main__":
    main()
