"""The fast lane on a real cluster: on the leader and on a follower, the same requests
answered through the fast lane (a fresh connection) and through aiohttp (a connection
handed off by a first request to `/livez`, which the fast lane never serves) give the
same statuses, fields and bodies; open, and then with auth enabled (no token: the same
401; a user without the permission: the same 403). aiohttp's answers carry a Server
field and the fast lane's do not, which proves which path answered."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

import pytest

from tests.integration.harness import Cluster, wait_until
from tests.integration.test_auth import PASSWORDS, _setup

pytestmark = pytest.mark.integration


@dataclass
class Reply:
    status: int
    fields: list[tuple[str, str]]
    """Lower-case names, sorted, without Date, Server and Content-Length."""
    body: object
    """JSON with store revisions and the key prefix blanked, or the raw bytes."""
    aiohttp: bool


def _read(stream: socket.SocketIO, prefix: str) -> Reply:
    reader = stream
    status_line = reader.readline()
    fields = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        fields.append((name.lower(), value.strip()))
    raw = reader.read(int(dict(fields)["content-length"]))
    body: object = raw
    if raw[:1] == b"{":
        text = raw.decode().replace(prefix, "P")
        body = {n: "R" if "revision" in n else v for n, v in json.loads(text).items()}
    kept = sorted(
        (n, "R" if "revision" in n else v)
        for n, v in fields
        if n not in ("date", "server", "content-length")
    )
    return Reply(int(status_line.split()[1]), kept, body, "server" in dict(fields))


def _ask(url: str, requests: list[bytes], prefix: str, *, via_aiohttp: bool) -> list[Reply]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        stream = sock.makefile("rb")
        if via_aiohttp:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _read(stream, prefix).aiohttp
        replies = []
        for req in requests:
            sock.sendall(req)
            replies.append(_read(stream, prefix))
        return replies


def _req(method: str, target: str, body: bytes = b"", token: str | None = None) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: t\r\n"
    if method == "PUT":
        head += f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    return head.encode() + b"\r\n" + body


def _open_script(p: str) -> list[bytes]:
    return [
        _req("PUT", f"/v1/kv/{p}k", b"v1"),
        _req("GET", f"/v1/kv/{p}k"),
        _req("GET", f"/v1/kv/{p}k?consistency=stale"),
        _req("GET", f"/v1/kv/{p}missing"),
        _req("PUT", f"/v1/kv/{p}k?prev_version=5", b"v2"),
        _req("GET", f"/v1/kv/{p}k?consistency=sometimes"),
        _req("GET", f"/v1/kv/{p}k?nope=1"),
        _req("DELETE", f"/v1/kv/{p}k"),
        _req("DELETE", f"/v1/kv/{p}k"),
    ]


def _compare(cluster: Cluster, script: object, expected: list[int]) -> None:
    """Run `script(prefix)` on every node through both paths and compare."""
    for node in cluster.nodes:
        url = cluster.url(node)
        fast_p, slow_p = f"{node}-fast/", f"{node}-slow/"
        fast = _ask(url, script(fast_p), fast_p, via_aiohttp=False)  # type: ignore[operator]
        slow = _ask(url, script(slow_p), slow_p, via_aiohttp=True)  # type: ignore[operator]
        assert [r.status for r in fast] == expected, (node, fast)
        assert not any(r.aiohttp for r in fast) and all(r.aiohttp for r in slow)
        for a, b in zip(fast, slow, strict=True):
            assert (a.status, a.fields, a.body) == (b.status, b.fields, b.body), node


def _token(cluster: Cluster, user: str) -> str:
    body = json.dumps({"user": user, "password": PASSWORDS[user]}).encode()
    reply = cluster.http("n1", "POST", "/v1/auth/token", body=body, headers={})
    assert reply.status == 200, reply.body
    return str(json.loads(reply.body)["token"])


def test_both_paths_answer_alike_open_and_with_auth(cluster: Cluster) -> None:
    # The fixture waits for a majority to follow the leader; a node not told yet would
    # answer a write 503 `no_leader` on one path and not the other.
    for node in cluster.nodes:
        wait_until(
            lambda n=node: cluster.status(n).get("leader"), 15.0, f"{node} to know the leader"
        )
    _compare(cluster, _open_script, [200, 200, 200, 404, 409, 400, 400, 200, 404])
    _setup(cluster)
    alice, reader = _token(cluster, "alice"), _token(cluster, "reader")

    def with_auth(p: str) -> list[bytes]:
        return [
            _req("PUT", "/v1/kv/app/x", b"1"),  # no token
            _req("GET", "/v1/kv/app/a", token="forged"),
            _req("PUT", "/v1/kv/other/b", b"1", token=alice),  # outside alice's prefix
            _req("GET", "/v1/kv/other/b", token=reader),
            _req("PUT", "/v1/kv/app/a", b"1", token=reader),  # read-only role
            _req("GET", "/v1/kv/app/a", token=reader),
            _req("PUT", f"/v1/kv/app/{p}", b"1", token=alice),
            _req("DELETE", f"/v1/kv/app/{p}", token=alice),
        ]

    _compare(cluster, with_auth, [401, 401, 403, 403, 403, 200, 200, 200])
