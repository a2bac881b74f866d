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
from urllib.parse import unquote_to_bytes

from aiohttp import web

from consensus import DropReason, NotLeader, ProposalDropped
from kvstore.api.common import (
    RUNTIME_KEY,
    SESSION_HEADERS,
    BadRequest,
    error,
    json_text,
)
from kvstore.api.forwarding import forward_to_leader
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
UNSAFE_LOCAL_READS = os.environ.get("KV_UNSAFE_STALE_READS") == "1"
"""Deliberately unsafe, for tests only: followers answer default (linearizable) reads
from their own state without asking the leader, so `kv chaos` can be shown to catch
the stale reads this causes. Never set it on a real cluster."""


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UINT = re.compile(r"[0-9]{1,18}")

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
        return json_text(f'{{"revision":{result.revision},"version":{result.version}}}')
    if type(result) is DeleteResult:
        return json_text(f'{{"revision":{result.revision}}}')
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
            except ProposalDropped as exc:
                await asyncio.sleep(runtime.tuning.tick_ms / 1000)  # both kinds clear soon
                if loop.time() < deadline:
                    continue
                if exc.reason is DropReason.TOO_MANY_UNCOMMITTED:
                    return error(503, "overloaded", f"{exc}; not proposed")
                return error(503, "no_leader", f"{exc}; not proposed")
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
