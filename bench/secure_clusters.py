"""The clusters bench/secure_cost.py measures: three loopback pyraftkv nodes or three
etcd 3.4 members, each either open (http, no auth) or secure (TLS on client and peer
ports with certificates from kvstore.certs, plus users and tokens on).

Every cluster is fresh (new temporary directory, ports chosen by the OS, so that a
cluster someone else runs on the neutral benchmark's fixed ports is never measured or
written to), every process is stopped by its PID, and a secure cluster hands the
generator what a real client of it sends: an `ssl` context verifying the nodes against
the cluster CA and an `Authorization` header value for a user who may only read and
write `bench/`.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KV = [sys.executable, "-m", "kvstore.cli.main"]
ETCD, ETCDCTL = "/usr/bin/etcd", "/usr/bin/etcdctl"
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password"
ROOT_PASSWORD = "root-password"
NAMES = ("n1", "n2", "n3")


def free_ports(count: int) -> list[int]:
    """Ports the OS says are free now (all bound at once, so they differ)."""
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def run(argv: list[str], what: str) -> str:
    """Run a setup command; its stderr becomes the error if it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{what}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class Cluster:
    """What both systems share: a temporary root, three processes, stop by PID.

    Subclasses set `system` (the loadgen target name) and fill `endpoints`,
    `context` and `authorization` in start()."""

    system = ""

    def __init__(self, secure: bool) -> None:
        self.secure = secure
        self.root = Path(tempfile.mkdtemp(prefix=f"secure-cost-{self.system}-"))
        ports = free_ports(6)
        self.client_ports, self.peer_ports = ports[:3], ports[3:]
        self.scheme = "https" if secure else "http"
        self.endpoints = [f"{self.scheme}://127.0.0.1:{p}" for p in self.client_ports]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.context: ssl.SSLContext | None = None
        self.authorization: str | None = None  # the Authorization header's value

    @property
    def label(self) -> str:
        return "secure" if self.secure else "open"

    @property
    def ca_file(self) -> Path:
        return self.root / "certs" / "ca.crt"

    def spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        )

    def check_alive(self) -> None:
        if any(proc.poll() is not None for proc in self.procs):
            raise RuntimeError(f"a {self.system} process exited; logs in {self.root}")

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


class KVCluster(Cluster):
    """pyraftkv, started the way shared/bench/kv_cluster.sh does (one `kv serve
    --config F --node ID` per node, fresh data); secure: `kv certs init` certificates
    on both ports and auth on, as the README's Security section describes."""

    system = "kv"

    def config(self, tls_table: str = "") -> Path:
        lines = ["[cluster]", 'name = "bench"', f'data_dir = "{self.root}/data"', ""]
        for i, (client, peer) in enumerate(zip(self.client_ports, self.peer_ports, strict=True)):
            lines += [
                "[[nodes]]",
                f'id = "n{i + 1}"',
                f'client_url = "{self.scheme}://127.0.0.1:{client}"',
                f'peer_url = "{self.scheme}://127.0.0.1:{peer}"',
                "",
            ]
        path = self.root / "cluster.toml"
        path.write_text("\n".join(lines) + tls_table)
        return path

    def kv(self, *args: str) -> str:
        extra = ["--cacert", str(self.ca_file)] if self.secure else []
        argv = [*KV, *args, "--endpoints", ",".join(self.endpoints), *extra]
        return run(argv, f"kv {' '.join(args)}")

    def start(self) -> None:
        path = self.config()
        if self.secure:
            made = run(
                [*KV, "certs", "init", "--config", str(path), "--dir", str(self.root / "certs")],
                "kv certs init",
            )
            path = self.config("\n" + made[made.index("[tls]") :])
            self.context = ssl.create_default_context(cafile=str(self.ca_file))
        for name in NAMES:
            self.spawn(name, [*KV, "serve", "--config", str(path), "--node", name])
        self.wait_leader()
        if self.secure:
            self.enable_auth()

    def wait_leader(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.check_alive()
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
        root = ["--user", "root", "--password", ROOT_PASSWORD]
        self.kv("user", "add", "root", "--new-password", ROOT_PASSWORD)
        self.kv("user", "grant", "root", "root")
        self.kv("auth", "enable")
        self.kv("role", "add", "bench", *root)
        self.kv("role", "grant", "bench", "readwrite", "--prefix", "bench/", *root)
        self.kv("user", "add", BENCH_USER, "--new-password", BENCH_PASSWORD, *root)
        self.kv("user", "grant", BENCH_USER, "bench", *root)
        token = self.kv("auth", "token", "--user", BENCH_USER, "--password", BENCH_PASSWORD)
        self.authorization = f"Bearer {token.strip()}"


class EtcdCluster(Cluster):
    """etcd 3.4 with shared/bench/etcd_cluster.sh's flags (default durability, zap
    logger to a file, one --initial-cluster-token); secure: server certificates on the
    client port (no client certificates asked for, like pyraftkv's secure rounds:
    --client-cert-auth=false and no --trusted-ca-file, which in etcd 3.4 makes the
    client port demand a client certificate whatever --client-cert-auth says), mutual
    TLS between peers, and etcd auth with a bench
    user whose role has readwrite on the prefix bench/. The generator authenticates
    through the gateway (POST /v3/auth/authenticate) and sends the token as the
    `Authorization` header, which etcd 3.4's gateway passes on as the gRPC token
    (start() checks that a put without it is refused and with it accepted)."""

    system = "etcd"

    def member_argv(self, i: int) -> list[str]:
        name = NAMES[i]
        client = f"{self.scheme}://127.0.0.1:{self.client_ports[i]}"
        peer = f"{self.scheme}://127.0.0.1:{self.peer_ports[i]}"
        initial = ",".join(
            f"{n}={self.scheme}://127.0.0.1:{p}"
            for n, p in zip(NAMES, self.peer_ports, strict=True)
        )
        argv = [
            ETCD,
            *("--name", name, "--data-dir", str(self.root / name)),
            *("--listen-client-urls", client, "--advertise-client-urls", client),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", initial, "--initial-cluster-token", "etcdbench"),
            *("--initial-cluster-state", "new"),
            *("--logger", "zap", "--log-outputs", str(self.root / f"{name}.zap.log")),
        ]
        if self.secure:
            certs, ca = self.root / "certs", str(self.ca_file)
            cert, key = str(certs / f"{name}.crt"), str(certs / f"{name}.key")
            argv += [
                *("--cert-file", cert, "--key-file", key, "--client-cert-auth=false"),
                *("--peer-cert-file", cert, "--peer-key-file", key),
                *("--peer-trusted-ca-file", ca, "--peer-client-cert-auth"),
            ]
        return argv

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        argv = [ETCDCTL, "--endpoints", ",".join(self.endpoints), "--command-timeout=5s"]
        if self.secure:
            argv += ["--cacert", str(self.ca_file)]
        if user is not None:
            argv += ["--user", user]
        return run([*argv, *args], f"etcdctl {' '.join(args)}")

    def start(self) -> None:
        if self.secure:
            from kvstore.certs import CertPlan, init_certs

            init_certs(
                CertPlan("etcdbench", dict.fromkeys(NAMES, ("127.0.0.1",))), self.root / "certs"
            )
            self.context = ssl.create_default_context(cafile=str(self.ca_file))
        for i, name in enumerate(NAMES):
            self.spawn(name, self.member_argv(i))
        self.wait_healthy()
        if self.secure:
            self.enable_auth()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.etcdctl("endpoint", "health")
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                time.sleep(0.3)
        raise RuntimeError(f"etcd not healthy in 30 s; logs in {self.root}")

    def post(
        self, url: str, body: dict[str, str], authorization: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST JSON to a member's gateway: (HTTP status, JSON reply or {})."""
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.context) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {}

    def enable_auth(self) -> None:
        root = f"root:{ROOT_PASSWORD}"
        self.etcdctl("user", "add", "root", f"--new-user-password={ROOT_PASSWORD}")
        self.etcdctl("user", "grant-role", "root", "root")
        self.etcdctl("auth", "enable")
        self.etcdctl("role", "add", "bench", user=root)
        self.etcdctl(
            "role", "grant-permission", "bench", "readwrite", "bench/", "--prefix", user=root
        )
        self.etcdctl("user", "add", BENCH_USER, f"--new-user-password={BENCH_PASSWORD}", user=root)
        self.etcdctl("user", "grant-role", BENCH_USER, "bench", user=root)
        login = {"name": BENCH_USER, "password": BENCH_PASSWORD}
        status, reply = self.post(self.endpoints[0] + "/v3/auth/authenticate", login)
        if status != 200:
            raise RuntimeError(f"etcd gateway refused the bench user's authenticate: {status}")
        self.authorization = str(reply["token"])
        probe = {"key": "YmVuY2gvcHJvYmU=", "value": "eA=="}  # bench/probe = x
        for endpoint in self.endpoints:  # the token is replicated: valid on every member
            refused, _ = self.post(endpoint + "/v3/kv/put", probe)
            accepted, _ = self.post(endpoint + "/v3/kv/put", probe, self.authorization)
            if refused == 200 or accepted != 200:
                raise RuntimeError(
                    f"etcd auth check on {endpoint}: without token {refused}, with {accepted}"
                )
