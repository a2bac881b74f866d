"""Process entry points: `kv serve` (one node) and `kv cluster up` (every node of a file).

Exit codes of `run_node`: 0 after a clean SIGTERM/SIGINT; 3 when the node learns it
was removed from the cluster (from its committed log, or from an authenticated member;
one line on stderr says so), so a supervisor can tell it from a crash and not restart
it; 2 for a bad config, a data dir or certificate the node cannot use, or an open
(no TLS, no secret) peer port beyond loopback (one line on stderr, no traceback); 1
when the node cannot listen or stops on a fatal error (a disk that fails a write, a
corrupt entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from kvstore.api.app import make_client_app
from kvstore.api.auth import TOKEN_TTL_KEY
from kvstore.api.connections import ConnectionGuard, one_line_protocol_errors
from kvstore.api.fast_lane import ENABLED as FAST_LANE_ENABLED
from kvstore.api.fast_lane import FastLane
from kvstore.api.forwarding import FORWARD_SSL_KEY
from kvstore.api.peer import DEFAULT_MAX_BODY, add_peer_routes, make_peer_app
from kvstore.api.peer_lane import PeerLane
from kvstore.config import (
    ClusterConfig,
    ConfigError,
    NodeConfig,
    load_cluster_config,
)
from kvstore.peers.auth import PeerAuth
from kvstore.peers.seen import SeenProbe
from kvstore.runtime.data_dir import check_data_dir
from kvstore.runtime.founding import REPLACE_DISK, FoundingRefused, check_founding, pristine
from kvstore.runtime.free_memory import tune_malloc
from kvstore.runtime.incarnation import IncarnationError, read_incarnation
from kvstore.runtime.leveldb_storage import CorruptLogError, LevelDBStorage
from kvstore.runtime.log_format import NodeContext, configure_logging
from kvstore.runtime.node import NodeRuntime
from kvstore.security import TlsContexts, check_exposure

log = logging.getLogger("kvstore.server")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_REMOVED = 0, 1, 2, 3
DRAIN_TIMEOUT_S = 1.0


class StartupError(Exception):
    """A problem found before serving, with its exit code and a one-line message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


_LOCK = re.compile(r"\block\b", re.IGNORECASE)
"""LevelDB's lock failure names the LOCK file; a word match, so that a corruption
message about a damaged "block" is not mistaken for it."""


def _open_storage(path: Path) -> LevelDBStorage:
    try:
        return LevelDBStorage(path)
    except CorruptLogError as exc:
        raise StartupError(EXIT_CONFIG, f"data directory unusable: {exc}; {REPLACE_DISK}") from None
    except Exception as exc:  # plyvel raises IOError for a held lock or a bad directory
        text = str(exc)
        if _LOCK.search(text):
            text = f"{path} is in use by another process ({text})"
        raise StartupError(EXIT_CONFIG, f"cannot open the log in {path}: {text}") from None


def load(config_path: str | Path, node_id: str) -> ClusterConfig:
    """Load and check everything a node needs before it binds a port."""
    try:
        cluster = load_cluster_config(config_path)
        node = cluster.node(node_id)
        check_data_dir(node.data_dir)
    except ConfigError as exc:
        raise StartupError(EXIT_CONFIG, str(exc)) from None
    return cluster


def run_node(
    config_path: str | Path,
    node_id: str,
    join: bool = False,
    log_format: str | None = None,
    initial_cluster: bool = False,
) -> int:
    """Run one node in the foreground until SIGTERM/SIGINT; returns the exit code.
    `join`: start empty and wait to be added to an existing cluster (`kv member add`).
    `log_format`: "text" or "json"; None takes `[cluster] log_format` from the file."""
    try:
        cluster = load(config_path, node_id)
    except StartupError as exc:
        print(f"kv serve: error: {exc}", file=sys.stderr)
        return exc.code
    context = configure_logging(
        node_id, log_format or cluster.log_format, os.environ.get("KV_LOG_LEVEL", "INFO").upper()
    )
    tune_malloc()  # before any other thread allocates
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve(cluster, node_id, join, context, initial_cluster))
    except StartupError as exc:
        print(f"kv serve: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_OK


GC_THRESHOLDS = (50_000, 20, 100)
"""Collect the youngest generation every 50,000 net allocations instead of 700 (and the
older ones less often): measured under load, the default spent 5-16% of a node's CPU
in the cyclic collector, most of it re-scanning long-lived objects. Memory is still
freed by reference counting at once; only cyclic garbage waits a little longer."""


def _pause_gc() -> None:
    """Before the state is restored: collect what the imports left (a small heap, so
    cheap), then pause the cyclic collector until `_tune_gc`. Restoring a million keys
    allocates millions of objects, and with the collector on, each full collection
    re-scanned every key restored so far (measured: a third of a restore's time)."""
    gc.collect()
    gc.disable()


def _tune_gc() -> None:
    """Once the node is up: move everything allocated while starting (modules, the
    state machine restored from a snapshot) out of the collector's sight, collect less
    often, and turn the collector back on. Only cycles made while it was paused and
    already garbage at this point are never collected (starting up makes few)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.enable()


def _loop_factory():  # type: ignore[no-untyped-def]
    """uvloop when installed: its faster I/O matters for latency; plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _check_founding(
    cluster: ClusterConfig,
    me: NodeConfig,
    storage: LevelDBStorage,
    tls: TlsContexts,
    asked: bool,
    created: bool,
) -> None:
    """A founder on pristine storage asks its peers before it founds (`asked`: not
    with --initial-cluster or --join; see kvstore.runtime.founding)."""
    if not asked or me.join or not pristine(storage):
        return
    auth = PeerAuth(cluster.cluster_id, me.id, cluster.peer_secret, tls=tls.peer_client is not None)
    probe = SeenProbe(auth, me.peer_url, tls.peer_client)
    try:
        mine = read_incarnation(me.data_dir)
        async with probe.session() as session:
            answered = await check_founding(
                cluster, me, mine, lambda peer, url, node: probe.ask(session, peer, url, node)
            )
    except (FoundingRefused, IncarnationError) as exc:
        storage.close()
        if created:  # leave no trace, so that a later start is not confused
            shutil.rmtree(me.data_dir / "raft", ignore_errors=True)
        raise StartupError(EXIT_CONFIG, str(exc)) from None
    log.info(
        "pristine storage; founding the cluster (peers that answered and know no earlier %s: %s)",
        me.id,
        ", ".join(answered) or "none",
    )


async def _serve(
    cluster: ClusterConfig,
    node_id: str,
    join: bool = False,
    context: NodeContext | None = None,
    initial: bool = False,
) -> int:
    me = cluster.node(node_id)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        check_exposure(cluster, me)
        tls = TlsContexts(cluster, me)
    except ConfigError as exc:
        raise StartupError(EXIT_CONFIG, str(exc)) from None
    created = not (me.data_dir / "raft").exists()
    _pause_gc()
    storage = _open_storage(me.data_dir / "raft")
    await _check_founding(cluster, me, storage, tls, not (join or initial), created)
    was_removed = False

    def removed(reason: str) -> None:
        nonlocal was_removed
        was_removed = True
        print(
            f"kv serve: node {node_id} was removed from the cluster ({reason}); exiting",
            file=sys.stderr,
            flush=True,
        )
        stop.set()

    try:
        runtime = NodeRuntime(
            cluster,
            node_id,
            storage,
            on_fatal=lambda exc: stop.set(),
            join=join,
            on_removed=removed,
            peer_ssl=tls.peer_client,
        )
    except Exception as exc:  # a log or snapshot the core or state machine rejects
        storage.close()
        raise StartupError(
            EXIT_CONFIG, f"cannot start from the data in {me.data_dir}: {exc}"
        ) from None
    if context is not None:
        context.follow(runtime.node)
    shared = (me.client_host, me.client_port) == (me.peer_host, me.peer_port)
    max_value = cluster.tuning.max_value_bytes
    app = make_client_app(runtime, DEFAULT_MAX_BODY if shared else max_value + 1)
    if shared:
        add_peer_routes(app, runtime)
    if tls.forward is not None:
        app[FORWARD_SSL_KEY] = tls.forward
    app[TOKEN_TTL_KEY] = cluster.token_ttl

    async def runtime_ctx(_app: web.Application) -> AsyncIterator[None]:
        await runtime.start()
        runtime.stats.gc_pauses.install()
        yield
        runtime.stats.gc_pauses.remove()
        await runtime.stop()

    async def drain(_app: web.Application) -> None:
        await runtime.drain(DRAIN_TIMEOUT_S)

    app.cleanup_ctx.append(runtime_ctx)
    app.on_shutdown.insert(0, drain)  # before a shared app's peer streams are ended
    runners = [_runner(app, cluster, shutdown_timeout=2.0)]
    targets = [(*me.client_bind, tls.client or tls.peer_server)]
    idle_s = cluster.tuning.idle_timeout_ms / 1000
    lane = FastLane(app, *runners[0], idle_s) if FAST_LANE_ENABLED else None
    protocols = [lane.protocol if lane is not None else None]
    if not shared:
        peer_app = make_peer_app(runtime)
        runners.append(_runner(peer_app, cluster, shutdown_timeout=1.0))
        targets.append((*me.peer_bind, tls.peer_server))
        peer_lane = PeerLane(peer_app, *runners[-1]) if FAST_LANE_ENABLED else None
        protocols.append(peer_lane.protocol if peer_lane is not None else None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[tuple[web.AppRunner, list[asyncio.Server]]] = []
    one_line_protocol_errors()
    try:
        for (runner, guard), (host, port, ssl_context), protocol in zip(
            runners, targets, protocols, strict=True
        ):
            await runner.setup()
            listeners: list[asyncio.Server] = []
            started.append((runner, listeners))
            try:
                listeners.append(await guard.listen(runner, host, port, ssl_context, protocol))
            except OSError as exc:
                raise StartupError(
                    EXIT_FAILURE, f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                ) from None
        _tune_gc()
        log.info(
            "serving clients on %s, peers on %s (listening on %s), data in %s",
            me.client_url,
            me.peer_url,
            ", ".join(f"{host}:{port}" for host, port, _ in targets),
            me.data_dir,
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        for runner, listeners in started:  # the client app first: it drains while peers talk
            for listener in listeners:
                listener.close()
            with contextlib.suppress(Exception):
                await runner.cleanup()
        if not started:
            await runtime.stop()
    if runtime.fatal_error is not None:
        return EXIT_FAILURE
    return EXIT_REMOVED if was_removed else EXIT_OK


def _runner(
    app: web.Application, cluster: ClusterConfig, shutdown_timeout: float
) -> tuple[web.AppRunner, ConnectionGuard]:
    """A runner for one port, with its connection deadlines (kvstore.api.connections)."""
    tuning = cluster.tuning
    guard = ConnectionGuard(tuning.receive_timeout_ms / 1000)
    guard.install(app)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=tuning.idle_timeout_ms / 1000,
    )
    return runner, guard


# ---------------------------------------------------------------------- kv cluster up


def _status(
    url: str, timeout: float = 0.5, context: ssl.SSLContext | None = None
) -> dict[str, object] | None:
    try:
        target = url.rstrip("/") + "/v1/status"
        with urllib.request.urlopen(target, timeout=timeout, context=context) as resp:
            data = json.loads(resp.read())
            return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _stop_children(children: dict[str, subprocess.Popen[bytes]], deadline_s: float) -> None:
    """SIGTERM every child by PID, then SIGKILL whatever is left after the deadline."""
    for proc in children.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + deadline_s
    for node_id, proc in children.items():
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"node {node_id} (pid {proc.pid}) did not stop in time; killing it", flush=True)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def cluster_up(config_path: str | Path, wait_leader_s: float = 20.0) -> int:
    """Start every node of the file as a child `kv serve`, wait for a leader, and stop them
    all on Ctrl-C/SIGTERM. Returns the exit code."""
    try:
        cluster = load_cluster_config(config_path)
        for node in cluster.nodes:
            check_data_dir(node.data_dir)
    except ConfigError as exc:
        print(f"kv cluster up: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, subprocess.Popen[bytes]] = {}
    # A fresh local cluster is founded here; any founder with data means it exists.
    fresh = all(not (n.data_dir / "raft").exists() for n in cluster.nodes if not n.join)
    try:
        for node in cluster.nodes:
            cmd = [sys.executable, "-m", "kvstore.cli.main", "serve", "--config", str(config_path)]
            if fresh and not node.join:
                cmd.append("--initial-cluster")
            children[node.id] = subprocess.Popen([*cmd, "--node", node.id])
            print(
                f"{node.id}: pid {children[node.id].pid}  client {node.client_url}  "
                f"peer {node.peer_url}",
                flush=True,
            )
        leader = _wait_for_leader(cluster, children, wait_leader_s, lambda: stopping)
        if leader is not None:
            print(f"leader: {leader}. Press Ctrl-C to stop the cluster.", flush=True)
        elif not stopping:
            print("no leader elected yet; the nodes keep trying (Ctrl-C stops them)", flush=True)
        reported: set[str] = set()
        while not stopping:
            for node_id, proc in children.items():
                if proc.poll() is not None and node_id not in reported:
                    reported.add(node_id)
                    print(f"node {node_id} exited with code {proc.returncode}", flush=True)
            if len(reported) == len(children):
                break
            time.sleep(0.2)
    finally:
        print("stopping the cluster", flush=True)
        _stop_children(children, deadline_s=10.0)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    failed = [n for n, p in children.items() if p.returncode not in (0, -signal.SIGTERM)]
    return EXIT_FAILURE if failed and not stopping else EXIT_OK


def _wait_for_leader(
    cluster: ClusterConfig,
    children: dict[str, subprocess.Popen[bytes]],
    timeout: float,
    stopping: Callable[[], bool],
) -> str | None:
    """The leader once one is elected and every running node answers, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        if all(p.poll() is not None for p in children.values()):
            return None
        running = [n for n in cluster.nodes if children[n.id].poll() is None]
        tls = cluster.tls
        context = ssl.create_default_context(cafile=tls.ca_file) if tls is not None else None
        statuses = [_status(node.client_url, context=context) for node in running]
        leaders = [st.get("id") for st in statuses if st and st.get("role") == "leader"]
        if leaders and all(statuses):
            return str(leaders[0])
        time.sleep(0.1)
    return None
