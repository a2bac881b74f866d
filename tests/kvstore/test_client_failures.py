"""How the client behaves when a node hangs, refuses, is not a pyraftkv node, or has a
certificate the client cannot trust: calls end within their timeout, a hung node is
hedged around, and every failure names the endpoint and the cause.

Uses the in-process fake cluster of test_client (faults scripted per node); no sleeps.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kvstore.client import AsyncKV
from kvstore.client.endpoints import normalize_url
from kvstore.client.errors import (
    ClusterUnavailable,
    EndpointConfigError,
    NotFound,
    OutcomeUnknown,
)
from tests.kvstore.test_client import NO_BACKOFF, FakeCluster, client, refused_url, running

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def foreign_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Something that is not a pyraftkv client API: like a node's peer port, it knows
    only /raft/messages and answers anything else with aiohttp's plain 404."""

    async def raft(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/raft/messages", raft)
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server(ssl=tls)
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.port}"
    finally:
        await server.close()


@contextmanager
def self_signed(tmp_path: Path) -> Iterator[ssl.SSLContext]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    yield context


# ------------------------------------------------------------------ a hung node


async def test_a_hung_first_node_is_hedged_and_the_read_ends_early() -> None:
    async with running(FakeCluster()) as cluster:
        cluster.sticky_fault["n1"] = "block"  # accepts, never answers
        async with client(cluster, hedge_delay=0.3, timeout=5.0) as kv:
            await kv.put("a", b"1")  # goes to n1 too: hedged, answered by n2
            started = time.monotonic()
            assert (await kv.get("a")).value == b"1"
            assert time.monotonic() - started < 0.3 + 1.0
        nodes = [s.node for s in cluster.kv_requests()]
        assert nodes[0] == "n1" and "n2" in nodes


async def test_a_hedged_write_applies_once_when_the_hung_node_wakes_up() -> None:
    async with running(FakeCluster()) as cluster:
        cluster.fault("n1", "block")
        async with client(cluster, hedge_delay=0.2, timeout=5.0) as kv:
            assert await kv.put("a", b"v") == (1, 1)
            await cluster.arrived.wait()
            cluster.release.set()  # the stopped node resumes with the same seq in hand
            await asyncio.sleep(0)
            puts = cluster.kv_requests("PUT")
            assert [p.node for p in puts] == ["n1", "n2"]
            assert {p.headers["X-KV-Seq"] for p in puts} == {"1"}
        assert cluster.applies == 1


async def test_only_a_hung_node_fails_within_the_timeout_naming_it() -> None:
    async with running(FakeCluster()) as cluster:
        cluster.sticky_fault["n1"] = "block"
        async with client(cluster, "n1") as kv:
            started = time.monotonic()
            with pytest.raises(ClusterUnavailable) as caught:
                await kv.get("a", timeout=0.5)
            assert time.monotonic() - started < 0.5 + 0.3
            assert cluster.urls["n1"] in caught.value.message
            assert "no answer within 0.5 s" in caught.value.message
            with pytest.raises(OutcomeUnknown) as write:
                await kv.put("a", b"1", timeout=0.5)
            assert cluster.urls["n1"] in write.value.message


# ------------------------------------------------------------ causes, named


async def test_refused_everywhere_says_connection_refused_not_deadline() -> None:
    with refused_url() as a, refused_url() as b:
        async with AsyncKV([a, b], timeout=2.0, retry=NO_BACKOFF) as kv:
            with pytest.raises(ClusterUnavailable) as caught:
                await kv.get("k")
    message = caught.value.message
    assert f"{a}: connection refused" in message and f"{b}: connection refused" in message
    assert "deadline" not in message


async def test_a_peer_port_is_not_a_pyraftkv_endpoint_and_never_key_not_found() -> None:
    async with foreign_server() as url, AsyncKV([url], timeout=1.0, retry=NO_BACKOFF) as kv:
        for call in (kv.get("k"), kv.put("k", b"v"), kv.delete("k"), kv.status(), kv.members()):
            with pytest.raises(ClusterUnavailable) as caught:
                await call
            assert not isinstance(caught.value, NotFound | OutcomeUnknown)
            assert f"{url}: not a pyraftkv endpoint" in caught.value.message


async def test_a_foreign_endpoint_among_good_ones_is_skipped() -> None:
    async with (
        foreign_server() as url,
        running(FakeCluster()) as cluster,
        AsyncKV([url, cluster.urls["n2"]], retry=NO_BACKOFF) as kv,
    ):
        await kv.put("k", b"v")
        with pytest.raises(NotFound):
            await kv.get("missing")


async def test_an_untrusted_certificate_is_named(tmp_path: Path) -> None:
    with self_signed(tmp_path) as tls:
        async with foreign_server(tls) as url, AsyncKV([url], timeout=2.0) as kv:
            with pytest.raises(ClusterUnavailable) as caught:
                await kv.get("k")
    assert f"{url}: certificate problem" in caught.value.message


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999", "http://127.0.0.1:0", "http://127.0.0.1:port", "ftp://x:1"],
)
def test_bad_endpoint_urls_are_refused_with_the_reason(url: str) -> None:
    with pytest.raises(EndpointConfigError) as caught:
        normalize_url(url)
    assert url in caught.value.message


# ------------------------------------------------------------ blocking client


GC_SCRIPT = """
import gc, socket, sys
from kvstore.client import KV
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen()
kv = KV([f"http://127.0.0.1:{sock.getsockname()[1]}"], timeout=0.2)
try:
    kv.get("a")
except Exception:
    pass
if sys.argv[1] == "collect":
    del kv
    gc.collect()
sock.close()
print("done")
"""


@pytest.mark.parametrize("how", ["collect", "exit"])
def test_blocking_client_closes_its_session_when_dropped_or_at_exit(how: str) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", GC_SCRIPT, how],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.stdout == "done\n", done.stderr
    assert "Unclosed" not in done.stderr and "ResourceWarning" not in done.stderr, done.stderr
