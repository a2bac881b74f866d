"""A local cluster of real `kv serve` processes whose node-to-node traffic crosses proxies.

Each node gets a config file of its own: its own URLs are the real listening addresses,
every other node's URLs point at the proxies of the link (this node -> other). All the
files name the same nodes and the same data_dir, so each is a valid cluster.toml by
itself and the nodes cannot tell they are being lied to. Clients talk to the real
client URLs, so the nemesis cuts the cluster apart, not the clients from it.

Processes are tracked by PID and always stopped by PID (SIGCONT if paused, SIGTERM,
SIGKILL after a deadline); every wait has a deadline. Everything binds 127.0.0.1.

With `tls=True` every URL is https: `start` makes a CA and the node certificates with
the code behind `kv certs init` (kvstore.certs) from the nodes' own config file, every
file gets the [tls] table that command prints, and `client_tls` is what the run's
clients must trust. The proxies forward bytes, so TLS passes through them unchanged
(a certificate names 127.0.0.1, the host of every real and proxied URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from kvstore.chaos.ports import HOST, free_ports, port_free
from kvstore.chaos.proxy import LinkProxy, ProxyNet
from kvstore.client.tls import ClientTLS
from kvstore.config import ClusterConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The directory holding the kvstore package, put first on the nodes' PYTHONPATH so that
they run the code beside this file, not whatever copy the venv has installed."""
CHAOS_TUNING: dict[str, int] = {"request_timeout_ms": 1000}
"""A short server-side timeout keeps unknown outcomes short-lived in the history."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Where a node really listens."""

    id: str
    client_port: int
    peer_port: int


def fresh_layout(size: int = 3) -> list[NodeSpec]:
    ports = free_ports(2 * size)
    return [NodeSpec(f"n{i + 1}", ports[2 * i], ports[2 * i + 1]) for i in range(size)]


def layout_from_config(config: ClusterConfig) -> tuple[list[NodeSpec], dict[str, int]]:
    """The file's node ids, ports and tuning; hosts become 127.0.0.1 and the data dir is
    never the file's, so a chaos run cannot touch a real cluster's data."""
    nodes = [NodeSpec(n.id, n.client_port, n.peer_port) for n in config.nodes]
    busy = [p for n in nodes for p in {n.client_port, n.peer_port} if not port_free(p)]
    if busy:
        raise RuntimeError(f"ports already in use (is the cluster running?): {busy}")
    return nodes, asdict(config.tuning)


class LocalCluster:
    """Start, fault and stop `kv serve` processes; use as `async with LocalCluster(...)`."""

    def __init__(
        self,
        root: Path,
        nodes: Sequence[NodeSpec] | None = None,
        *,
        tuning: Mapping[str, int] | None = None,
        extra_env: Mapping[str, str] | None = None,
        proxies: bool = True,
        tls: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        self.nodes = {n.id: n for n in (nodes or fresh_layout())}
        self.ids = list(self.nodes)
        self.tuning = dict(CHAOS_TUNING if tuning is None else tuning)
        self.extra_env = dict(extra_env or {})
        self.net = ProxyNet()
        self.use_proxies = proxies
        self.scheme = "https" if tls else "http"
        self.certs_dir = self.root / "certs"
        self.client_tls = ClientTLS(ca_file=str(self.certs_dir / "ca.crt")) if tls else None
        """What every client of the run verifies the nodes with (None: plain http)."""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -------------------------------------------------------------- set-up

    async def start(self) -> None:
        """Proxies first (their ports go into the files), then every node."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        if self.use_proxies:
            for src in self.ids:
                for dst in self.ids:
                    if src != dst:
                        spec = self.nodes[dst]
                        self.net.add(LinkProxy(src, dst, (HOST, spec.peer_port)))
                        self.net.add(LinkProxy(src, dst, (HOST, spec.client_port)))
            ports = {p for n in self.nodes.values() for p in (n.client_port, n.peer_port)}
            await self.net.start(avoid=ports)
        for node_id in self.ids:
            self.config_path(node_id).write_text(self.config_text(node_id))
        if self.client_tls is not None:
            self._make_certs()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context()),
            timeout=aiohttp.ClientTimeout(total=1.0),
        )
        for node_id in self.ids:
            self.start_node(node_id)

    def _make_certs(self) -> None:
        """`kv certs init` for this cluster: the files name the same nodes and hosts."""
        from kvstore.certs import init_certs, plan_from_config  # needs the [server] extra

        init_certs(plan_from_config(self.config_path(self.ids[0])), self.certs_dir)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """For an aiohttp connector: the run's CA, or aiohttp's default (True)."""
        return True if self.client_tls is None else self.client_tls.context()

    def config_path(self, node_id: str) -> Path:
        return self.root / f"cluster-{node_id}.toml"

    def config_text(self, node_id: str) -> str:
        """The cluster.toml node `node_id` runs with (see the module docstring)."""
        data_dir = str(self.root / "data").replace("\\", "\\\\").replace('"', '\\"')
        lines = ["[cluster]", 'name = "chaos"', f'data_dir = "{data_dir}"', ""]
        for other in self.ids:
            spec = self.nodes[other]
            client_port, peer_port = spec.client_port, spec.peer_port
            if other != node_id and self.use_proxies:
                peer_proxy, client_proxy = self.net.links[(node_id, other)]
                client_port, peer_port = client_proxy.port, peer_proxy.port
            client_url = f"{self.scheme}://{HOST}:{client_port}"
            peer_url = f"{self.scheme}://{HOST}:{peer_port}"
            lines += [
                "[[nodes]]",
                f'id = "{other}"',
                f'client_url = "{client_url}"',
                f'peer_url = "{peer_url}"',
                "",
            ]
        if self.tuning:
            lines.append("[tuning]")
            lines += [f"{key} = {value}" for key, value in self.tuning.items()]
        if self.client_tls is not None:
            from kvstore.certs import tls_snippet

            lines += ["", tls_snippet(self.certs_dir, "client")]
        return "\n".join(lines) + "\n"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
        env.setdefault("KV_LOG_LEVEL", "WARNING")
        env.update(self.extra_env)
        return env

    # -------------------------------------------------------------- processes

    def client_url(self, node_id: str) -> str:
        return f"{self.scheme}://{HOST}:{self.nodes[node_id].client_port}"

    def running(self, node_id: str) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def start_node(self, node_id: str) -> None:
        """Start (or restart after a kill) one node; a running node is left alone."""
        if self.running(node_id):
            return
        cmd = [sys.executable, "-m", "kvstore.cli.main", "serve"]
        cmd += ["--config", str(self.config_path(node_id)), "--node", node_id]
        cmd.append("--initial-cluster")  # its own fresh cluster; ignored once there is data
        with (self.root / "logs" / f"{node_id}.log").open("ab") as log:
            self.procs[node_id] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.root,
                start_new_session=True,  # Ctrl-C reaches the harness, which stops nodes itself
            )
        self.paused.discard(node_id)

    def _signal(self, node_id: str, sig: signal.Signals) -> None:
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    async def kill9(self, node_id: str, timeout: float = 5.0) -> None:
        self._signal(node_id, signal.SIGKILL)
        await self._wait_exit(node_id, timeout)
        self.paused.discard(node_id)

    def pause(self, node_id: str) -> None:
        self._signal(node_id, signal.SIGSTOP)
        self.paused.add(node_id)

    def resume(self, node_id: str) -> None:
        self._signal(node_id, signal.SIGCONT)
        self.paused.discard(node_id)

    async def stop_node(self, node_id: str, deadline: float = 5.0) -> int | None:
        """SIGCONT (a stopped process cannot handle SIGTERM), SIGTERM, SIGKILL at the deadline."""
        if node_id in self.paused:
            self.resume(node_id)
        self._signal(node_id, signal.SIGTERM)
        if not await self._wait_exit(node_id, deadline):
            self._signal(node_id, signal.SIGKILL)
            await self._wait_exit(node_id, 5.0)
        proc = self.procs.get(node_id)
        return None if proc is None else proc.poll()

    async def _wait_exit(self, node_id: str, timeout: float) -> bool:
        proc = self.procs.get(node_id)
        if proc is None:
            return True
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        """Stop every node by PID (in parallel), then the proxies and the HTTP session."""
        await asyncio.gather(*(self.stop_node(n) for n in self.ids if n in self.procs))
        await self.net.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def log_tail(self, node_id: str, chars: int = 3000) -> str:
        path = self.root / "logs" / f"{node_id}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -------------------------------------------------------------- HTTP

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the cluster is not started"
        return self._session

    async def status(self, node_id: str, timeout: float = 0.5) -> dict[str, Any] | None:
        if not self.running(node_id) or node_id in self.paused:
            return None
        url = self.client_url(node_id) + "/v1/status"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                data = await r.json() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def statuses(self) -> dict[str, dict[str, Any] | None]:
        found = await asyncio.gather(*(self.status(n) for n in self.ids))
        return dict(zip(self.ids, found, strict=True))

    async def leader(self) -> str | None:
        """The node that leads in the highest term, once a majority of nodes follow it."""
        statuses = await self.statuses()
        claims = [
            (int(s.get("term", 0)), n)
            for n, s in statuses.items()
            if s is not None and s.get("role") == "leader"
        ]
        if not claims:
            return None
        leader = max(claims)[1]
        followers = sum(1 for s in statuses.values() if s is not None and s.get("leader") == leader)
        return leader if 2 * followers > len(self.ids) else None

    async def wait_leader(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while (leader := await self.leader()) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no leader elected within {timeout:.0f} s")
            await asyncio.sleep(0.05)
        return leader

    async def wait_recovered(self, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Until every node answers, follows one leader and has applied everything committed.

        Returns the statuses; the error names what was still missing at the deadline.
        """
        deadline = time.monotonic() + timeout
        problem = "no status yet"
        while time.monotonic() < deadline:
            statuses = await self.statuses()
            problem = _recovery_problem(statuses)
            if problem is None:
                return {n: s for n, s in statuses.items() if s is not None}
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the cluster did not recover within {timeout:.0f} s: {problem}")

    async def stale_get(self, node_id: str, key: str) -> tuple[bytes, int] | None:
        """(value, version) as the node holds it locally, None when missing there."""
        url = f"{self.client_url(node_id)}/v1/kv/{quote(key, safe='')}?consistency=stale"
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise RuntimeError(f"stale read of {key!r} on {node_id}: HTTP {resp.status}")
            return await resp.read(), int(resp.headers["X-KV-Version"])


def _recovery_problem(statuses: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    silent = [n for n, s in statuses.items() if s is None]
    if silent:
        return f"no answer from {', '.join(silent)}"
    views = {(s.get("leader"), s.get("term")) for s in statuses.values() if s is not None}
    if len(views) != 1 or next(iter(views))[0] is None:
        return f"nodes disagree on the leader: {sorted(map(str, views))}"
    applied = {n: (s["applied_index"], s["commit_index"]) for n, s in statuses.items() if s}
    if len({a for a, _ in applied.values()}) != 1 or any(a != c for a, c in applied.values()):
        return f"applied/commit index differ: {applied}"
    return None
