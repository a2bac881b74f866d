"""The asyncio runtime, transport and HTTP layers, in one process and one event loop.

Three NodeRuntimes on MemoryStorage talk over real loopback sockets, so these tests
cover forwarding, the answer codes and the transport's failure handling in well under
a second each, without the process management of tests/integration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consensus import AppendEntries, AppendEntriesResponse, Entry, MemoryStorage, RequestVote
from kvstore.api.app import make_client_app
from kvstore.api.common import BadRequest
from kvstore.api.kv import parse_key
from kvstore.api.peer import make_peer_app
from kvstore.chaos.ports import free_ports
from kvstore.config import ClusterConfig, NodeConfig, Tuning
from kvstore.peers.auth import PeerAuth
from kvstore.peers.transport import Transport, coalesce
from kvstore.runtime.leveldb_storage import LevelDBStorage
from kvstore.runtime.node import NodeRuntime

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("/v1/kv/a", "a"),
        ("/v1/kv/a%20b?x=1", "a b"),
        ("/v1/kv/caf%C3%A9%2Fx", "café/x"),
        ("/v1/kv/a/b/c", "a/b/c"),
        ("/v1/kv/a+b", "a+b"),
    ],
)
def test_parse_key_decodes(raw: str, key: str) -> None:
    assert parse_key(raw, 1024) == key


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("/v1/kv/", "bad_key"),
        ("/v1/kv/%zz", "bad_key"),
        ("/v1/kv/a%2", "bad_key"),
        ("/v1/kv/%ff", "bad_key"),
        ("/v1/kv/%ED%A0%80", "bad_key"),  # an encoded surrogate is not UTF-8
        ("/v1/kv/" + "k" * 11, "key_too_large"),
        ("/v1/kv/" + "%C3%A9" * 6, "key_too_large"),  # bytes count, not characters
    ],
)
def test_parse_key_rejects(raw: str, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_key(raw, 10)
    assert info.value.status == 400 and info.value.code == code


def _ae(prev: int, count: int, term: int = 2, commit: int = 0, read_seq: int = 0) -> AppendEntries:
    entries = tuple(Entry(term, prev + 1 + i, b"x") for i in range(count))
    return AppendEntries(term, "n1", "n2", prev, term, entries, commit, read_seq)


def test_coalesce_merges_contiguous_appends_and_keeps_the_rest() -> None:
    heartbeat = _ae(3, 0)
    merged = coalesce([_ae(3, 2, commit=3), heartbeat, _ae(5, 1, commit=4, read_seq=7), _ae(6, 2)])
    assert merged[1] is heartbeat and len(merged) == 2
    first = merged[0]
    assert isinstance(first, AppendEntries)
    assert [e.index for e in first.entries] == [4, 5, 6, 7, 8]
    assert (first.prev_log_index, first.leader_commit, first.read_seq) == (3, 4, 7)
    # A gap or a new term is never merged.
    assert len(coalesce([_ae(3, 2), _ae(6, 1)])) == 2
    assert len(coalesce([_ae(3, 2), _ae(5, 1, term=3)])) == 2


def test_coalesce_keeps_the_highest_acknowledgement() -> None:
    def ack(match: int, success: bool = True, read_seq: int = 0) -> AppendEntriesResponse:
        return AppendEntriesResponse(2, "n2", "n1", success, match, read_seq=read_seq)

    reject = ack(4, success=False)
    merged = coalesce([ack(5, read_seq=3), reject, ack(9), ack(7, read_seq=4)])
    assert merged == [ack(9, read_seq=4), reject]


# ---------------------------------------------------------------------- transport


@dataclass
class _Sink:
    node_id: str
    member_ids: frozenset[str]
    got: list[object] = field(default_factory=list)
    snapshot_receiver: None = None
    peer_auth: PeerAuth = field(default_factory=lambda: PeerAuth("", ""))

    def admit(self, sender: str, sender_url: str | None) -> str | None:
        return None if sender in self.member_ids else "unknown"

    def step_messages(self, msgs: list[object]) -> None:
        self.got.extend(msgs)


@contextlib.asynccontextmanager
async def _serve(app: web.Application, port: int) -> AsyncIterator[web.AppRunner]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield runner
    finally:
        await runner.cleanup()


async def _eventually(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


async def test_transport_delivers_batches_and_survives_a_dead_peer() -> None:
    live_port, dead_port = free_ports(2)
    sink = _Sink("n2", frozenset({"n1", "n2", "n3"}))
    transport = Transport(
        "n1",
        {"n2": f"http://127.0.0.1:{live_port}", "n3": f"http://127.0.0.1:{dead_port}"},
        request_timeout=0.5,
    )
    async with _serve(make_peer_app(sink), live_port):
        await transport.start()
        try:
            for i in range(50):
                transport.send([RequestVote(i, "n1", "n2", 0, 0), RequestVote(i, "n1", "n3", 0, 0)])
            await _eventually(lambda: len(sink.got) == 50)
            assert [m.term for m in sink.got] == list(range(50))  # type: ignore[attr-defined]
            status = transport.peer_status()
            assert status["n2"]["reachable"] is True
            await _eventually(lambda: transport.peer_status()["n3"]["reachable"] is False)
            assert transport.peer_status()["n3"]["last_error"]
        finally:
            await transport.close()


async def test_transport_counts_rejected_batches() -> None:
    (port,) = free_ports(1)
    sink = _Sink("n9", frozenset({"n1", "n9"}))  # n2's messages are for someone else
    transport = Transport("n1", {"n2": f"http://127.0.0.1:{port}"})
    async with _serve(make_peer_app(sink), port):
        await transport.start()
        try:
            transport.send([RequestVote(1, "n1", "n2", 0, 0)])
            await _eventually(lambda: transport.peer_status()["n2"]["reachable"] is False)
            assert "wrong_recipient" in transport.peer_status()["n2"]["last_error"]
            assert sink.got == []
        finally:
            await transport.close()


async def test_transport_queue_is_bounded() -> None:
    (port,) = free_ports(1)  # nothing listens: every message waits in the queue
    transport = Transport("n1", {"n2": f"http://127.0.0.1:{port}"}, max_queue_messages=10)
    await transport.start()
    try:
        transport.send([RequestVote(i, "n1", "n2", 0, 0) for i in range(100)])
        status = transport.peer_status()["n2"]
        assert status["queued"] <= 10 and status["dropped"] >= 90
    finally:
        await transport.close()


async def test_peer_api_rejects_garbage() -> None:
    (port,) = free_ports(1)
    sink = _Sink("n2", frozenset({"n1", "n2"}))
    async with _serve(make_peer_app(sink), port), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/raft/messages"
        for body in (b"garbage", b"\x91\x93\x00", b"", b"\xc1"):
            async with http.post(url, data=body) as resp:
                assert resp.status == 400
                payload = await resp.json()
                assert payload["error"] == "bad_messages" and payload["message"]
        assert sink.got == []


# ---------------------------------------------------------------------- a cluster in one loop


@dataclass
class _Node:
    runtime: NodeRuntime
    runners: list[web.AppRunner]
    url: str


class _LocalCluster:
    def __init__(self, tmp: Path, size: int = 3, **tuning: int) -> None:
        ports = free_ports(2 * size)
        self.config = ClusterConfig(
            "test",
            tmp,
            tuple(
                NodeConfig(
                    id=f"n{i + 1}",
                    client_url=f"http://127.0.0.1:{ports[2 * i]}",
                    peer_url=f"http://127.0.0.1:{ports[2 * i + 1]}",
                    client_host="127.0.0.1",
                    client_port=ports[2 * i],
                    peer_host="127.0.0.1",
                    peer_port=ports[2 * i + 1],
                    data_dir=tmp / f"n{i + 1}",
                )
                for i in range(size)
            ),
            Tuning(**{"tick_ms": 5, "request_timeout_ms": 2000, **tuning}),
        )
        self.nodes: dict[str, _Node] = {}
        self.disks: dict[str, Any] = {}
        self.snapshot_every: int | None = None
        self.leveldb = False
        self.http = aiohttp.ClientSession()

    async def start(self, node_id: str) -> None:
        me = self.config.node(node_id)
        if self.leveldb:  # reopened from its directory on every start
            me.data_dir.mkdir(parents=True, exist_ok=True)
            self.disks[node_id] = LevelDBStorage(me.data_dir / "raft")
        disk = self.disks.setdefault(node_id, MemoryStorage())  # survives a restart
        runtime = NodeRuntime(self.config, node_id, disk)
        if self.snapshot_every is not None:
            runtime.snapshots.snapshot_every = self.snapshot_every
        runners = []
        for app, port in (
            (make_client_app(runtime, 1 << 21), me.client_port),
            (make_peer_app(runtime), me.peer_port),
        ):
            # As `kv serve` does: a handler still running at stop is cancelled after a
            # second, not after aiohttp's default minute (which outlasts the test timeout).
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
        await runtime.start()
        self.nodes[node_id] = _Node(runtime, runners, me.client_url)

    async def stop(self, node_id: str) -> None:
        node = self.nodes.pop(node_id)
        for runner in node.runners:
            await runner.cleanup()
        await node.runtime.stop()

    async def close(self) -> None:
        for node_id in list(self.nodes):
            await self.stop(node_id)
        await self.http.close()

    async def leader(self) -> str:
        found: list[str] = []

        def check() -> bool:
            found[:] = [n for n, node in self.nodes.items() if node.runtime.is_leader]
            return len(found) == 1 and all(
                node.runtime.leader_id == found[0] for node in self.nodes.values()
            )

        await _eventually(check)
        return found[0]

    async def call(
        self, node_id: str, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        config = self.config.node(node_id)
        async with self.http.request(method, config.client_url + path, data=body) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def test_followers_forward_and_reads_are_linearizable(local: _LocalCluster) -> None:
    leader = await local.leader()
    for node_id in local.nodes:
        status, headers, body = await local.call(node_id, "PUT", f"/v1/kv/k-{node_id}", b"v")
        assert status == 200, body
        assert headers["X-KV-Leader"] == leader
    for node_id in local.nodes:
        for writer in local.nodes:
            status, headers, body = await local.call(node_id, "GET", f"/v1/kv/k-{writer}")
            assert (status, body) == (200, b"v")
            assert headers["X-KV-Version"] == "1"
    status, _, body = await local.call(leader, "GET", "/v1/status")
    assert status == 200 and b'"members"' in body


async def test_write_without_quorum_times_out_as_unknown(tmp_path: Path) -> None:
    cluster = _LocalCluster(tmp_path, request_timeout_ms=600)
    try:
        for node_id in ("n1", "n2", "n3"):
            await cluster.start(node_id)
        leader = await cluster.leader()
        for node_id in [n for n in cluster.nodes if n != leader]:
            await cluster.stop(node_id)
        status, _, body = await cluster.call(leader, "PUT", "/v1/kv/k", b"v")
        # Proposed but not committed: the outcome is unknown, never a 503.
        assert status == 504 and b'"timeout"' in body
    finally:
        await cluster.close()


async def test_lone_follower_answers_no_leader(tmp_path: Path) -> None:
    cluster = _LocalCluster(tmp_path, request_timeout_ms=600)
    try:
        await cluster.start("n1")  # alone: it can never win an election
        status, _, body = await cluster.call("n1", "PUT", "/v1/kv/k", b"v")
        assert status == 503 and b'"no_leader"' in body
        status, _, body = await cluster.call("n1", "GET", "/v1/kv/k")
        assert status == 503 and b'"no_leader"' in body
        status, _, body = await cluster.call("n1", "GET", "/v1/kv/k?consistency=stale")
        assert status == 404
    finally:
        await cluster.close()


@pytest.mark.parametrize("leveldb", [False, True], ids=["memory", "leveldb"])
async def test_compaction_and_snapshot_catch_up(tmp_path: Path, leveldb: bool) -> None:
    cluster = _LocalCluster(tmp_path)
    cluster.snapshot_every = 20
    cluster.leveldb = leveldb
    try:
        await cluster.start("n1")
        await cluster.start("n2")
        leader = await cluster.leader()
        for i in range(100):
            status, _, body = await cluster.call(leader, "PUT", f"/v1/kv/k{i % 30}", b"%d" % i)
            assert status == 200, body
        for node_id in ("n1", "n2"):
            await _eventually(lambda n=node_id: cluster.disks[n].first_index() > 20)
        # n3 never saw the compacted entries: it must be sent the snapshot.
        await cluster.start("n3")
        n3 = cluster.nodes["n3"].runtime
        await _eventually(
            lambda: n3.sm.applied_index >= cluster.nodes[leader].runtime.sm.applied_index
        )
        assert n3.sm.get("k9") is not None and n3.sm.get("k9").value == b"99"  # type: ignore[union-attr]
        status, _, body = await cluster.call("n3", "GET", "/v1/kv/k29")
        assert (status, body) == (200, b"89")

        # A restart starts from the stored snapshot, then replays what followed it.
        await cluster.stop("n3")
        await cluster.start("n3")
        n3 = cluster.nodes["n3"].runtime
        assert n3.sm.applied_index > 20  # restored from the snapshot before any replay
        await _eventually(
            lambda: len({node.runtime.sm.fingerprint() for node in cluster.nodes.values()}) == 1
        )
        assert n3.sm.get("k0").value == b"90"  # type: ignore[union-attr]
    finally:
        await cluster.close()


def test_the_same_on_uvloop(tmp_path: Path) -> None:
    """kv serve runs on uvloop when it is installed, so the transport must work there too
    (its transports are not asyncio.Transport subclasses, for one)."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        await test_transport_delivers_batches_and_survives_a_dead_peer()
        cluster = _LocalCluster(tmp_path)
        try:
            for node_id in ("n1", "n2", "n3"):
                await cluster.start(node_id)
            await test_followers_forward_and_reads_are_linearizable(cluster)
        finally:
            await cluster.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# ---------------------------------------------------------------------- waiting requests


async def test_pending_requests_decide_what_an_answer_means() -> None:
    from kvstore.runtime.requests import PendingRequests, ProposalOverwritten, ProposalTimeout
    from kvstore.state.machine import PutResult

    pending = PendingRequests()
    ours = pending.add_proposal(Entry(2, 5, b"x"), deadline=1e9)
    replaced = pending.add_proposal(Entry(2, 6, b"y"), deadline=1e9)
    late = pending.add_proposal(Entry(2, 7, b"z"), deadline=10.0)
    pending.applied(Entry(2, 5, b"x"), PutResult(1, 1))
    pending.applied(Entry(3, 6, b""), None)  # a new leader's entry took index 6
    assert ours.result() == PutResult(1, 1)
    with pytest.raises(ProposalOverwritten):  # definite: it can never commit
        replaced.result()
    pending.expire(now=11.0)
    with pytest.raises(ProposalTimeout):  # unknown: it may still commit
        late.result()

    folded = pending.add_proposal(Entry(3, 9, b"w"), deadline=1e9)
    told: list[int | Exception] = []
    pending.add_read(b"r1", term=3, deadline=1e9, done=told.append)
    pending.snapshot_installed(10)
    with pytest.raises(ProposalTimeout):
        folded.result()
    pending.read_confirmed(b"r1", 10)
    assert told == [10]
    assert not pending
