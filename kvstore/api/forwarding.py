"""Forwarding to the leader: a follower has the leader serve what it cannot.

Only what is rare and needs the leader itself takes this second HTTP hop: membership
changes and reads (`GET /v1/members`, `/v1/snapshot` from a node that lost office) and
reads of lease TTLs, which run on the leader's clock. Client writes and linearizable
reads are served by every node through the peer link (kvstore.runtime.via_leader).

The answer codes keep one promise above all: 503 only for a request that was never
sent to a leader (safe to retry), 504 `timeout` for a write that was (or may have been)
sent, whatever happened to the leader afterwards.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from kvstore.api.common import LEADER_HEADER, SESSION_HEADERS, error
from kvstore.client.http_session import single_send_session
from kvstore.runtime.node import NodeRuntime

HOPS_HEADER = "X-KV-Forwarded"
_PASS_BACK = (
    "Content-Type",
    "X-KV-Version",
    "X-KV-Create-Revision",
    "X-KV-Mod-Revision",
    "X-KV-Revision",
    LEADER_HEADER,
)
MAX_HOPS = 2
"""A forwarded request is forwarded at most once more (the leader moved meanwhile)."""

PROXY_KEY = web.AppKey("proxy_session", aiohttp.ClientSession)
FORWARD_SSL_KEY = web.AppKey("forward_ssl", ssl.SSLContext)
"""With https client URLs: verifies the leader (cluster CA, host name), presents this
node's certificate. Set by kvstore.server; never a context that skips verification."""


async def proxy_session(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one connection pool to the leader, never re-sending a request. No
    cookie jar: requests of different clients share the pool, so nothing one answer
    sets may ride along on another client's request (and filtering the jar cost each
    forwarded request CPU)."""
    tls = app.get(FORWARD_SSL_KEY)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ssl=tls or True)
    async with single_send_session(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        app[PROXY_KEY] = session
        yield


async def forward_to_leader(
    request: web.Request,
    runtime: NodeRuntime,
    body: bytes,
    deadline: float,
    *,
    is_write: bool,
    unserved: str,
) -> web.StreamResponse | None:
    """One attempt to have the leader serve a request this node cannot. Returns the
    answer to give, or None when the caller should look again: this node became the
    leader, or another leader emerged after the known one proved unreachable."""
    leader = await _find_leader(runtime, deadline)
    if leader is None:
        return error(503, "no_leader", f"no leader is known; {unserved}")
    if leader == runtime.node_id:
        return None
    answer = await _forward(request, runtime, leader, body, deadline, is_write=is_write)
    if answer is not None:
        return answer
    if not await _other_leader(runtime, leader, deadline):
        return error(503, "no_leader", f"leader {leader} is unreachable; {unserved}")
    return None


async def _find_leader(runtime: NodeRuntime, deadline: float) -> str | None:
    """The leader, waiting up to about two election timeouts for one to emerge."""
    remaining = deadline - runtime.loop.time()
    return await runtime.wait_for_leader(min(remaining, 2 * runtime.election_timeout_s))


async def _other_leader(runtime: NodeRuntime, unreachable: str, deadline: float) -> bool:
    """Wait (about two election timeouts at most) for a leader other than `unreachable`."""
    loop = runtime.loop
    until = min(deadline, loop.time() + 2 * runtime.election_timeout_s)
    while loop.time() < until:
        await asyncio.sleep(runtime.tuning.tick_ms / 1000)
        if runtime.leader_id != unreachable:
            return True
    return False


async def _forward(
    request: web.Request,
    runtime: NodeRuntime,
    leader: str,
    body: bytes,
    deadline: float,
    *,
    is_write: bool,
) -> web.StreamResponse | None:
    """Proxy to the leader. None when the connection never opened, so nothing was sent
    (refused, or a connect timeout: aiohttp's ConnectionTimeoutError is not a
    ClientConnectorError); any later failure leaves a write's outcome unknown (504)."""
    hops = request.headers.get(HOPS_HEADER, "0")
    hops_n = int(hops) if hops.isdigit() else MAX_HOPS
    if hops_n >= MAX_HOPS:
        return error(503, "no_leader", "the leader moved while the request was forwarded")
    passed = (*SESSION_HEADERS, "Accept", "Authorization")  # the leader checks the token again
    headers = {h: request.headers[h] for h in passed if h in request.headers}
    headers[HOPS_HEADER] = str(hops_n + 1)
    if body:
        headers["Content-Type"] = "application/octet-stream"
    leader_url = runtime.membership.view.client_url(leader)
    if leader_url is None:
        return None  # not sent: this node has not read the new leader's address yet
    url = leader_url.rstrip("/") + request.raw_path
    loop = runtime.loop
    timeout = aiohttp.ClientTimeout(total=max(0.1, deadline - loop.time()) + 0.5, sock_connect=0.5)
    session = request.app[PROXY_KEY]
    try:
        async with session.request(
            request.method, url, data=body or None, headers=headers, timeout=timeout
        ) as resp:
            data = await resp.read()
            out = {h: resp.headers[h] for h in _PASS_BACK if h in resp.headers}
            out.setdefault(LEADER_HEADER, leader)
            return web.Response(status=resp.status, body=data, headers=out)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
        return None
    except (TimeoutError, aiohttp.ClientError) as exc:
        if is_write:
            return error(504, "timeout", f"outcome unknown: forwarding to {leader} failed: {exc!r}")
        return error(503, "no_leader", f"forwarding the read to {leader} failed: {exc!r}")
