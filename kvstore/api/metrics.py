"""`GET /metrics`: the node in the Prometheus text format, with prometheus_client.

Each node has its own CollectorRegistry (tests run several nodes in one process, and
the default global registry would mix them). Nothing here is updated per request by a
prometheus_client object: requests are counted by a middleware into plain buckets
(RequestStats), the runtime counts into kvstore.runtime.stats, and `NodeCollector`
turns both, plus the runtime's current values (term, indexes, links, lag), into metric
families only when Prometheus scrapes. That keeps the write path to two clock reads, a
dict lookup and a `bisect` per request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from consensus import Role
from kvstore.api.common import RUNTIME_KEY, BadRequest, check_query, error
from kvstore.api.kv import KV_PREFIX
from kvstore.runtime.node import NodeRuntime
from kvstore.runtime.stats import LATENCY_BOUNDS_S, Buckets

METRICS_PATH = "/metrics"
_KV_OPS = {"GET": "get", "PUT": "put", "DELETE": "delete"}
_OUTCOMES = {404: "not_found", 409: "conflict", 503: "unavailable", 504: "timeout"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def outcome(status: int) -> str:
    """A small fixed set of outcomes, so label cardinality stays bounded."""
    if 200 <= status < 300:
        return "ok"
    known = _OUTCOMES.get(status)
    if known is not None:
        return known
    return "rejected" if 400 <= status < 500 else "error"


class RequestStats:
    """Latency buckets per (operation, outcome) of the client port's requests."""

    def __init__(self) -> None:
        self.by_label: dict[tuple[str, str], Buckets] = {}

    def observe(self, op: str, status: int, seconds: float) -> None:
        key = (op, outcome(status))
        buckets = self.by_label.get(key)
        if buckets is None:
            buckets = self.by_label[key] = Buckets(LATENCY_BOUNDS_S)
        buckets.observe(seconds)


def kv_operation(method: str) -> str:
    """The operation label of a request on /v1/kv/ (the fast lane counts with it too)."""
    return _KV_OPS.get(method, "other")


def operation(request: web.Request) -> str:
    """`get`/`put`/`delete` for keys, else the method and route template (bounded)."""
    if request.path.startswith(KV_PREFIX):
        return kv_operation(request.method)
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical}" if resource is not None else "other"


def request_middleware(
    stats: RequestStats,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Counts and times every request of the client app by operation and outcome."""
    clock = time.perf_counter

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            stats.observe(operation(request), exc.status, clock() - started)
            raise
        except Exception:
            stats.observe(operation(request), 500, clock() - started)
            raise
        stats.observe(operation(request), response.status, clock() - started)
        return response

    return count_requests


def _histogram(name: str, doc: str, buckets: Buckets) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], buckets.cumulative(), buckets.sum)
    return family


class NodeCollector(Collector):
    """Reads one node's counters and current state when Prometheus scrapes."""

    def __init__(self, runtime: NodeRuntime, requests: RequestStats) -> None:
        self._runtime = runtime
        self._requests = requests

    def collect(self) -> Iterator[Metric]:
        yield from self._request_families()
        yield from self._raft_families()
        yield from self._storage_families()
        yield from self._peer_families()

    def _request_families(self) -> Iterator[Metric]:
        labels = ["op", "outcome"]
        total = CounterMetricFamily(
            "kv_http_requests_total",
            "Client-port requests by operation and outcome.",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "kv_http_request_duration_seconds",
            "Time to answer a client-port request, by operation and outcome.",
            labels=labels,
        )
        for (op, result), buckets in sorted(self._requests.by_label.items()):
            total.add_metric([op, result], buckets.count)
            latency.add_metric([op, result], buckets.cumulative(), buckets.sum)
        yield total
        yield latency

    def _raft_families(self) -> Iterator[Metric]:
        rt = self._runtime
        stats, node = rt.stats, rt.node
        info = GaugeMetricFamily(
            "kv_node_info", "Always 1; labels name this node.", labels=["node_id"]
        )
        info.add_metric([rt.node_id], 1)
        yield info
        role = GaugeMetricFamily("kv_raft_role", "1 for this node's current role.", labels=["role"])
        for r in Role:
            role.add_metric([r.value], 1 if node.role is r else 0)
        yield role
        yield GaugeMetricFamily("kv_raft_term", "Current Raft term.", value=node.term)
        yield GaugeMetricFamily(
            "kv_raft_has_leader",
            "1 when this node knows a leader.",
            value=int(node.leader_id is not None),
        )
        yield CounterMetricFamily(
            "kv_raft_leader_changes_total",
            "Times the leader this node knows changed.",
            value=stats.leader_changes,
        )
        yield CounterMetricFamily(
            "kv_raft_proposals_total",
            "Entries this node proposed as leader.",
            value=stats.proposals,
        )
        yield CounterMetricFamily(
            "kv_raft_applied_entries_total",
            "Committed entries applied to the state machine.",
            value=stats.applied_entries,
        )
        yield _histogram(
            "kv_raft_commit_latency_seconds",
            "From propose to applied, for this leader's successful proposals.",
            stats.commit_latency,
        )
        st = node.status()
        for name, doc, value in (
            ("kv_raft_commit_index", "Highest log index known committed.", st.commit_index),
            (
                "kv_raft_applied_index",
                "Highest log index applied to the state machine.",
                rt.sm.applied_index,
            ),
            ("kv_raft_last_log_index", "Last index in this node's log.", st.last_index),
            (
                "kv_raft_first_log_index",
                "First index still in the log (after compaction).",
                st.first_index,
            ),
            (
                "kv_state_revision",
                "Writes applied to the store (the revision counter).",
                rt.sm.revision,
            ),
            ("kv_state_keys", "Keys in the store.", len(rt.sm)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        pending = GaugeMetricFamily(
            "kv_pending_requests", "Requests waiting for commit or a read index.", labels=["kind"]
        )
        for kind, count in rt.pending.counts().items():
            pending.add_metric([kind.removeprefix("pending_")], count)
        yield pending
        yield GaugeMetricFamily(
            "kv_watchers", "Watches this node is serving (`GET /v1/watch`).", value=len(rt.watches)
        )

    def _storage_families(self) -> Iterator[Metric]:
        stats = self._runtime.stats
        yield _histogram(
            "kv_storage_fsync_duration_seconds",
            "One synced write of a Ready (entries and hard state).",
            stats.persist_seconds,
        )
        yield _histogram(
            "kv_storage_fsync_batch_entries",
            "Entries per synced write (group commit).",
            stats.persist_entries,
        )
        yield _histogram(
            "kv_snapshot_duration_seconds",
            "Taking a snapshot and compacting the log (capture, serialize, store).",
            stats.snapshot_seconds,
        )
        yield _histogram(
            "kv_snapshot_install_duration_seconds",
            "Installing a snapshot received from the leader.",
            stats.snapshot_install_seconds,
        )
        yield _histogram(
            "kv_event_loop_lag_seconds",
            "How late the event loop woke a 10 ms timer (a stall delays every request).",
            stats.loop_lag.buckets,
        )
        yield GaugeMetricFamily(
            "kv_event_loop_lag_max_seconds",
            "The longest event loop stall since the node started.",
            value=stats.loop_lag.max_s,
        )
        yield GaugeMetricFamily(
            "kv_event_loop_lag_max_busy_seconds",
            "The longest stall counting only time the process was on a CPU.",
            value=stats.loop_lag.max_busy_s,
        )
        yield GaugeMetricFamily(
            "kv_event_loop_lag_max_loop_cpu_seconds",
            "The longest stall counting only the event loop thread's own CPU time.",
            value=stats.loop_lag.max_loop_cpu_s,
        )
        pauses = GaugeMetricFamily(
            "kv_gc_pause_max_seconds",
            "The longest garbage collection since the node started, per generation.",
            labels=["generation"],
        )
        collections = CounterMetricFamily(
            "kv_gc_collections",
            "Garbage collections since the node started, per generation.",
            labels=["generation"],
        )
        for generation, longest in enumerate(stats.gc_pauses.max_s):
            pauses.add_metric([str(generation)], longest)
            collections.add_metric([str(generation)], stats.gc_pauses.counts[generation])
        yield pauses
        yield collections

    def _peer_families(self) -> Iterator[Metric]:
        rt = self._runtime
        now = time.monotonic()
        up = GaugeMetricFamily(
            "kv_peer_link_up", "1 when the link to the peer is connected.", labels=["peer"]
        )
        heard = GaugeMetricFamily(
            "kv_peer_last_heard_seconds",
            "Seconds since the peer last sent a message.",
            labels=["peer"],
        )
        sent = CounterMetricFamily(
            "kv_peer_messages_sent_total", "Raft messages sent.", labels=["peer"]
        )
        dropped = CounterMetricFamily(
            "kv_peer_messages_dropped_total",
            "Raft messages dropped (queue full, link down).",
            labels=["peer"],
        )
        for peer, link in sorted(rt.transport.peer_status().items()):
            up.add_metric([peer], int(bool(link["reachable"])))
            sent.add_metric([peer], link["sent_messages"])
            dropped.add_metric([peer], link["dropped"])
            last = rt.last_heard.get(peer)
            if last is not None:
                heard.add_metric([peer], now - last)
        yield from (up, heard, sent, dropped)
        lag = GaugeMetricFamily(
            "kv_replication_lag_entries",
            "On the leader: entries the follower's log is behind the leader's.",
            labels=["peer"],
        )
        match = GaugeMetricFamily(
            "kv_replication_match_index",
            "On the leader: the follower's matched index.",
            labels=["peer"],
        )
        matches = rt.replication()
        last_index = matches.get(rt.node_id, 0)
        for peer, index in sorted(matches.items()):
            if peer != rt.node_id:
                lag.add_metric([peer], max(0, last_index - index))
                match.add_metric([peer], index)
        yield lag
        yield match


def make_registry(runtime: NodeRuntime, requests: RequestStats) -> CollectorRegistry:
    """A registry of this node only, plus the process's CPU, memory and file figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(runtime, requests))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)
STATS_KEY = web.AppKey("request_stats", RequestStats)
"""The app's request counters, for requests served beside its middlewares (fast lane)."""


async def handle_metrics(request: web.Request) -> web.Response:
    try:
        check_query(request)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_metrics(app: web.Application) -> None:
    """Count the app's requests and serve `GET /metrics` (call before the app starts)."""
    requests = app[STATS_KEY] = RequestStats()
    app[REGISTRY_KEY] = make_registry(app[RUNTIME_KEY], requests)
    app.middlewares.append(request_middleware(requests))
    app.router.add_get(METRICS_PATH, handle_metrics)
