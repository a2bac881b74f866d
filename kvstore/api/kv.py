"""The client HTTP API of the contract, served by every node.

The leader proposes writes and serves reads itself; a follower forwards writes and
linearizable reads to the leader's client_url and passes the answer through, so a
client may talk to any node. The answer codes keep one promise above all: 503 only
for a request that was never proposed (safe to retry), 504 `timeout` for a write that
was (or may have been) proposed and is not confirmed, whatever happened to the leader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator
from urllib.parse import unquote_to_bytes

import aiohttp
from aiohttp import web

from consensus import NotLeader, ProposalDropped
from kvstore.api.status import status_json
from kvstore.client.http_session import single_send_session
from kvstore.runtime.node import NodeRuntime
from kvstore.runtime.requests import (
    ProposalOverwritten,
    ProposalTimeout,
    ReadAborted,
    RuntimeStopped,
)
from kvstore.state.commands import Command, Delete, Put, SessionRef
from kvstore.state.machine import (
    ApplyResult,
    DeleteResult,
    NotFoundResult,
    PutResult,
    SessionExpiredResult,
    VersionMismatchResult,
)

log = logging.getLogger(__name__)

KV_PREFIX = "/v1/kv/"
LEADER_HEADER = "X-KV-Leader"
HOPS_HEADER = "X-KV-Forwarded"
SESSION_HEADERS = ("X-KV-Client-Id", "X-KV-Seq", "X-KV-First-Outstanding")
_PASS_BACK = ("Content-Type", "X-KV-Version", "X-KV-Mod-Revision", LEADER_HEADER)
MAX_HOPS = 2
"""A forwarded request is forwarded at most once more (the leader moved meanwhile)."""

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UINT = re.compile(r"[0-9]{1,18}")
_JSON = "application/json"

UNSAFE_LOCAL_READS = os.environ.get("KV_UNSAFE_STALE_READS") == "1"
"""Deliberately unsafe, for tests only: followers answer default (linearizable) reads
from their own state without asking the leader, so `kv kvstore.chaos` can be shown to catch
the stale reads this causes. Never set it on a real cluster."""

RUNTIME_KEY = web.AppKey("runtime", NodeRuntime)
PROXY_KEY = web.AppKey("proxy_session", aiohttp.ClientSession)


class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error(status: int, code: str, message: str, **extra: object) -> web.Response:
    """Every error answer: `{"error": CODE, "message": TEXT}` plus any extra fields."""
    return web.json_response({"error": code, "message": message, **extra}, status=status)


def _json(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type=_JSON)


# ---------------------------------------------------------------------- request parsing


def parse_key(raw_path: str, max_key_bytes: int) -> str:
    """The key from the raw path, strictly percent-decoded and checked as UTF-8."""
    raw = raw_path.split("?", 1)[0][len(KV_PREFIX) :]
    if _BAD_PERCENT.search(raw):
        raise BadRequest(400, "bad_key", "malformed percent-encoding in the key")
    try:
        key_bytes = unquote_to_bytes(raw)
        key = key_bytes.decode("utf-8")
    except (UnicodeError, ValueError):
        raise BadRequest(400, "bad_key", "the key is not valid UTF-8") from None
    if not key:
        raise BadRequest(400, "bad_key", "the key must not be empty")
    if len(key_bytes) > max_key_bytes:
        raise BadRequest(
            400, "key_too_large", f"the key is {len(key_bytes)} bytes, limit {max_key_bytes}"
        )
    return key


def parse_prev_version(request: web.Request) -> int | None:
    raw = request.query.get("prev_version")
    if raw is None:
        return None
    if not _UINT.fullmatch(raw):
        raise BadRequest(400, "bad_prev_version", "prev_version must be an integer >= 0")
    return int(raw)


def parse_session(request: web.Request) -> SessionRef | None:
    """The exactly-once headers as a SessionRef (None when the client sends none)."""
    client_id, seq, first = (request.headers.get(h) for h in SESSION_HEADERS)
    if client_id is None and seq is None and first is None:
        return None
    if client_id is None or seq is None:
        raise BadRequest(400, "bad_header", "X-KV-Client-Id and X-KV-Seq go together")
    if not _UINT.fullmatch(seq) or (first is not None and not _UINT.fullmatch(first)):
        raise BadRequest(400, "bad_header", "X-KV-Seq and X-KV-First-Outstanding must be integers")
    try:
        return SessionRef(client_id, int(seq), int(first) if first is not None else 1)
    except ValueError as exc:
        raise BadRequest(400, "bad_header", str(exc)) from None


async def read_value(request: web.Request, limit: int) -> bytes:
    """The body, refusing anything over `limit` before reading it when its length is known."""
    length = request.content_length
    if length is not None and length > limit:
        raise BadRequest(413, "value_too_large", f"the value is {length} bytes, limit {limit}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(413, "value_too_large", f"the value exceeds {limit} bytes") from None
    if len(body) > limit:
        raise BadRequest(413, "value_too_large", f"the value exceeds the limit of {limit} bytes")
    return body


def result_response(result: ApplyResult | None) -> web.Response:
    if type(result) is PutResult:
        return _json(f'{{"revision":{result.revision},"version":{result.version}}}')
    if type(result) is DeleteResult:
        return _json(f'{{"revision":{result.revision}}}')
    if type(result) is NotFoundResult:
        return error(404, "not_found", "no such key")
    if type(result) is VersionMismatchResult:
        return error(
            409,
            "version_mismatch",
            f"the key is at version {result.current_version}",
            version=result.current_version,
        )
    if type(result) is SessionExpiredResult:
        return error(
            409,
            "session_expired",
            "the session of this client id was forgotten; the outcome of the original "
            "request is unknown; start over with a new client id",
        )
    return error(500, "internal", f"unexpected apply result {result!r}")


# ---------------------------------------------------------------------- handlers


async def handle_kv(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    tuning = runtime.tuning
    method = request.method
    try:
        key = parse_key(request.raw_path, tuning.max_key_bytes)
        if method == "GET":
            consistency = request.query.get("consistency", "linearizable")
            if consistency not in ("linearizable", "stale"):
                raise BadRequest(
                    400, "bad_consistency", "consistency must be stale or linearizable"
                )
            return await _get(request, runtime, key, consistency == "stale")
        if method == "PUT":
            prev = parse_prev_version(request)
            session = parse_session(request)
            body = await read_value(request, tuning.max_value_bytes)
            return await _write(request, runtime, Put(key, body, prev, session), body)
        if method == "DELETE":
            cmd = Delete(key, parse_prev_version(request), parse_session(request))
            return await _write(request, runtime, cmd, b"")
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    return error(
        405, "method_not_allowed", f"{method} is not supported on /v1/kv/ (GET, PUT, DELETE)"
    )


async def _get(
    request: web.Request, runtime: NodeRuntime, key: str, stale: bool
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + runtime.tuning.request_timeout_ms / 1000
    stale = stale or (UNSAFE_LOCAL_READS and not runtime.is_leader)
    while True:
        if stale or runtime.is_leader:
            try:
                kv = await runtime.read(key, not stale, deadline - loop.time())
            except NotLeader:
                continue  # lost office between the check and the call: forward instead
            except ReadAborted:
                if loop.time() < deadline:
                    continue
                return error(503, "no_leader", "leadership changed during the read; retry")
            except TimeoutError:
                return error(504, "timeout", "the read was not confirmed by a quorum in time")
            except RuntimeStopped as exc:
                return error(503, "unavailable", str(exc))
            if kv is None:
                return error(404, "not_found", "no such key")
            return web.Response(
                body=kv.value,
                content_type="application/octet-stream",
                headers={
                    "X-KV-Version": str(kv.version),
                    "X-KV-Mod-Revision": str(kv.mod_revision),
                },
            )
        answer = await forward_to_leader(
            request, runtime, b"", deadline, is_write=False, unserved="the read was not served"
        )
        if answer is not None:
            return answer


async def _write(
    request: web.Request, runtime: NodeRuntime, cmd: Command, body: bytes
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + runtime.tuning.request_timeout_ms / 1000
    while True:
        if runtime.is_leader:
            try:
                result = await runtime.propose(cmd, deadline - loop.time())
            except NotLeader:
                continue
            except ProposalDropped:
                await asyncio.sleep(runtime.tuning.tick_ms / 1000)  # a transfer is under way
                if loop.time() < deadline:
                    continue
                return error(503, "no_leader", "leadership is being transferred; not proposed")
            except ProposalOverwritten:
                if loop.time() < deadline:
                    continue  # it can never commit, so proposing again is safe
                return error(503, "no_leader", "the proposal was dropped by a leader change")
            except ProposalTimeout as exc:
                return error(504, "timeout", f"outcome unknown: {exc}")
            except RuntimeStopped as exc:
                return error(503, "unavailable", f"not proposed: {exc}")
            return result_response(result)
        answer = await forward_to_leader(
            request, runtime, body, deadline, is_write=True, unserved="the write was not proposed"
        )
        if answer is not None:
            return answer


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
    remaining = deadline - asyncio.get_running_loop().time()
    return await runtime.wait_for_leader(min(remaining, 2 * runtime.election_timeout_s))


async def _other_leader(runtime: NodeRuntime, unreachable: str, deadline: float) -> bool:
    """Wait (about two election timeouts at most) for a leader other than `unreachable`."""
    loop = asyncio.get_running_loop()
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
    """Proxy to the leader. None when the connection never opened, so nothing was sent;
    any later failure leaves a write's outcome unknown (504)."""
    hops = request.headers.get(HOPS_HEADER, "0")
    hops_n = int(hops) if hops.isdigit() else MAX_HOPS
    if hops_n >= MAX_HOPS:
        return error(503, "no_leader", "the leader moved while the request was forwarded")
    headers = {h: request.headers[h] for h in SESSION_HEADERS if h in request.headers}
    headers[HOPS_HEADER] = str(hops_n + 1)
    if body:
        headers["Content-Type"] = "application/octet-stream"
    leader_url = runtime.view.client_url(leader)
    if leader_url is None:
        return None  # not sent: this node has not read the new leader's address yet
    url = leader_url.rstrip("/") + request.raw_path
    loop = asyncio.get_running_loop()
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
    except aiohttp.ClientConnectorError:
        return None
    except (TimeoutError, aiohttp.ClientError) as exc:
        if is_write:
            return error(504, "timeout", f"outcome unknown: forwarding to {leader} failed: {exc!r}")
        return error(503, "no_leader", f"forwarding the read to {leader} failed: {exc!r}")


async def handle_status(request: web.Request) -> web.Response:
    return web.json_response(status_json(request.app[RUNTIME_KEY]))


async def handle_unknown(request: web.Request) -> web.Response:
    return error(404, "no_such_endpoint", f"no endpoint {request.method} {request.path}")


# ---------------------------------------------------------------------- the application


async def _add_leader_header(request: web.Request, response: web.StreamResponse) -> None:
    runtime = request.app.get(RUNTIME_KEY)
    if runtime is not None and LEADER_HEADER not in response.headers:
        leader = runtime.leader_id
        if leader is not None:
            response.headers[LEADER_HEADER] = leader


async def _proxy_session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0)
    if UNSAFE_LOCAL_READS:
        log.warning("KV_UNSAFE_STALE_READS=1: followers serve stale reads (tests only)")
    async with single_send_session(connector=connector, auto_decompress=False) as session:
        app[PROXY_KEY] = session
        yield


def make_client_app(runtime: NodeRuntime, client_max_size: int) -> web.Application:
    """The client API; the caller adds the runtime's own start/stop to `cleanup_ctx`."""
    app = web.Application(client_max_size=client_max_size)
    app[RUNTIME_KEY] = runtime
    app.cleanup_ctx.append(_proxy_session)
    app.on_response_prepare.append(_add_leader_header)
    app.router.add_route("*", KV_PREFIX + "{key:.*}", handle_kv)
    app.router.add_get("/v1/status", handle_status)
    from kvstore.api.members import add_member_routes  # it builds on this module's helpers

    add_member_routes(app)
    app.router.add_route("*", "/v1/{tail:.*}", handle_unknown)
    return app
