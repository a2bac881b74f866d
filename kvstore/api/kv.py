"""`/v1/kv/{key}`: one key's GET, PUT and DELETE (ranges: kvstore.api.range).

Where requests are served (leader, forwarding, the 503/504 promise) is kvstore.api.serve.
A single-key GET answers the raw value as its body with the key's numbers in headers:
`X-KV-Version`, `X-KV-Create-Revision`, `X-KV-Mod-Revision`, and `X-KV-Revision`, the
store revision the answer reflects.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from urllib.parse import unquote_to_bytes

from aiohttp import web

from kvstore.api.common import (
    CONSISTENCY,
    RUNTIME_KEY,
    SESSION_HEADERS,
    USER_KEY,
    Answer,
    BadRequest,
    Refused,
    error,
    error_answer,
    json_answer,
    pair_values,
    uint,
)
from kvstore.api.coordination import FENCE_QUERY, parse_fence, positive, unexpected_answer
from kvstore.api.serve import confirm_read, proposed
from kvstore.runtime.node import NodeRuntime
from kvstore.state.commands import Command, Delete, Fence, Put, SessionRef
from kvstore.state.machine import (
    ApplyResult,
    DeleteResult,
    NotFoundResult,
    PutResult,
    RevisionMismatchResult,
    SessionExpiredResult,
    VersionMismatchResult,
)

log = logging.getLogger(__name__)

KV_PREFIX = "/v1/kv/"
REVISION_HEADER = "X-KV-Revision"
KEY_HEADERS = ("X-KV-Version", "X-KV-Create-Revision", "X-KV-Mod-Revision", REVISION_HEADER)
_WRITE_QUERY = {"prev_version": uint, "prev_revision": uint, **FENCE_QUERY}
_PUT_QUERY = {**_WRITE_QUERY, "lease": positive}


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UINT = re.compile(r"[0-9]{1,18}")
_CLIENT_ID, _SEQ, _FIRST = (h.lower() for h in SESSION_HEADERS)

Headers = Mapping[str, str]
"""A request's headers looked up by lower-case name (aiohttp's are case-insensitive)."""

# ---------------------------------------------------------------------- request parsing


def parse_key(raw_path: str, max_key_bytes: int) -> str:
    """The key from the raw path, strictly percent-decoded and checked as UTF-8."""
    key, size = _decoded(raw_path.split("?", 1)[0][len(KV_PREFIX) :])
    if size > max_key_bytes:
        raise BadRequest(400, "key_too_large", f"the key is {size} bytes, limit {max_key_bytes}")
    return key


@functools.lru_cache(maxsize=4096)
def _decoded(raw: str) -> tuple[str, int]:
    """(key, its size in bytes) of a raw path segment. Cached: clients name the same
    keys again and again, and percent-decoding in Python costs a few microseconds of
    every request (a refusal raises, and is not cached)."""
    if _BAD_PERCENT.search(raw):
        raise BadRequest(400, "bad_key", "malformed percent-encoding in the key")
    try:
        key_bytes = unquote_to_bytes(raw)
        key = key_bytes.decode("utf-8")
    except (UnicodeError, ValueError):
        raise BadRequest(400, "bad_key", "the key is not valid UTF-8") from None
    if not key:
        raise BadRequest(400, "bad_key", "the key must not be empty")
    return key, len(key_bytes)


def parse_session(headers: Headers) -> SessionRef | None:
    """The exactly-once headers as a SessionRef (None when the client sends none)."""
    get = headers.get
    client_id, seq, first = get(_CLIENT_ID), get(_SEQ), get(_FIRST)
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


def result_answer(result: ApplyResult | None) -> Answer:
    if type(result) is PutResult:
        return json_answer(f'{{"revision":{result.revision},"version":{result.version}}}')
    if type(result) is DeleteResult:
        return json_answer(f'{{"revision":{result.revision}}}')
    if type(result) is NotFoundResult:
        return error_answer(404, "not_found", "no such key")
    if type(result) is RevisionMismatchResult:
        return error_answer(
            409,
            "revision_mismatch",
            f"the key is at mod_revision {result.current_revision}",
            mod_revision=result.current_revision,
        )
    if type(result) is VersionMismatchResult:
        return error_answer(
            409,
            "version_mismatch",
            f"the key is at version {result.current_version}",
            version=result.current_version,
        )
    if type(result) is SessionExpiredResult:
        return error_answer(
            409,
            "session_expired",
            "the session of this client id was forgotten; the outcome of the original "
            "request is unknown; start over with a new client id",
        )
    return unexpected_answer(result)


# ---------------------------------------------------------------------- serving


async def handle_kv(request: web.Request) -> web.StreamResponse:
    """The aiohttp route: the request's parts handed to kv_answer."""
    runtime = request.app[RUNTIME_KEY]
    tuning = runtime.tuning
    try:
        key = parse_key(request.raw_path, tuning.max_key_bytes)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    answer = await kv_answer(
        runtime,
        request.method,
        key,
        request.query.items(),
        request.headers,
        request.get(USER_KEY),
        lambda: read_value(request, tuning.max_value_bytes),
    )
    return answer.response()


async def kv_answer(
    runtime: NodeRuntime,
    method: str,
    key: str,
    query: Iterable[tuple[str, str]],
    headers: Headers,
    user: str | None,
    read_body: Callable[[], Awaitable[bytes]],
) -> Answer:
    """The answer to `method` on `key` (parsed by parse_key), whichever transport
    carried the request: the aiohttp route above and the fast lane
    (kvstore.api.fast_lane) both call this. `query` is the (name, value) pairs in
    order; `headers` is looked up by lower-case name; `user` is the authenticated user
    (None: auth is off); `read_body` reads the value of a PUT (raising BadRequest 413)."""
    try:
        if method == "GET":
            stale = pair_values(query, {"consistency": CONSISTENCY}).get("consistency")
            deadline = runtime.loop.time() + runtime.tuning.request_timeout_ms / 1000
            return await read_answer(runtime, key, deadline, stale=stale == "stale")
        if method in ("PUT", "DELETE"):
            parts = write_parts(method, query, headers)  # its 400s before the body's 413
            body = await read_body() if method == "PUT" else b""
            return result_answer(await proposed(runtime, write_command(key, parts, body), user))
    except Refused as exc:
        return error_answer(exc.status, exc.code, exc.message)
    return error_answer(
        405, "method_not_allowed", f"{method} is not supported on /v1/kv/ (GET, PUT, DELETE)"
    )


WriteParts = tuple[str, int | None, SessionRef | None, int | None, int, Fence | None]
"""A write's method, prev_version, session, prev_revision, lease and fence."""


def write_parts(method: str, query: Iterable[tuple[str, str]], headers: Headers) -> WriteParts:
    """What a PUT or DELETE asks besides its key and value; raises Refused (400) for a
    bad query or header. Shared by kv_answer and the fast lane's writes."""
    values = pair_values(query, _PUT_QUERY if method == "PUT" else _WRITE_QUERY)
    session, fence = parse_session(headers), parse_fence(values)
    version, revision = values.get("prev_version"), values.get("prev_revision")
    return method, version, session, revision, values.get("lease", 0), fence


def write_command(key: str, parts: WriteParts, body: bytes) -> Command:
    """The command of a write to `key` (`body`: a PUT's value)."""
    method, version, session, revision, lease, fence = parts
    if method == "DELETE":
        return Delete(key, version, session, revision, fence)
    return Put(key, body, version, session, revision, lease, fence)


async def read_answer(runtime: NodeRuntime, key: str, deadline: float, *, stale: bool) -> Answer:
    """A GET of `key` once `confirm_read` allows it (the fast lane's own read path
    falls back to this when its read index did not come: kvstore.api.fast_lane)."""
    try:
        await confirm_read(runtime, deadline, stale=stale)
    except Refused as exc:
        return error_answer(exc.status, exc.code, exc.message)
    return key_answer(runtime, key)


def key_answer(runtime: NodeRuntime, key: str) -> Answer:
    sm = runtime.sm
    kv = sm.get(key)
    if kv is None:
        return error_answer(404, "not_found", "no such key", revision=sm.revision)
    return Answer(
        200,
        kv.value,
        "application/octet-stream",
        (
            ("X-KV-Version", str(kv.version)),
            ("X-KV-Create-Revision", str(kv.create_revision)),
            ("X-KV-Mod-Revision", str(kv.mod_revision)),
            (REVISION_HEADER, str(sm.revision)),
        ),
    )
