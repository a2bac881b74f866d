"""The Python client and the client commands, against an in-process fake cluster.

The fake implements the HTTP contract minimally (one shared store behind every
node, exactly-once sessions, X-KV-Leader) plus scripted faults, so each test
can say exactly what the network and the nodes do and check what the client
sent: headers, sequence numbers, which node, how often. Servers listen on
ports the OS picks, on 127.0.0.1 only; no test sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from kvstore.cli.bench import bench_command
from kvstore.cli.bench_stats import BenchResult, LatencyHistogram
from kvstore.cli.client_commands import CLIENT_COMMANDS
from kvstore.client import KV, AsyncKV, KeyValue, PutResult, RetryPolicy
from kvstore.client.endpoints import (
    ENV_VAR,
    endpoints_from_config,
    is_loopback_url,
    resolve_endpoints,
)
from kvstore.client.errors import (
    ClusterUnavailable,
    EndpointConfigError,
    InvalidRequest,
    NoLeader,
    NotFound,
    OutcomeUnknown,
    VersionMismatch,
)
from kvstore.client.session import WriteSession

NO_BACKOFF = RetryPolicy(max_attempts=6, base_delay=0.0, max_delay=0.0)
MAX_VALUE = 1024

# ---------------------------------------------------------------------------- the fake


@dataclass
class Seen:
    """One request as a node received it."""

    node: str
    method: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeCluster:
    """Nodes sharing one store, as if replication were instant; faults are scripted per node.

    A fault is consumed by the next kv request that reaches that node:
    "503" (no_leader, never applied), "503_hint" (the same, naming the leader),
    "504_after_apply", "drop_after_apply"
    (apply, then cut the connection), "hang_after_apply" (apply, never answer),
    "session_expired", "block" (wait for `release`, then behave normally).
    """

    ids: tuple[str, ...] = ("n1", "n2", "n3")
    leader: str | None = "n1"
    term: int = 3
    store: dict[str, tuple[bytes, int, int]] = field(default_factory=dict)
    revision: int = 0
    sessions: dict[str, dict[int, tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    faults: dict[str, list[str]] = field(default_factory=dict)
    sticky_fault: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    applies: int = 0
    urls: dict[str, str] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    forever: asyncio.Event = field(default_factory=asyncio.Event)

    def fault(self, node: str, *kinds: str) -> None:
        self.faults.setdefault(node, []).extend(kinds)

    def kv_requests(self, method: str | None = None) -> list[Seen]:
        return [s for s in self.seen if "/v1/kv/" in s.raw_path and method in (None, s.method)]

    # ---------------------------------------------------------------- semantics

    def apply(self, method: str, key: str, prev: int | None, body: bytes) -> tuple[int, dict]:
        current = self.store.get(key)
        version = current[1] if current else 0
        if prev is not None and prev != version:
            return 409, {"error": "version_mismatch", "version": version}
        if method == "DELETE":
            if current is None:
                return 404, {"error": "not_found", "message": "no such key"}
            self.revision += 1
            self.applies += 1
            del self.store[key]
            return 200, {"revision": self.revision}
        self.revision += 1
        self.applies += 1
        self.store[key] = (body, version + 1, self.revision)
        return 200, {"revision": self.revision, "version": version + 1}

    def status(self, node: str) -> dict[str, Any]:
        return {
            "id": node,
            "role": "leader" if node == self.leader else "follower",
            "term": self.term,
            "leader": self.leader,
            "commit_index": self.revision + 10,
            "applied_index": self.revision + 10,
            "members": [{"id": n, "client_url": self.urls[n]} for n in self.ids if n in self.urls],
        }

    # ---------------------------------------------------------------- handlers

    def app(self, node: str) -> web.Application:
        async def leader_header(request: web.Request, response: web.StreamResponse) -> None:
            # A node that answers no_leader knows none, so it names none.
            if self.leader and response.status != 503 and "X-KV-Leader" not in response.headers:
                response.headers["X-KV-Leader"] = self.leader

        async def kv(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.seen.append(
                Seen(
                    node,
                    request.method,
                    request.raw_path,
                    dict(request.query),
                    dict(request.headers),
                    body,
                )
            )
            fault = self.sticky_fault.get(node) or (self.faults.get(node) or [None]).pop(0)
            key = request.match_info["key"]
            if fault == "503_hint":  # e.g. a follower that could not reach the leader
                assert self.leader is not None
                return web.json_response(
                    {"error": "no_leader"}, status=503, headers={"X-KV-Leader": self.leader}
                )
            if fault == "503" or self.leader is None:
                return web.json_response({"error": "no_leader", "message": "none"}, status=503)
            if fault == "session_expired":
                return web.json_response({"error": "session_expired"}, status=409)
            if fault == "block":
                self.arrived.set()
                await self.release.wait()
            if request.method == "GET":
                item = self.store.get(key)
                if item is None:
                    return web.json_response({"error": "not_found"}, status=404)
                return web.Response(
                    body=item[0],
                    headers={"X-KV-Version": str(item[1]), "X-KV-Mod-Revision": str(item[2])},
                )
            if len(body) > MAX_VALUE:
                return web.json_response(
                    {"error": "value_too_large", "message": "too big"}, status=413
                )
            prev = request.query.get("prev_version")
            status, answer = self._apply_once(
                request, key, None if prev is None else int(prev), body
            )
            if fault == "504_after_apply":
                return web.json_response({"error": "timeout"}, status=504)
            if fault == "drop_after_apply":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if fault == "hang_after_apply":
                await self.forever.wait()
            return web.json_response(answer, status=status)

        async def status(request: web.Request) -> web.Response:
            self.seen.append(Seen(node, "GET", request.raw_path, {}, dict(request.headers), b""))
            return web.json_response(self.status(node))

        app = web.Application()
        app.on_response_prepare.append(leader_header)
        app.router.add_route("*", "/v1/kv/{key:.+}", kv)
        app.router.add_get("/v1/status", status)
        return app

    def _apply_once(
        self, request: web.Request, key: str, prev: int | None, body: bytes
    ) -> tuple[int, dict]:
        """Exactly-once as the contract asks: a known (client, seq) gets its stored answer."""
        client = request.headers.get("X-KV-Client-Id")
        if client is None:
            return self.apply(request.method, key, prev, body)
        seq = int(request.headers["X-KV-Seq"])
        first = int(request.headers["X-KV-First-Outstanding"])
        results = self.sessions.setdefault(client, {})
        if seq not in results:
            results[seq] = self.apply(request.method, key, prev, body)
        for old in [s for s in results if s < first]:
            del results[old]
        return results[seq]


@asynccontextmanager
async def running(cluster: FakeCluster) -> AsyncIterator[FakeCluster]:
    """Serve every node of `cluster` on an OS-chosen loopback port."""
    servers = []
    for node in cluster.ids:
        server = TestServer(cluster.app(node), host="127.0.0.1", port=None)
        await server.start_server()
        cluster.urls[node] = str(server.make_url("")).rstrip("/")
        servers.append(server)
    try:
        yield cluster
    finally:
        cluster.forever.set()
        cluster.release.set()
        for server in servers:
            await server.close()


@contextmanager
def refused_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: connecting is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def client(cluster: FakeCluster, *nodes: str, **options: Any) -> AsyncKV:
    options.setdefault("retry", NO_BACKOFF)
    return AsyncKV([cluster.urls[n] for n in nodes or cluster.ids], **options)


# ------------------------------------------------------------------------- basics


async def test_put_get_delete_roundtrip_with_typed_results() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        assert await kv.put("a", b"1") == PutResult(revision=1, version=1)
        revision, version = await kv.put("a", "two")
        assert (revision, version) == (2, 2)
        assert await kv.get("a") == KeyValue("a", b"two", version=2, mod_revision=2)
        assert await kv.delete("a") == 3
        with pytest.raises(NotFound) as missing:
            await kv.get("a")
        assert missing.value.key == "a"
        with pytest.raises(NotFound):
            await kv.delete("a")


async def test_keys_are_percent_encoded_including_slashes() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        key = "dir/a b?c%d#é"
        await kv.put(key, b"v")
        assert cluster.kv_requests("PUT")[0].raw_path == "/v1/kv/dir%2Fa%20b%3Fc%25d%23%C3%A9"
        assert (await kv.get(key)).value == b"v"
        assert key in cluster.store


async def test_compare_and_set_and_version_mismatch() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        assert await kv.cas("k", b"first", 0) == (1, 1)
        assert cluster.kv_requests("PUT")[0].query == {"prev_version": "0"}
        with pytest.raises(VersionMismatch) as conflict:
            await kv.cas("k", b"again", 0)
        assert conflict.value.current_version == 1
        assert await kv.put("k", b"second", prev_version=1) == (2, 2)
        with pytest.raises(VersionMismatch) as on_delete:
            await kv.delete("k", prev_version=7)
        assert on_delete.value.current_version == 2


async def test_invalid_requests_are_typed_and_not_retried() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        with pytest.raises(InvalidRequest) as too_big:
            await kv.put("k", b"x" * (MAX_VALUE + 1))
        assert too_big.value.status == 413
        assert len(cluster.kv_requests()) == 1
        with pytest.raises(InvalidRequest):
            await kv.put("", b"x")
        with pytest.raises(InvalidRequest):
            await kv.put("k", b"x", prev_version=-1)
        with pytest.raises(InvalidRequest):
            await kv.get("k", "eventual")  # type: ignore[arg-type]


# ------------------------------------------------------------------ exactly-once


async def test_writes_carry_client_id_and_increasing_seqs() -> None:
    async with running(FakeCluster()) as cluster, client(cluster, client_id="c-1") as kv:
        await kv.put("a", b"1")
        await kv.put("b", b"2")
        await kv.delete("a")
        await kv.get("b")
        writes = [s.headers for s in cluster.kv_requests() if s.method != "GET"]
        assert [h["X-KV-Client-Id"] for h in writes] == ["c-1"] * 3
        assert [h["X-KV-Seq"] for h in writes] == ["1", "2", "3"]
        assert [h["X-KV-First-Outstanding"] for h in writes] == ["1", "2", "3"]
        assert "X-KV-Seq" not in cluster.kv_requests("GET")[0].headers
        assert kv.first_outstanding == 4


async def test_default_client_ids_are_random_and_distinct() -> None:
    assert WriteSession().client_id != WriteSession().client_id
    assert len(WriteSession().client_id) <= 128


async def test_first_outstanding_waits_for_the_oldest_unanswered_write() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        cluster.fault("n1", "block")
        slow = asyncio.create_task(kv.put("slow", b"1"))  # seq 1, held by the server
        await cluster.arrived.wait()
        await kv.put("fast", b"2")  # seq 2, answered while seq 1 is still out
        assert kv.first_outstanding == 1
        cluster.release.set()
        await slow
        await kv.put("later", b"3")  # seq 3: both earlier ones answered
        headers = [s.headers for s in cluster.kv_requests("PUT")]
        assert [(h["X-KV-Seq"], h["X-KV-First-Outstanding"]) for h in headers] == [
            ("1", "1"),
            ("2", "1"),
            ("3", "3"),
        ]


async def test_write_that_times_out_is_retried_with_the_same_seq() -> None:
    async with running(FakeCluster()) as cluster:
        cluster.fault("n1", "hang_after_apply")
        async with client(cluster, attempt_timeout=0.2) as kv:
            assert await kv.put("k", b"v") == (1, 1)
        puts = cluster.kv_requests("PUT")
        assert len(puts) == 2
        assert puts[0].headers["X-KV-Seq"] == puts[1].headers["X-KV-Seq"] == "1"
        assert cluster.applies == 1  # the retry was answered from the session, not re-applied
        assert cluster.store["k"][1] == 1


async def test_write_whose_connection_drops_is_retried_with_the_same_seq() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        await kv.put("k", b"v0")
        cluster.fault("n1", "drop_after_apply")
        assert await kv.put("k", b"v1") == (2, 2)
        seqs = [s.headers["X-KV-Seq"] for s in cluster.kv_requests("PUT")]
        assert seqs[1:] == ["2", "2"]
        assert cluster.applies == 2


async def test_504_timeout_is_retried_with_the_same_seq_and_gets_the_stored_result() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        cluster.fault("n1", "504_after_apply")
        assert await kv.cas("k", b"v", 0) == (1, 1)  # not a mismatch: the retry is deduplicated
        puts = cluster.kv_requests("PUT")
        assert [p.headers["X-KV-Seq"] for p in puts] == ["1", "1"]
        assert cluster.applies == 1


async def test_outcome_unknown_when_the_budget_runs_out_on_a_possibly_applied_write() -> None:
    async with running(FakeCluster()) as cluster:
        cluster.sticky_fault.update({n: "504_after_apply" for n in cluster.ids})
        retry = RetryPolicy(max_attempts=3, base_delay=0.0)
        async with client(cluster, retry=retry) as kv:
            with pytest.raises(OutcomeUnknown):
                await kv.put("k", b"v")
        puts = cluster.kv_requests("PUT")
        assert len(puts) == 3
        assert {p.headers["X-KV-Seq"] for p in puts} == {"1"}
        assert cluster.applies == 1
        assert kv.first_outstanding == 2  # given up: the cluster may forget seq 1


async def test_ambiguous_attempt_then_503s_is_still_outcome_unknown() -> None:
    async with running(FakeCluster()) as cluster:
        cluster.fault("n1", "504_after_apply", "503", "503", "503")
        cluster.sticky_fault.update(n2="503", n3="503")
        retry = RetryPolicy(max_attempts=4, base_delay=0.0)
        async with client(cluster, retry=retry) as kv:
            with pytest.raises(OutcomeUnknown):
                await kv.put("k", b"v")
        assert cluster.kv_requests()[0].node == "n1"
        assert len(cluster.kv_requests()) == 4


async def test_session_expired_is_outcome_unknown() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        cluster.fault("n1", "session_expired")
        with pytest.raises(OutcomeUnknown) as err:
            await kv.put("k", b"v")
        assert err.value.code == "session_expired"
        assert len(cluster.kv_requests()) == 1


# ----------------------------------------------------------- retries and routing


async def test_503_then_success_is_retried_with_the_same_seq() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        cluster.fault("n1", "503")
        assert await kv.put("k", b"v") == (1, 1)
        puts = cluster.kv_requests("PUT")
        assert len(puts) == 2
        assert puts[0].headers["X-KV-Seq"] == puts[1].headers["X-KV-Seq"]
        assert cluster.applies == 1


async def test_no_leader_everywhere_raises_no_leader_and_nothing_is_written() -> None:
    async with running(FakeCluster(leader=None)) as cluster, client(cluster) as kv:
        with pytest.raises(NoLeader):
            await kv.put("k", b"v")
        with pytest.raises(NoLeader):
            await kv.get("k")
        assert len(cluster.kv_requests("PUT")) == NO_BACKOFF.max_attempts
        assert isinstance(NoLeader("x"), ClusterUnavailable)


async def test_connection_refused_moves_on_to_the_next_endpoint() -> None:
    async with running(FakeCluster()) as cluster:
        with refused_url() as dead:
            async with AsyncKV([dead, cluster.urls["n1"]], retry=NO_BACKOFF) as kv:
                assert await kv.put("k", b"v") == (1, 1)
                assert (await kv.get("k")).value == b"v"
        assert [s.node for s in cluster.kv_requests()] == ["n1", "n1"]


async def test_every_endpoint_refusing_is_cluster_unavailable_not_outcome_unknown() -> None:
    with refused_url() as a, refused_url() as b:
        async with AsyncKV([a, b], retry=NO_BACKOFF) as kv:
            with pytest.raises(ClusterUnavailable) as err:
                await kv.put("k", b"v")
            assert not isinstance(err.value, NoLeader)
            assert kv.first_outstanding == 2


async def test_backoff_uses_full_jitter_within_the_exponential_cap() -> None:
    delays: list[float] = []

    async def record(seconds: float) -> None:
        delays.append(seconds)

    async with running(FakeCluster()) as cluster:
        cluster.fault("n1", "503", "503", "503", "503")
        policy = RetryPolicy(max_attempts=6, base_delay=0.1, max_delay=0.25)
        async with client(cluster, "n1", retry=policy, sleep=record, rng=random.Random(7)) as kv:
            await kv.put("k", b"v")
    assert len(delays) == 4
    for retry, delay in enumerate(delays):
        assert 0.0 <= delay <= min(0.25, 0.1 * 2**retry)


async def test_no_retry_starts_too_close_to_the_deadline() -> None:
    """A retry started with a few ms of budget left would be cut off at the deadline, and
    a cut-off write counts as maybe applied: the answer must stay a certain 503."""
    loop = asyncio.get_running_loop()
    deadline = 0.0

    async def until_just_before_the_deadline(_: float) -> None:
        await asyncio.sleep(max(0.0, deadline - 0.02 - loop.time()))

    async with running(FakeCluster()) as cluster:
        cluster.fault("n1", "503", "503", "503")
        async with client(cluster, "n1", timeout=1.0, sleep=until_just_before_the_deadline) as kv:
            deadline = loop.time() + 1.0
            with pytest.raises(NoLeader):
                await kv.put("k", b"v")
        assert len(cluster.kv_requests()) == 1


async def test_follows_the_leader_header_using_status_members() -> None:
    async with running(FakeCluster(leader="n2")) as cluster, client(cluster, "n1") as kv:
        await kv.put("a", b"1")  # sent to n1, which names n2; n1's /v1/status maps n2 to a URL
        assert kv.leader_url == cluster.urls["n2"]
        assert set(kv.endpoints) == set(cluster.urls.values())
        await kv.put("b", b"2")
        await kv.get("b")
        assert [s.node for s in cluster.kv_requests()] == ["n1", "n2", "n2"]


async def test_503_naming_a_leader_sends_the_retry_to_that_leader() -> None:
    async with running(FakeCluster(leader="n2")) as cluster, client(cluster, "n1") as kv:
        cluster.fault("n1", "503_hint")
        assert await kv.put("k", b"v") == (1, 1)
        assert [s.node for s in cluster.kv_requests()] == ["n1", "n2"]


async def test_leader_that_stops_answering_is_forgotten() -> None:
    async with running(FakeCluster()) as cluster:
        with refused_url() as dead:
            async with AsyncKV([dead, cluster.urls["n2"]], retry=NO_BACKOFF) as kv:
                kv._router.urls_by_id["n9"] = dead  # a leader the client knew, now gone
                kv._router.learn_leader("n9")
                assert await kv.put("k", b"v") == (1, 1)
                assert kv.leader_url == cluster.urls["n1"]  # relearnt from n2's answer
        assert [s.node for s in cluster.kv_requests()] == ["n2"]


async def test_stale_reads_spread_over_the_nodes() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        await kv.put("k", b"v")
        for _ in range(3):
            assert (await kv.get("k", consistency="stale")).value == b"v"
        reads = cluster.kv_requests("GET")
        assert {s.node for s in reads} == {"n1", "n2", "n3"}
        assert all(s.query == {"consistency": "stale"} for s in reads)


async def test_call_timeout_bounds_the_whole_call() -> None:
    async with running(FakeCluster()) as cluster:
        cluster.sticky_fault["n1"] = "hang_after_apply"
        async with client(cluster, "n1", attempt_timeout=5.0) as kv:
            with pytest.raises(OutcomeUnknown):
                await kv.put("k", b"v", timeout=0.2)


# ------------------------------------------------------------------- update loop


async def test_update_retries_on_a_concurrent_change() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:
        await kv.put("n", b"1")
        calls: list[bytes | None] = []

        def incr(old: bytes | None) -> bytes:
            calls.append(old)
            if len(calls) == 1:  # another writer gets in between our read and our write
                cluster.apply("PUT", "n", None, b"10")
            return str(int(old or b"0") + 1).encode()

        assert await kv.update("n", incr) == (3, 3)
        assert calls == [b"1", b"10"]
        assert (await kv.get("n")).value == b"11"


async def test_update_of_a_missing_key_creates_it_with_prev_version_0() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:

        async def init(old: bytes | None) -> bytes:
            assert old is None
            return b"fresh"

        await kv.update("new", init)
        assert cluster.kv_requests("PUT")[0].query == {"prev_version": "0"}


async def test_update_gives_up_after_max_attempts() -> None:
    async with running(FakeCluster()) as cluster, client(cluster) as kv:

        def always_raced(old: bytes | None) -> bytes:
            cluster.apply("PUT", "hot", None, b"other")
            return b"mine"

        with pytest.raises(VersionMismatch):
            await kv.update("hot", always_raced, max_attempts=3)
        assert len(cluster.kv_requests("PUT")) == 3


# ------------------------------------------------------------------------ status


async def test_status_of_one_node_and_of_the_whole_cluster() -> None:
    async with running(FakeCluster()) as cluster:
        with refused_url() as dead:
            urls = [cluster.urls["n2"], dead]
            async with AsyncKV(urls, retry=NO_BACKOFF) as kv:
                one = await kv.status(cluster.urls["n2"])
                assert (one.id, one.role, one.leader, one.term) == ("n2", "follower", "n1", 3)
                rows = await kv.cluster_status()
    by_id = {r.node_id: r for r in rows}
    assert {"n1", "n2", "n3"} <= set(by_id)
    assert by_id["n1"].status is not None and by_id["n1"].status.role == "leader"
    unreachable = [r for r in rows if not r.reachable]
    assert [r.endpoint for r in unreachable] == [dead]


# ------------------------------------------------------------------- endpoints


def test_endpoint_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "cluster.toml"
    toml.write_text(
        '[cluster]\nname = "t"\n'
        '[[nodes]]\nid = "n1"\nclient_url = "http://127.0.0.1:9101/"\npeer_url = "x"\n'
        '[[nodes]]\nid = "n2"\nclient_url = "http://127.0.0.1:9102"\npeer_url = "y"\n'
    )
    assert endpoints_from_config(toml) == ["http://127.0.0.1:9101", "http://127.0.0.1:9102"]
    env = {ENV_VAR: "http://localhost:1, http://localhost:2"}
    assert resolve_endpoints("http://a:1,http://b:2", toml, environ=env) == [
        "http://a:1",
        "http://b:2",
    ]
    assert resolve_endpoints(None, toml, environ=env) == [
        "http://localhost:1",
        "http://localhost:2",
    ]
    assert resolve_endpoints(None, toml, environ={}) == endpoints_from_config(toml)
    monkeypatch.chdir(tmp_path)
    assert resolve_endpoints(environ={}) == endpoints_from_config(toml)  # ./cluster.toml
    with pytest.raises(EndpointConfigError):
        resolve_endpoints(None, tmp_path / "missing.toml", environ={})
    with pytest.raises(EndpointConfigError):
        resolve_endpoints("ftp://x", environ={})
    monkeypatch.chdir(tmp_path / "..")
    (tmp_path / "bad.toml").write_text("[[nodes]]\nid = 1\n")
    with pytest.raises(EndpointConfigError, match="client_url"):
        endpoints_from_config(tmp_path / "bad.toml")


def test_loopback_check() -> None:
    assert is_loopback_url("http://127.0.0.1:8001")
    assert is_loopback_url("http://localhost:2379")
    assert is_loopback_url("http://[::1]:80")
    assert not is_loopback_url("http://10.0.0.1:8001")
    assert not is_loopback_url("http://example.com")


# ------------------------------------------- fake in a thread, for blocking callers


@contextmanager
def threaded(cluster: FakeCluster) -> Iterator[FakeCluster]:
    """Run the fake on its own loop thread, for the blocking client and CliRunner."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with running(cluster):
            started.set()
            await stop.wait()

    # asyncio.Events of the fake are bound on first use, i.e. on the server loop.
    task = asyncio.run_coroutine_threadsafe(serve(), loop)
    started.wait(timeout=10)
    try:
        yield cluster
    finally:
        loop.call_soon_threadsafe(stop.set)
        task.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_blocking_client_has_the_same_methods_and_semantics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with threaded(FakeCluster()) as cluster:
        monkeypatch.setenv(ENV_VAR, ",".join(cluster.urls.values()))
        with KV(retry=NO_BACKOFF) as kv:
            assert kv.put("a", b"1") == (1, 1)
            assert kv.get("a").value == b"1"
            assert kv.update("a", lambda old: (old or b"") + b"2") == (2, 2)
            with pytest.raises(VersionMismatch):
                kv.cas("a", b"x", 1)
            assert kv.delete("a") == 3
            with pytest.raises(NotFound):
                kv.get("a")
            assert kv.status().leader == "n1"
            assert len(kv.cluster_status()) == 3
            assert kv.get.__doc__ == AsyncKV.get.__doc__
        kv.close()  # idempotent
        seqs = [s.headers["X-KV-Seq"] for s in cluster.kv_requests() if s.method != "GET"]
        assert seqs == ["1", "2", "3", "4"]


def test_blocking_client_is_shared_safely_between_threads() -> None:
    with threaded(FakeCluster()) as cluster, KV(list(cluster.urls.values())) as kv:
        threads = [threading.Thread(target=lambda i=i: kv.put(f"k{i}", b"v")) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seqs = sorted(int(s.headers["X-KV-Seq"]) for s in cluster.kv_requests("PUT"))
        assert seqs == list(range(1, 9))


# --------------------------------------------------------------------------- CLI


def kv_group() -> click.Group:
    group = click.Group("kv")
    for command in (*CLIENT_COMMANDS, bench_command):
        group.add_command(command)
    return group


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(kv_group(), list(args), env=env or {ENV_VAR: ""})


def test_cli_put_get_delete() -> None:
    with threaded(FakeCluster()) as cluster:
        eps = ",".join(cluster.urls.values())
        put = invoke("put", "--endpoints", eps, "greeting", "hello")
        assert (put.exit_code, put.stdout) == (0, "1\n")
        got = invoke("get", "--endpoints", eps, "greeting", "--show-version")
        assert (got.exit_code, got.stdout_bytes) == (0, b"hello")
        assert "version 1" in got.stderr
        mismatch = invoke("put", "--endpoints", eps, "--prev-version", "0", "greeting", "x")
        assert mismatch.exit_code == 1
        assert "version mismatch" in mismatch.stderr
        deleted = invoke("delete", "--endpoints", eps, "greeting")
        assert (deleted.exit_code, deleted.stdout) == (0, "2\n")
        missing = invoke("get", "--endpoints", eps, "greeting")
        assert missing.exit_code == 1
        assert missing.stdout == ""
        assert missing.stderr.strip() == "kv: key not found: 'greeting'"


def test_cli_endpoints_from_env_and_config(tmp_path: Path) -> None:
    with threaded(FakeCluster()) as cluster:
        from_env = invoke("put", "k", "v", env={ENV_VAR: cluster.urls["n1"]})
        assert from_env.exit_code == 0, from_env.output
        toml = tmp_path / "cluster.toml"
        toml.write_text(f'[[nodes]]\nid = "n2"\nclient_url = "{cluster.urls["n2"]}"\n')
        from_file = invoke("get", "--config", str(toml), "k")
        assert (from_file.exit_code, from_file.stdout) == (0, "v")


def test_cli_status_table_shows_unreachable_nodes() -> None:
    with threaded(FakeCluster()) as cluster, refused_url() as dead:
        result = invoke("status", "--endpoints", f"{cluster.urls['n1']},{dead}")
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].split() == [
            "ID",
            "ROLE",
            "TERM",
            "LEADER",
            "COMMIT",
            "APPLIED",
            "SNAPSHOT",
            "LOG",
            "ENDPOINT",
        ]
        assert lines[1].split()[:6] == ["n1", "leader", "3", "n1", "10", "10"]
        assert len(lines) == 5  # header, n1..n3, the dead one
        assert any("unreachable" in line and dead in line for line in lines)
        as_json = invoke("status", "--json", "--endpoints", cluster.urls["n1"])
        assert {row["id"] for row in json.loads(as_json.stdout)} == {"n1", "n2", "n3"}


def test_cli_cluster_down_is_one_line_and_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with refused_url() as a, refused_url() as b:
        eps = f"{a},{b}"
        for args in (["put", "k", "v"], ["get", "k"], ["delete", "k"], ["status"]):
            result = invoke(*args, "--endpoints", eps, "--timeout", "0.3")
            assert result.exit_code == 3, (args, result.output)  # unavailable
            assert result.exception is None or isinstance(result.exception, SystemExit)
            assert len(result.stderr.strip().splitlines()) == 1
            assert "Traceback" not in result.output
    monkeypatch.chdir(tmp_path)  # no ./cluster.toml here
    missing = invoke("get", "k", env={ENV_VAR: ""})
    assert missing.exit_code == 2  # usage: no endpoints configured
    assert missing.stderr.startswith("kv: no cluster endpoints")


# ------------------------------------------------------------------------- bench


def test_bench_refuses_non_loopback_endpoints() -> None:
    result = invoke("bench", "--endpoints", "http://10.1.2.3:8001", "--duration", "1")
    assert result.exit_code == 2
    assert "loopback" in result.stderr


def test_bench_kv_mixed_json() -> None:
    with threaded(FakeCluster()) as cluster:
        result = invoke(
            "bench",
            "--endpoints",
            ",".join(cluster.urls.values()),
            "--workload",
            "mixed",
            "--duration",
            "0.3",
            "--concurrency",
            "4",
            "--keys",
            "20",
            "--value-size",
            "16",
            "--json",
            "--seed",
            "1",
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["ops"] > 0 and report["ops_per_sec"] > 0
        assert set(report["by_op"]) == {"read", "write"}
        assert report["not_found"] == 0  # prefilled
        assert report["errors"] == {}
        assert set(report["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}
        written = {s.raw_path for s in cluster.kv_requests("PUT")}
        prefixes = {path.rsplit("%2F", 1)[0] for path in written}
        assert len(written) == 20 and len(prefixes) == 1  # bench/<run id>/00000000..19
        assert cluster.store == {}  # and deleted at the end
        assert {s.raw_path for s in cluster.kv_requests("DELETE")} == written


@dataclass
class FakeEtcd:
    """etcd's v3 JSON gateway, just put and range."""

    store: dict[str, str] = field(default_factory=dict)
    serializable: list[bool] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        async def put(request: web.Request) -> web.Response:
            body = await request.json()
            self.store[body["key"]] = body["value"]
            return web.json_response({"header": {"revision": str(len(self.store))}})

        async def range_(request: web.Request) -> web.Response:
            body = await request.json()
            self.serializable.append(bool(body.get("serializable")))
            if body["key"] in self.store:
                return web.json_response({"kvs": [{"key": body["key"]}], "count": "1"})
            return web.json_response({"header": {}})

        async def delete_range(request: web.Request) -> web.Response:
            body = await request.json()
            self.deleted.append(body["key"])
            self.store.pop(body["key"], None)
            return web.json_response({"header": {}})

        app = web.Application()
        app.router.add_post("/v3/kv/put", put)
        app.router.add_post("/v3/kv/range", range_)
        app.router.add_post("/v3/kv/deleterange", delete_range)
        return app


def test_bench_etcd_target_stale_reads_text_output() -> None:
    etcd = FakeEtcd()
    loop = asyncio.new_event_loop()
    server = TestServer(etcd.app(), host="127.0.0.1", port=None)
    loop.run_until_complete(server.start_server())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        result = invoke(
            "bench",
            "--target",
            "etcd",
            "--endpoints",
            str(server.make_url("")),
            "--workload",
            "read",
            "--consistency",
            "stale",
            "--duration",
            "0.3",
            "--keys",
            "5",
            "--concurrency",
            "2",
        )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(server.close())
        loop.close()
    assert result.exit_code == 0, result.output
    assert "ops/s" in result.stdout and "p99" in result.stdout
    keys = [base64.b64decode(key) for key in etcd.deleted]
    assert len(keys) == 5 and all(k.startswith(b"bench/") for k in keys)
    assert keys[4].endswith(b"/00000004") and etcd.store == {}
    assert etcd.serializable and all(etcd.serializable)


def test_bench_with_the_cluster_down_exits_3() -> None:
    with refused_url() as dead:
        writes = invoke("bench", "--endpoints", dead, "--duration", "0.2", "--timeout", "0.3")
        reads = invoke("bench", "--endpoints", dead, "--workload", "read", "--timeout", "0.3")
    assert writes.exit_code == 3  # unavailable
    assert "no operation succeeded" in writes.stderr
    assert "errors   ClusterUnavailable" in writes.stdout
    assert reads.exit_code == 3  # its prefill fails on the first write, not after a minute
    assert reads.stderr.startswith("kv: prefill failed (ClusterUnavailable)")


def test_bench_two_processes_merge_their_results() -> None:
    with threaded(FakeCluster()) as cluster:
        result = invoke(
            "bench",
            "--endpoints",
            cluster.urls["n1"],
            "--processes",
            "2",
            "--duration",
            "0.3",
            "--concurrency",
            "2",
            "--json",
        )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["processes"] == 2 and report["ops"] > 0
    clients = {s.headers["X-KV-Client-Id"] for s in cluster.kv_requests("PUT")}
    assert len(clients) == 2  # one exactly-once session per process


def test_latency_histogram_quantiles_and_merge() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for ms in range(1, 101):
        (a if ms % 2 else b).record(ms / 1000)
    a.merge(b)
    assert a.count == 100
    assert a.quantile_ms(0.5) == pytest.approx(50, rel=0.02)
    assert a.quantile_ms(0.99) == pytest.approx(99, rel=0.02)
    assert a.summary()["max"] == 100.0
    result = BenchResult()
    result.record("write", 0.001)
    result.finish(0.5)
    other = BenchResult(ops_per_sec=10.0, elapsed_s=0.6)
    result.merge(other)
    assert result.ops_per_sec == 12.0 and result.elapsed_s == 0.6
