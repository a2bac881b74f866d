"""What TLS + authentication cost: write throughput at concurrency 64 on the same
three-node cluster with everything open and with `kv certs init` certificates (https on
both ports) plus users and tokens on, in interleaved rounds of one run.

The load is the neutral benchmark's own (shared/bench/loadgen.py, imported: its
closed loop, its window, its counting, its KVAdapter); the secure rounds only add what
a real client of such a cluster sends, an `ssl` context that verifies the nodes against
the cluster CA and an `Authorization: Bearer` token of a user with readwrite on
`bench/` (asked for before the round; its lifetime, 300 s, outlasts a round). Each
round starts a fresh cluster the way shared/bench/kv_cluster.sh does (one `kv serve
--config F --node ID` per node, fresh data) and stops it by PID; its ports come from
the OS, not kv_cluster.sh's fixed ones, so that a cluster someone else runs there is
never measured (or written to) by mistake.

    .venv/bin/python bench/secure_cost.py --rounds 3 --duration 8
    (--loadgen-dir defaults to ../shared/bench beside the project root)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KV = [sys.executable, "-m", "kvstore.cli.main"]
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password"


def free_ports(count: int) -> list[int]:
    """Ports the OS says are free now (all bound at once, so they differ)."""
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


class Cluster:
    """Three loopback nodes; `secure`: https on both ports, auth on."""

    def __init__(self, secure: bool) -> None:
        self.secure = secure
        self.root = Path(tempfile.mkdtemp(prefix="kv-secure-cost-"))
        ports = free_ports(6)
        self.client_ports, self.peer_ports = ports[:3], ports[3:]
        scheme = "https" if secure else "http"
        self.endpoints = [f"{scheme}://127.0.0.1:{p}" for p in self.client_ports]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.context: ssl.SSLContext | None = None
        self.token: str | None = None

    def config(self, tls_table: str = "") -> Path:
        lines = ["[cluster]", 'name = "bench"', f'data_dir = "{self.root}/data"', ""]
        scheme = "https" if self.secure else "http"
        for i, (client, peer) in enumerate(zip(self.client_ports, self.peer_ports, strict=True)):
            lines += [
                "[[nodes]]",
                f'id = "n{i + 1}"',
                f'client_url = "{scheme}://127.0.0.1:{client}"',
                f'peer_url = "{scheme}://127.0.0.1:{peer}"',
                "",
            ]
        path = self.root / "cluster.toml"
        path.write_text("\n".join(lines) + tls_table)
        return path

    def kv(self, *args: str) -> str:
        extra = ["--cacert", str(self.root / "certs" / "ca.crt")] if self.secure else []
        done = subprocess.run(
            [*KV, *args, "--endpoints", ",".join(self.endpoints), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kv {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        path = self.config()
        if self.secure:
            made = subprocess.run(
                [*KV, "certs", "init", "--config", str(path), "--dir", str(self.root / "certs")],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            table = made.stdout[made.stdout.index("[tls]") :]
            path = self.config("\n" + table)
            self.context = ssl.create_default_context(cafile=str(self.root / "certs" / "ca.crt"))
        for i in range(3):
            log = (self.root / f"n{i + 1}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [*KV, "serve", "--config", str(path), "--node", f"n{i + 1}"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=ROOT,
                    start_new_session=True,
                )
            )
        self.wait_leader()
        if self.secure:
            self.enable_auth()

    def wait_leader(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(proc.poll() is not None for proc in self.procs):
                raise RuntimeError(f"a node exited; logs in {self.root}")
            for url in self.endpoints:
                try:
                    with urllib.request.urlopen(
                        url + "/v1/status", timeout=1, context=self.context
                    ) as resp:
                        if json.loads(resp.read()).get("role") == "leader":
                            return
                except OSError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"no leader in 30 s; logs in {self.root}")

    def enable_auth(self) -> None:
        """As the README says: a root user, a role on bench/, a user holding it."""
        root = ["--user", "root", "--password", "root-password"]
        self.kv("user", "add", "root", "--new-password", "root-password")
        self.kv("user", "grant", "root", "root")
        self.kv("auth", "enable")
        self.kv("role", "add", "bench", *root)
        self.kv("role", "grant", "bench", "readwrite", "--prefix", "bench/", *root)
        self.kv("user", "add", BENCH_USER, "--new-password", BENCH_PASSWORD, *root)
        self.kv("user", "grant", BENCH_USER, "bench", *root)
        self.token = self.kv("auth", "token", "--user", BENCH_USER, "--password", BENCH_PASSWORD)
        self.token = self.token.strip()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def secure_adapter(loadgen: Any) -> type:
    """loadgen's KVAdapter, sending what a client of a TLS + auth cluster sends."""

    class SecureKVAdapter(loadgen.KVAdapter):  # type: ignore[misc, name-defined]
        def __init__(self, cfg: argparse.Namespace) -> None:
            super().__init__(cfg)
            self.headers = {**self.headers, "Authorization": f"Bearer {cfg.token}"}
            self.ssl = cfg.ssl_context

        async def write(self, session: Any, ep: str, ki: int) -> str | None:
            async with session.put(
                ep + self.paths[ki], data=self.value, headers=self.headers, ssl=self.ssl
            ) as r:
                await r.read()
                return None if r.status == 200 else f"http_{r.status}"

    return SecureKVAdapter


def measure(loadgen: Any, cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    cfg = loadgen.build_parser().parse_args(
        [
            "--target",
            "kv",
            "--endpoints",
            ",".join(cluster.endpoints),
            "--mode",
            "write",
            "--concurrency",
            str(args.concurrency),
            "--duration",
            str(args.duration),
            "--warmup",
            str(args.warmup),
            "--label",
            "secure" if cluster.secure else "plain",
        ]
    )
    cfg.endpoints = list(cluster.endpoints)
    cfg.server_pids = cluster.pids()
    if cluster.secure:
        loadgen.ADAPTERS["kv-secure"] = secure_adapter(loadgen)
        cfg.target, cfg.token, cfg.ssl_context = "kv-secure", cluster.token, cluster.context
    result: dict[str, Any] = loadgen.run(cfg)  # procs=1: the adapter runs in this process
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--loadgen-dir", type=Path, default=ROOT.parent / "shared" / "bench")
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the nodes are stopped too
    sys.path.insert(0, str(args.loadgen_dir))
    import loadgen  # the neutral generator, unchanged

    rows: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for secure in (False, True):
            cluster = Cluster(secure)
            try:
                cluster.start()
                result = measure(loadgen, cluster, args)
            finally:
                cluster.stop()
            result["round"] = round_no
            rows.append(result)
            print(
                f"round {round_no} {result['label']:6} {result['ops_per_s']:8.1f} ops/s  "
                f"p50 {result['lat_ms']['p50']} ms  p99 {result['lat_ms']['p99']} ms  "
                f"cpu: servers {result['server_cpu_pct']}% generator {result['gen_cpu_pct']}% "
                f"others {result['other_cpu_pct']}%  errors {result['errors']}",
                flush=True,
            )
            if args.out is not None:
                with args.out.open("a") as out:
                    out.write(json.dumps(result) + "\n")
    plain = [r["ops_per_s"] for r in rows if r["label"] == "plain"]
    secure = [r["ops_per_s"] for r in rows if r["label"] == "secure"]
    ratios = [s / p for p, s in zip(plain, secure, strict=True) if p]
    print(
        f"median ops/s: plain {statistics.median(plain):.1f}, TLS+auth "
        f"{statistics.median(secure):.1f}; per-round ratios (TLS+auth / plain) "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; median ratio {statistics.median(ratios):.2f}"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KV_LOG_LEVEL", "WARNING")
    sys.exit(main())
