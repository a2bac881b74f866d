"""The fast lane (kvstore.api.fast_lane) over real sockets to one in-process node: it
answers byte for byte what the aiohttp route answers (open and with auth on), keeps
connections alive, answers pipelined requests in order, takes requests in any split,
closes HTTP/1.0 and `Connection: close` connections, leaves 413s, chunked bodies and
every other route to aiohttp on the same connection, counts its requests in /metrics,
closes a trickled body at the receive deadline and an idle connection quietly, stops
reading while its answers cannot leave, closes at shutdown, and gives damaged requests
aiohttp's answers.

The node listens twice: through the fast lane and through aiohttp alone (the
KV_FAST_LANE=off path). aiohttp's answers carry a Server field, the fast
lane's do not: that tells which path answered."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from aiohttp import web

from consensus import MemoryStorage
from kvstore.api.app import make_client_app
from kvstore.api.connections import ConnectionGuard
from kvstore.api.fast_lane import FastLane
from kvstore.chaos.ports import free_ports
from kvstore.config import ClusterConfig, NodeConfig, Tuning
from kvstore.runtime.node import NodeRuntime
from kvstore.runtime.requests import ProposalOverwritten, ProposalTimeout, ReadAborted, Waiter

pytestmark = pytest.mark.timeout(30)

MAX_VALUE = 1000
RECEIVE_S = 0.5

# ---------------------------------------------------------------------- one node, two ports


@dataclass
class Node:
    fast: int
    plain: int
    runtime: NodeRuntime
    lane: FastLane


@pytest.fixture
async def node(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Node]:
    caplog.set_level(logging.INFO)
    client, peer, fast, plain = free_ports(4)
    me = NodeConfig(
        id="n1",
        client_url=f"http://127.0.0.1:{client}",
        peer_url=f"http://127.0.0.1:{peer}",
        client_host="127.0.0.1",
        client_port=client,
        peer_host="127.0.0.1",
        peer_port=peer,
        data_dir=tmp_path / "n1",
    )
    tuning = Tuning(tick_ms=5, max_value_bytes=MAX_VALUE, request_timeout_ms=2000)
    runtime = NodeRuntime(ClusterConfig("t", tmp_path, (me,), tuning), "n1", MemoryStorage())
    app = make_client_app(runtime, MAX_VALUE + 1)
    guard = ConnectionGuard(RECEIVE_S)
    guard.install(app)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=5.0)
    lane = FastLane(app, runner, guard, idle_s=5.0)
    await runner.setup()
    await runtime.start()
    listeners = [
        await guard.listen(runner, "127.0.0.1", fast, None, lane.protocol),
        await guard.listen(runner, "127.0.0.1", plain, None),
    ]
    try:
        await asyncio.wait_for(runtime.wait_for_leader(5.0), 6.0)
        yield Node(fast, plain, runtime, lane)
    finally:
        for listener in listeners:
            listener.close()
        await runner.cleanup()
        await runtime.stop()


@dataclass
class Reply:
    status: int
    fields: list[tuple[str, str]]
    """Without Date (it changes) and Server (aiohttp's only), lower-case names, sorted."""
    body: bytes
    aiohttp: bool
    """aiohttp answered (it writes a Server field)."""

    def json(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.body)
        return result


async def _reply(reader: asyncio.StreamReader) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    status_line, *lines = head.decode().split("\r\n")[:-2]
    fields = [(n.lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines)]
    length = int(dict(fields)["content-length"])
    body = await asyncio.wait_for(reader.readexactly(length), 5.0)
    kept = sorted((n, v) for n, v in fields if n not in ("date", "server"))
    return Reply(int(status_line.split()[1]), kept, body, "server" in dict(fields))


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until `condition` holds or `timeout` passes (the caller asserts)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


async def _exchange(
    port: int, *requests: bytes, answers: int | None = None, pace: int = 0
) -> list[Reply]:
    """Send `requests` on one connection (all at once; or `pace` bytes at a time with a
    pause between), then read `answers` replies (one per request by default)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data = b"".join(requests)
        if pace:
            for i in range(0, len(data), pace):
                writer.write(data[i : i + pace])
                await writer.drain()
                await asyncio.sleep(0.001)
        else:
            writer.write(data)
        return [await _reply(reader) for _ in range(answers or len(requests))]
    finally:
        writer.close()


def _req(method: str, target: str, body: bytes = b"", **fields: str) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: t\r\n"
    if body or method == "PUT":
        head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in fields.items())
    return head.encode() + b"\r\n" + body


def _script(p: str) -> list[bytes]:
    """Requests on keys under `p` (each path runs it on its own keys)."""
    return [
        _req("PUT", f"/v1/kv/{p}k1", b"v1", Content_Type="application/octet-stream"),
        _req("GET", f"/v1/kv/{p}k1"),
        _req("GET", f"/v1/kv/{p}k1?consistency=stale"),
        _req("GET", f"/v1/kv/{p}k1?consistency=linearizable"),
        _req("GET", f"/v1/kv/{p}missing"),
        _req("PUT", f"/v1/kv/{p}k1?prev_version=7", b"v2"),  # 409 version_mismatch
        _req("PUT", f"/v1/kv/{p}k1?prev_version=1", b"v3"),
        _req("GET", f"/v1/kv/{p}k1?consistency=maybe"),  # 400 bad_consistency
        _req("GET", f"/v1/kv/{p}k1?typo=1"),  # 400 naming it
        _req("GET", f"/v1/kv/{p}k1?consistency=stale&consistency=stale"),  # repeated
        _req("PUT", f"/v1/kv/{p}k2", b"x", X_KV_Client_Id=p),  # 400 bad_header
        _req("PUT", f"/v1/kv/{p}k2", b"x", X_KV_Client_Id=p, X_KV_Seq="1"),
        _req("PUT", f"/v1/kv/{p}k2", b"x", X_KV_Client_Id=p, X_KV_Seq="1"),  # once only
        _req("PUT", f"/v1/kv/{p}k3?fence_lock=l", b"x"),  # 400 bad_fence
        _req("PUT", f"/v1/kv/{p}k3?lease=99", b"x"),  # 404 lease_not_found
        _req("PUT", f"/v1/kv/{p}k3?lease=0", b"x"),  # 400 bad_lease
        _req("PUT", f"/v1/kv/{p}caf%C3%A9%2Fx", b""),  # an empty value, a decoded key
        _req("GET", f"/v1/kv/{p}caf%C3%A9%2Fx"),
        _req("DELETE", f"/v1/kv/{p}k1?prev_version=1"),  # 409
        _req("DELETE", f"/v1/kv/{p}k1"),
        _req("DELETE", f"/v1/kv/{p}k1"),  # 404
        # Handed off: keys the route refuses or aiohttp's router may read otherwise.
        _req("GET", f"/v1/kv/{p}a%0Ab"),
        _req("GET", f"/v1/kv/{p}x/../y"),
        _req("GET", f"/v1/kv/{p}%ZZ"),
        _req("PUT", f"/v1/kv/{p}" + "k" * 1025, b"x"),  # key_too_large, 400
        _req("PUT", f"/v1/kv/{p}big", b"x" * (MAX_VALUE + 1)),  # 413: handed off
    ]


async def test_both_paths_give_the_same_answers(node: Node) -> None:
    """The script through the fast lane and through aiohttp (on keys of its own): the
    same statuses, fields and bodies, store revisions aside."""
    fast = [(await _exchange(node.fast, req))[0] for req in _script("a")]
    plain = [(await _exchange(node.plain, req))[0] for req in _script("b")]
    for req, a, b in zip(_script("a"), fast, plain, strict=True):
        assert b.aiohttp
        assert a.status == b.status, req
        assert _unrevisioned(a) == _unrevisioned(b, "b", "a"), req
    assert [r.aiohttp for r in fast] == [False] * (len(fast) - 5) + [True] * 5
    assert [r.status for r in fast[:7]] == [200, 200, 200, 200, 404, 409, 200]
    assert fast[7].json()["error"] == "bad_consistency"
    assert fast[8].json() == {"error": "bad_query", "message": "unknown query parameter 'typo'"}
    assert "given twice" in str(fast[9].json()["message"])
    assert [r.status for r in fast[10:13]] == [400, 200, 200]
    assert fast[12].body == fast[11].body  # the same write, answered once more
    assert fast[-1].status == 413 and fast[-1].json()["error"] == "value_too_large"
    assert fast[1].body == b"v1" and ("content-type", "application/octet-stream") in fast[1].fields
    assert ("x-kv-leader", "n1") in fast[0].fields


def _unrevisioned(reply: Reply, old: str = "", new: str = "") -> object:
    """The answer with its store revisions blanked (the second run starts later) and
    its key prefix `old` read as `new`."""
    fields = [(n, "R" if "revision" in n else v) for n, v in reply.fields]
    if reply.body[:1] != b"{":
        return fields, reply.body
    text = reply.body.decode().replace(f"'{old}", f"'{new}")
    body = json.loads(text.replace(f"/v1/kv/{old}", f"/v1/kv/{new}"))
    blanked = {n: "R" if "revision" in n else v for n, v in body.items()}
    return [f for f in fields if f[0] != "content-length"], blanked


def _txn(p: str, document: object, target: str = "/v1/txn", **fields: str) -> bytes:
    return _req("POST", target, json.dumps(document).replace("P/", p).encode(), **fields)


def _txn_script(p: str) -> list[bytes]:
    """Transactions on keys under `p` (each path runs it on its own keys)."""
    put = {"put": {"key": "P/a", "text": "1"}}
    first = {"compare": [{"key": "P/a", "target": "version", "op": "=", "value": 0}]}
    ranged = {"range": {"prefix": "P/"}}
    return [
        _txn(p, {**first, "success": [put], "failure": [{"get": {"key": "P/a"}}]}),
        _txn(p, {**first, "success": [put], "failure": [{"get": {"key": "P/a"}}]}),  # failed
        _txn(p, {"success": [ranged]}),  # no writes: a linearizable read
        _txn(p, {"success": [ranged]}, Accept="application/msgpack"),
        _txn(p, {"success": [{"put": {"key": "P/b", "text": "2"}}, {"delete": {"key": "P/a"}}]}),
        _txn(p, {"success": [{"put": {"key": "P/b", "text": "x", "lease": 99}}]}),  # 404
        _txn(p, {"success": [put]}, X_KV_Client_Id=p),  # 400 bad_header
        _txn(p, {"success": [put]}, X_KV_Client_Id=p, X_KV_Seq="1"),
        _txn(p, {"success": [put]}, X_KV_Client_Id=p, X_KV_Seq="1"),  # answered once more
        _txn(p, {"success": [put]}, "/v1/txn?fence_lock=l"),  # 400: no fence_token
        _txn(p, {"success": [put]}, "/v1/txn?typo=1"),  # 400 bad_query
        _txn(p, {"success": [{"put": {"key": "P/c"}}]}),  # 400 bad_txn: no value
        _req("POST", "/v1/txn", b"{not json"),
        _req("POST", "/v1/txn"),  # no body at all
        # Handed off: another method on either route, bodies over the value limit.
        _req("GET", "/v1/txn"),
        _req("POST", f"/v1/kv/{p}a", b"x"),
        _txn(p, {"success": [{"put": {"key": "P/d", "text": "x" * MAX_VALUE}}]}),
    ]


def _txn_view(reply: Reply, prefix: str) -> object:
    """A transaction's answer with its revisions blanked (the second run starts later)
    and its key prefix `prefix` read as P/, the body decoded."""
    fields = [(n, "R" if "revision" in n else v) for n, v in reply.fields if n != "content-length"]
    if ("content-type", "application/msgpack") in reply.fields:
        body = msgpack.unpackb(reply.body)
    else:
        body = json.loads(reply.body)

    def blank(item: object) -> object:
        if isinstance(item, dict):
            return {k: "R" if "revision" in k else blank(v) for k, v in item.items()}
        if isinstance(item, list):
            return [blank(v) for v in item]
        if isinstance(item, str):
            return item.replace(prefix, "P/")
        if isinstance(item, bytes):
            return item.replace(prefix.encode(), b"P/")
        return item

    return reply.status, fields, blank(body)


async def test_both_paths_give_the_same_transaction_answers(node: Node) -> None:
    """POST /v1/txn through the fast lane and through aiohttp (on keys of its own): the
    same statuses, fields and bodies, msgpack and refusals included; other methods on
    the route and bodies over the value limit are left to aiohttp."""
    fast = [(await _exchange(node.fast, req))[0] for req in _txn_script("p1/")]
    plain = [(await _exchange(node.plain, req))[0] for req in _txn_script("p2/")]
    for req, a, b in zip(_txn_script("p1/"), fast, plain, strict=True):
        assert b.aiohttp
        assert _txn_view(a, "p1/") == _txn_view(b, "p2/"), req
    assert [r.aiohttp for r in fast] == [False] * (len(fast) - 3) + [True] * 3
    statuses = [r.status for r in fast]
    assert statuses == [200] * 5 + [404, 400, 200, 200] + [400] * 5 + [405, 405, 413]
    assert fast[0].json()["succeeded"] is True and fast[1].json()["succeeded"] is False
    assert [kv["key"] for kv in fast[2].json()["results"][0]["range"]["kvs"]] == ["p1/a"]
    assert msgpack.unpackb(fast[3].body)["results"][0]["range"]["kvs"][0]["value"] == b"1"
    assert fast[8].body == fast[7].body  # the same transaction, answered once more
    errors = [fast[i].json()["error"] for i in range(9, 14)]
    assert errors == ["bad_fence", "bad_query", "bad_txn", "bad_txn", "bad_txn"]
    assert fast[-1].json()["error"] == "txn_too_large"
    assert ("x-kv-leader", "n1") in fast[0].fields
    assert ("content-type", "application/json; charset=utf-8") in fast[0].fields
    assert ("content-type", "application/msgpack") in fast[3].fields


async def test_pipelined_requests_are_answered_in_order_then_handed_off(node: Node) -> None:
    """Three requests in one write, then a route of aiohttp's, then a key again: the
    first three come from the fast lane, the rest from aiohttp on the same connection."""
    replies = await _exchange(
        node.fast,
        _req("PUT", "/v1/kv/p", b"1"),
        _req("PUT", "/v1/kv/p", b"22"),
        _req("GET", "/v1/kv/p"),
        _req("GET", "/livez"),
        _req("GET", "/v1/kv/p"),
    )
    assert [r.status for r in replies] == [200] * 5
    assert [r.json()["version"] for r in replies[:2]] == [1, 2]
    assert replies[2].body == replies[4].body == b"22"
    assert [r.aiohttp for r in replies] == [False, False, False, True, True]


async def test_requests_split_anywhere_are_served(node: Node) -> None:
    """A byte at a time, and a body cut into reads of 7 bytes."""
    replies = await _exchange(
        node.fast, _req("PUT", "/v1/kv/s", b"value"), _req("GET", "/v1/kv/s"), pace=1
    )
    assert [r.status for r in replies] == [200, 200] and replies[1].body == b"value"
    body = bytes(range(200)) * 4
    replies = await _exchange(
        node.fast, _req("PUT", "/v1/kv/s", body), _req("GET", "/v1/kv/s"), pace=7
    )
    assert replies[1].body == body and not replies[1].aiohttp


async def test_http_1_0_and_connection_close_end_the_connection(node: Node) -> None:
    for raw, line in (
        (b"GET /v1/kv/nothing HTTP/1.0\r\n\r\n", b"HTTP/1.0 404 Not Found\r\n"),
        (b"GET /v1/kv/nothing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"HTTP/1.1 404"),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", node.fast)
        writer.write(raw + raw)  # the second is never read
        everything = await asyncio.wait_for(reader.read(), 5.0)  # until the server closes
        writer.close()
        assert everything.startswith(line)
        assert everything.count(b"HTTP/1.") == 1
        assert b"\r\nDate: " in everything and b"\r\nServer: " not in everything
        assert (b"Connection: close" in everything) == raw.startswith(
            b"GET /v1/kv/nothing HTTP/1.1"
        )


async def test_keep_alive_serves_one_request_after_another(node: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.fast)
    try:
        for i in range(5):
            writer.write(_req("PUT", "/v1/kv/ka", str(i).encode()))
            reply = await _reply(reader)
            assert reply.status == 200 and reply.json()["version"] == i + 1
    finally:
        writer.close()


async def test_what_aiohttp_serves_after_a_handoff(node: Node) -> None:
    """A chunked body, Expect: 100-continue, and garbage (aiohttp's 400)."""
    chunked = b"PUT /v1/kv/c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"2\r\nab\r\n0\r\n\r\n"
    (put, get) = await _exchange(node.fast, chunked, _req("GET", "/v1/kv/c"))
    assert put.status == 200 and put.aiohttp and get.body == b"ab"
    reader, writer = await asyncio.open_connection("127.0.0.1", node.fast)
    writer.write(
        b"PUT /v1/kv/e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert (await asyncio.wait_for(reader.readline(), 5.0)).startswith(b"HTTP/1.1 100")
    await reader.readline()
    writer.write(b"ok")
    assert (await _reply(reader)).status == 200
    writer.close()
    (bad,) = await _exchange(node.fast, b"HELLO? \x00\x01\x02\r\n\r\n")
    assert bad.status == 400


async def test_the_fast_lane_counts_in_metrics(node: Node) -> None:
    def count(text: str, op: str, outcome: str) -> float:
        name = f'kv_http_requests_total{{op="{op}",outcome="{outcome}"}} '
        lines = [line for line in text.splitlines() if line.startswith(name)]
        return float(lines[0].split()[-1]) if lines else 0.0

    (before,) = await _exchange(node.plain, _req("GET", "/metrics"))
    replies = await _exchange(
        node.fast,
        _req("PUT", "/v1/kv/m", b"1"),
        _req("GET", "/v1/kv/m"),
        _req("GET", "/v1/kv/nope"),
        _req("POST", "/v1/txn", b'{"success": [{"get": {"key": "m"}}]}'),
    )
    assert not any(r.aiohttp for r in replies)
    (middle,) = await _exchange(node.plain, _req("GET", "/metrics"))
    (plain,) = await _exchange(node.plain, _req("POST", "/v1/txn", b'{"success": []}'))
    assert plain.aiohttp
    (after,) = await _exchange(node.plain, _req("GET", "/metrics"))
    old, mid, new = before.body.decode(), middle.body.decode(), after.body.decode()
    assert count(mid, "put", "ok") == count(old, "put", "ok") + 1
    assert count(mid, "get", "ok") == count(old, "get", "ok") + 1
    assert count(mid, "get", "not_found") == count(old, "get", "not_found") + 1
    txn = "POST /v1/txn"  # the same label on both paths
    assert count(mid, txn, "ok") == count(old, txn, "ok") + 1
    assert count(new, txn, "ok") == count(mid, txn, "ok") + 1


async def test_a_trickled_body_is_closed_at_the_receive_deadline(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.fast)
    writer.write(b"PUT /v1/kv/t HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nab")
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed, nothing answered
    assert loop.time() - start < RECEIVE_S + 2.0
    writer.close()
    assert any("the body of PUT /v1/kv/t was not received" in r.message for r in caplog.records)


async def test_auth_refusals_are_the_same_on_both_paths(node: Node) -> None:
    """No token: the same 401 (with WWW-Authenticate); a user without permission on the
    key, alone or in a transaction: the same 403; a permitted write: 200 on both."""
    setup = [
        _req("PUT", "/v1/auth/users/root", b'{"password": "rpw"}'),
        _req("PUT", "/v1/auth/users/root/roles/root"),
        _req("PUT", "/v1/auth/users/alice", b'{"password": "apw"}'),
        _req("PUT", "/v1/auth/roles/app"),
        _req("POST", "/v1/auth/roles/app/permissions?access=readwrite&prefix=app/"),
        _req("PUT", "/v1/auth/users/alice/roles/app"),
        _req("POST", "/v1/auth/enable"),
    ]
    for req in setup:
        (reply,) = await _exchange(node.plain, req)
        assert reply.status == 200, (req, reply.body)
    login = _req("POST", "/v1/auth/token", b'{"user": "alice", "password": "apw"}')
    (token,) = await _exchange(node.plain, login)
    bearer = f"Bearer {token.json()['token']}"
    cases = [
        _req("PUT", "/v1/kv/app/x", b"1"),
        _req("GET", "/v1/kv/app/x", Authorization="Bearer nonsense"),
        _req("GET", "/v1/kv/app/x", Authorization="Basic abc"),
        _req("PUT", "/v1/kv/other", b"1", Authorization=bearer),
        _req("GET", "/v1/kv/other", Authorization=bearer),
        _req("POST", "/v1/txn", b'{"success": [{"put": {"key": "app/t", "text": "1"}}]}'),
        _req(
            "POST", "/v1/txn", b'{"success": [{"delete": {"key": "other"}}]}', Authorization=bearer
        ),
        _req("POST", "/v1/txn", b'{"success": [{"get": {"key": "other"}}]}', Authorization=bearer),
        _req("PUT", "/v1/kv/app/x", b"1", Authorization=bearer),
    ]
    fast = [(await _exchange(node.fast, req))[0] for req in cases]
    plain = [(await _exchange(node.plain, req))[0] for req in cases]
    assert [r.status for r in fast] == [401, 401, 401, 403, 403, 401, 403, 403, 200]
    assert not any(r.aiohttp for r in fast)
    for a, b in zip(fast[:-1], plain[:-1], strict=True):
        assert (a.status, a.fields, a.body) == (b.status, b.fields, b.body)
    assert ("www-authenticate", "Bearer") in fast[0].fields
    assert plain[-1].status == 200 and plain[-1].json()["version"] == 2


_SEEDS = [
    b"GET /v1/kv/abc HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /v1/kv/abc?consistency=stale HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n",
    b"DELETE /v1/kv/zz%2Fq HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    b"GET /v1/kv/a/b/c HTTP/1.0\r\n\r\n",
    b"DELETE /v1/kv/x?prev_version=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"POST /v1/txn HTTP/1.1\r\nHost: t\r\nContent-Length: 35\r\n\r\n"
    b'{"success":[{"get":{"key":"abc"}}]}',
]
_NOISE = b" \t\r\n:/%?=&#+;,.0Aa\x00\x7f\x80\xff-_~@!*'()$[]{}|\\^`\"<>"


async def test_mangled_requests_get_what_aiohttp_answers(node: Node) -> None:
    """Seeded random damage (1 to 3 bytes inserted, deleted or changed) to requests
    that change nothing: whatever the fast lane does with each, the status line and
    body are aiohttp's (a head it is unsure of goes to aiohttp, whose 400s stand)."""
    rnd = random.Random(17)
    served = 0
    for _ in range(150):
        data = bytearray(rnd.choice(_SEEDS))
        damageable = _damageable(data)
        for _ in range(rnd.randint(1, 3)):
            at, op = rnd.randrange(damageable), rnd.random()
            if op < 0.4:
                data[at:at] = bytes([rnd.choice(_NOISE)])
            elif op < 0.7:
                del data[at]
            else:
                data[at] = rnd.choice(_NOISE)
        if b"\r\n\r\n" not in data:
            continue  # both would wait for the rest of the head
        fast, plain = (await _raw_answer(node.fast, data), await _raw_answer(node.plain, data))
        assert _first_answer(fast) == _first_answer(plain), bytes(data)
        served += fast.startswith(b"HTTP/") and b"\r\nServer:" not in fast.split(b"\r\n\r\n")[0]
    assert served > 5  # some of them were the fast lane's to answer


def _damageable(seed: bytes | bytearray) -> int:
    """How much of a seed the damage may touch: a head without a body all but its end;
    with a body, only what comes before its Content-Length. A body of another length
    than declared leaves pipelined garbage, which aiohttp answers with its 400 before
    (and instead of) the request in front of it, while the fast lane answers both."""
    head, _, body = bytes(seed).partition(b"\r\n\r\n")
    return head.index(b"Content-Length") if body else len(seed) - 4


async def _raw_answer(port: int, data: bytes | bytearray) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(65536), 0.5)
    except TimeoutError:
        return b"(waiting for more)"
    finally:
        writer.close()


def _first_answer(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], re.sub(rb'"revision": \d+', b"R", body)


async def test_an_idle_keep_alive_connection_is_closed_quietly(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    node.lane.idle_s = 0.3
    reader, writer = await asyncio.open_connection("127.0.0.1", node.fast)
    writer.write(_req("GET", "/v1/kv/idle"))
    assert (await _reply(reader)).status == 404
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    assert 0.25 < loop.time() - start < 3.0
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class _Transport:
    """Just enough of a transport to watch the fast lane's flow control."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closing = False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


async def test_reading_pauses_while_answers_cannot_leave(node: Node) -> None:
    """Writing paused (the client does not read): nothing more is answered, and reading
    pauses once more than a request's worth waits; both resume with writing."""
    connection, transport = node.lane.protocol(), _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.pause_writing()
    assert not transport.reading
    connection.resume_writing()
    assert transport.reading
    connection.data_received(_req("GET", "/v1/kv/bp"))  # answered...
    connection.pause_writing()  # ... while the client stops reading
    many = _req("GET", "/v1/kv/bp") * (node.lane.max_buffered // 30)
    connection.data_received(many)
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert len(transport.written) == 1 and not transport.reading
    connection.resume_writing()
    await _until(lambda: len(transport.written) >= 1 + many.count(b"GET"))
    assert len(transport.written) == 1 + many.count(b"GET")
    assert transport.reading and all(w.startswith(b"HTTP/1.1 404") for w in transport.written)
    connection.connection_lost(None)


async def test_shutdown_closes_idle_connections_and_busy_ones_after_the_answer(
    node: Node,
) -> None:
    (idle, idle_t), (busy, busy_t) = [(node.lane.protocol(), _Transport()) for _ in range(2)]
    idle.connection_made(idle_t)  # type: ignore[arg-type]
    busy.connection_made(busy_t)  # type: ignore[arg-type]
    busy.data_received(_req("PUT", "/v1/kv/sd", b"x"))  # answered once committed
    await node.lane.shutdown()
    assert idle_t.closing and not busy_t.closing and not busy_t.written
    await _until(lambda: busy_t.closing)
    (answer,) = busy_t.written
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close\r\n" in answer
    assert busy_t.closing


async def test_a_read_whose_index_did_not_come_is_served_by_the_full_path(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET waits for its read index without a task (ViaLeader.confirm); when it gets
    an error instead (here a leader change, once), kv_answer's path retries by the same
    deadline, and the pipelined request behind it is still answered in order."""
    await _exchange(node.fast, _req("PUT", "/v1/kv/fb", b"v"))
    via = node.runtime.via_leader
    real, failed = via.confirm, []

    def confirm(done: Callable[[int | Exception], None], deadline: float) -> None:
        if not failed:
            failed.append(deadline)
            done(ReadAborted("leadership changed before the read was confirmed"))
            return
        real(done, deadline)

    monkeypatch.setattr(via, "confirm", confirm)
    first, second = await _exchange(node.fast, _req("GET", "/v1/kv/fb"), _req("GET", "/v1/kv/fx"))
    assert failed and not first.aiohttp
    assert (first.status, first.body, second.status) == (200, b"v", 404)


async def test_a_write_not_proposed_at_first_is_retried_by_the_full_path(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUT is proposed by callback (NodeRuntime.submit, no task); when its first
    attempt certainly failed (here its entry lost its index to another, once), kv_answer's
    path proposes it again by the same deadline, and the pipelined request behind it is
    still answered in order."""
    runtime = node.runtime
    real, attempts = runtime.submit, []

    def submit(command: object, deadline: float, waiter: Waiter) -> None:
        attempts.append(deadline)
        if len(attempts) == 1:
            waiter.set_exception(ProposalOverwritten("another entry took its index"))
            return
        real(command, deadline, waiter)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "submit", submit)
    first, second = await _exchange(
        node.fast, _req("PUT", "/v1/kv/wr", b"v"), _req("GET", "/v1/kv/wr")
    )
    assert not first.aiohttp and first.status == 200, first
    assert len(attempts) == 2 and attempts[1] == pytest.approx(attempts[0])  # same deadline
    assert (second.status, second.body) == (200, b"v")


async def test_a_write_whose_outcome_is_unknown_is_a_timeout_and_never_proposed_again(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write handed to the core whose wait ended without its entry (ProposalTimeout)
    may have happened: 504 `timeout`, and it is not proposed a second time."""
    runtime = node.runtime
    attempts: list[float] = []

    def submit(command: object, deadline: float, waiter: Waiter) -> None:
        attempts.append(deadline)
        waiter.set_exception(ProposalTimeout("entry 9 (term 1) not applied in time"))

    monkeypatch.setattr(runtime, "submit", submit)
    (reply,) = await _exchange(node.fast, _req("PUT", "/v1/kv/wt", b"v"))
    assert (reply.status, reply.json()["error"], reply.aiohttp) == (504, "timeout", False)
    assert len(attempts) == 1, "a write whose outcome was unknown was proposed again"


async def test_a_bug_while_answering_a_write_does_not_stop_the_node(
    node: Node, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A write is answered from inside the apply loop (Callback): a bug there is logged
    (that request goes unanswered, as a read's in the same place), and the loop, and
    the node, go on."""
    lane, real = node.lane, node.lane.count

    def count(head: object, answer: object, started: float) -> None:
        raise RuntimeError("a bug in counting")

    monkeypatch.setattr(lane, "count", count)
    _, writer = await asyncio.open_connection("127.0.0.1", node.fast)
    writer.write(_req("PUT", "/v1/kv/bug", b"v"))
    await _until(lambda: "a write's answer failed" in caplog.text)
    writer.close()
    monkeypatch.setattr(lane, "count", real)
    assert node.runtime.fatal_error is None, "a bug in a write's answer stopped the node"
    (reply,) = await _exchange(node.fast, _req("GET", "/v1/kv/bug"))
    assert (reply.status, reply.body) == (200, b"v")  # the write itself took effect
