"""Real `kv serve` processes on loopback ports, for the integration tests.

Every process is started with its own log file, tracked by PID, and stopped by PID
at teardown (SIGCONT first if it was paused, then SIGTERM, then SIGKILL after a
deadline), so a failing test never leaves nodes behind. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kvstore.chaos.ports import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll `condition` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One HTTP request with the path sent exactly as given (no re-quoting); an https
    URL is verified with `context`."""
    if url.startswith("https://"):
        host, port = url.removeprefix("https://").rsplit(":", 1)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, int(port), timeout=timeout, context=context
        )
    else:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Reply(resp.status, {k: v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class PortTaken(RuntimeError):
    """A node of a starting cluster could not listen on the port drawn for it."""


@dataclass
class NodeProcess:
    node_id: str
    client_url: str
    peer_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    """A cluster.toml in a temp dir and one `kv serve` process per node."""

    root: Path
    size: int = 3
    tuning: Mapping[str, int] = field(default_factory=dict)
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    joiners: set[str] = field(default_factory=set)
    """Nodes written with `join = true` (added with `kv member add`, not founders)."""
    gone: set[str] = field(default_factory=set)
    """Nodes removed from the cluster: not expected to answer any more."""
    scheme: str = "http"
    """"https" for a TLS cluster (then `extra_toml` holds its [tls] table)."""
    extra_toml: str = ""
    """Appended to cluster.toml: security tables ([peer_auth], [tls])."""
    context: ssl.SSLContext | None = None
    """Verifies a TLS cluster's certificates in `http` and `status`."""
    name: str = "test"
    headers: dict[str, str] = field(default_factory=dict)
    """Sent with every request of `http` (and so `status`, `leader`): a token, once a
    test enables authentication."""

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "cluster.toml"
        for i in range(self.size):
            self._new_node(f"n{i + 1}")
        self.write_config()

    def _ports_in_use(self) -> set[int]:
        urls = [u for n in self.nodes.values() for u in (n.client_url, n.peer_url)]
        return {int(url.rsplit(":", 1)[1]) for url in urls}

    def _new_node(self, node_id: str) -> NodeProcess:
        # Each call binds and releases its ports, so the OS may hand an earlier node's
        # port out again: draw until none is one of this cluster's.
        taken = self._ports_in_use()
        client_port, peer_port = free_ports(2)
        while {client_port, peer_port} & taken:
            client_port, peer_port = free_ports(2)
        node = NodeProcess(
            node_id,
            f"{self.scheme}://127.0.0.1:{client_port}",
            f"{self.scheme}://127.0.0.1:{peer_port}",
            self.root / f"{node_id}.log",
        )
        self.nodes[node_id] = node
        return node

    def write_config(self) -> None:
        lines = ["[cluster]", f'name = "{self.name}"', 'data_dir = "./data"', ""]
        for node in self.nodes.values():
            lines += [
                "[[nodes]]",
                f'id = "{node.node_id}"',
                f'client_url = "{node.client_url}"',
                f'peer_url = "{node.peer_url}"',
            ]
            lines += ["join = true", ""] if node.node_id in self.joiners else [""]
        if self.tuning:
            lines.append("[tuning]")
            lines += [f"{key} = {value}" for key, value in self.tuning.items()]
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_toml)

    def add_node(self, node_id: str, mark_join: bool = True) -> NodeProcess:
        """A new node in cluster.toml (with `join = true` unless told otherwise), not started."""
        node = self._new_node(node_id)
        if mark_join:
            self.joiners.add(node_id)
        self.write_config()
        return node

    # -------------------------------------------------------------- processes

    def start(self, node_id: str | None = None, join: bool = False, initial: bool = True) -> None:
        """`initial`: founders get --initial-cluster (found without asking their peers);
        False starts them with a plain `kv serve`, as the contract and benchmarks do."""
        for node in [self.nodes[node_id]] if node_id else list(self.nodes.values()):
            if node.running or (node_id is None and node.node_id in self.gone):
                continue
            log = node.log_path.open("ab")
            node.proc = subprocess.Popen(
                serve_command(self.config_path, node.node_id)
                + (["--join"] if join else [])
                + (
                    []
                    if join or not initial or node.node_id in self.joiners
                    else ["--initial-cluster"]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=self.root,
            )
            log.close()
            node.paused = False

    def kill9(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(timeout=10)
        node.paused = False

    def pause(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        node.paused = True

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def stop(self, node_id: str, deadline: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited by the deadline; returns the exit code."""
        node = self.nodes[node_id]
        proc = node.proc
        if proc is None:
            return None
        if proc.poll() is None:
            if node.paused:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        node.paused = False
        return proc.returncode

    def stop_all(self) -> None:
        for node_id in self.nodes:
            self.stop(node_id)

    def wait_exit(self, node_id: str, timeout: float = 15.0) -> int:
        """Until the node's process exits by itself; returns its exit code."""
        proc = self.nodes[node_id].proc
        assert proc is not None
        wait_until(lambda: proc.poll() is not None, timeout, f"{node_id} to exit")
        return int(proc.returncode)

    def kv(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """Run a `kv` command (python -m cli.main) against this cluster's endpoints."""
        return subprocess.run(
            [sys.executable, "-m", "kvstore.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            cwd=self.root,
        )

    def endpoints(self, among: list[str] | None = None) -> str:
        ids = among or [n for n in self.nodes if n not in self.gone]
        return ",".join(self.nodes[n].client_url for n in ids)

    def logs(self) -> str:
        parts = []
        for node in self.nodes.values():
            if node.log_path.exists():
                text = node.log_path.read_text(errors="replace")[-4000:]
                parts.append(f"----- {node.node_id} -----\n{text}")
        return "\n".join(parts)

    # -------------------------------------------------------------- HTTP

    def url(self, node_id: str) -> str:
        return self.nodes[node_id].client_url

    def http(self, node_id: str, method: str, path: str, **kwargs: Any) -> Reply:
        if self.headers:
            kwargs["headers"] = {**self.headers, **(kwargs.get("headers") or {})}
        return request(self.url(node_id), method, path, context=self.context, **kwargs)

    def put(self, node_id: str, key: str, value: bytes, **kwargs: Any) -> Reply:
        return self.http(node_id, "PUT", f"/v1/kv/{key}", body=value, **kwargs)

    def get(self, node_id: str, key: str, stale: bool = False, **kwargs: Any) -> Reply:
        query = "?consistency=stale" if stale else ""
        return self.http(node_id, "GET", f"/v1/kv/{key}{query}", **kwargs)

    def status(self, node_id: str, timeout: float = 1.0) -> dict[str, Any]:
        return self.http(node_id, "GET", "/v1/status", timeout=timeout).json()

    def leader(self, among: list[str] | None = None) -> str | None:
        """The leader if a running node says it leads and the others that answer agree."""
        ids = among or [
            n for n, p in self.nodes.items() if p.running and not p.paused and n not in self.gone
        ]
        claims, views = [], []
        for node_id in ids:
            try:
                status = self.status(node_id, timeout=0.5)
            except (OSError, http.client.HTTPException, ValueError):
                continue
            views.append(status.get("leader"))
            if status.get("role") == "leader":
                claims.append((status["term"], node_id))
        if not claims:
            return None
        _, leader = max(claims)
        if sum(1 for view in views if view == leader) * 2 <= len(self.nodes) - len(self.gone):
            return None  # not yet followed by a majority
        return leader

    def wait_leader(self, timeout: float = 15.0, among: list[str] | None = None) -> str:
        return wait_until(lambda: self.leader(among), timeout, "a leader to be elected")

    def wait_healthy(self, timeout: float = 15.0) -> str:
        """Until a leader is elected and every started node answers. PortTaken when a node
        could not listen: its port, free when drawn, was bound by another process since
        (a parallel test's node or an outgoing connection); the caller may retry."""
        leader = self.wait_leader(timeout)
        for node_id, node in self.nodes.items():
            if node.proc is not None and node_id not in self.gone:
                wait_until(
                    lambda n=node_id, p=node.proc: p.poll() is not None or self.status(n),
                    timeout,
                    f"{node_id} to answer",
                )
                if node.proc.poll() is not None and "cannot listen on" in node.log_path.read_text(
                    errors="replace"
                ):
                    raise PortTaken(f"{node_id} could not listen:\n{self.logs()}")
        return leader


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("KV_LOG_LEVEL", "INFO")
    return env


def serve_command(config_path: Path, node_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kvstore.cli.main",
        "serve",
        "--config",
        str(config_path),
        "--node",
        node_id,
    ]


def run_serve(
    config_path: Path, node_id: str, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run `kv serve` expecting it to exit by itself (a config error)."""
    return subprocess.run(
        serve_command(config_path, node_id),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=config_path.parent,
    )
