"""`GET /v1/kv/?prefix=P` and `GET /v1/kv/?start=S&end=E`: range reads.

One consistent cut: every answer names the store revision it reflects, and its
continuation token (`next`) carries that revision, so the following pages read the
same cut (from the retained history, kvstore.state.history) whatever was written in
between; a token older than the history answers 410 `compacted`.

Where it is served: a read at an explicit past revision this node has applied is the
same on every replica (history is immutable), so any node answers it from its own
state; otherwise a linearizable range is one ReadIndex on the leader (followers
forward), and `consistency=stale` reads this node's current state.

JSON carries values as base64; `Accept: application/msgpack` gets the same document
in msgpack with raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from consensus.packing import pack
from kvstore.api.access import read_access
from kvstore.api.common import (
    CONSISTENCY,
    JSON_CHARSET,
    RUNTIME_KEY,
    Answer,
    BadRequest,
    error,
    flag,
    one_of,
    query_values,
    text,
    uint,
)
from kvstore.api.serve import serve_read
from kvstore.runtime.node import NodeRuntime
from kvstore.state.history import Compacted, FutureRevision
from kvstore.state.keyrange import Cursor, KeyRange, RangeQuery
from kvstore.state.types import KeyValue, RangeResult

MSGPACK_TYPE = "application/msgpack"
MAX_PAGE = 10_000
"""Keys in one answer at most (also the default limit): a bigger range is paged."""

_QUERY = {
    "prefix": text,
    "start": text,
    "end": text,
    "limit": uint,
    "continue": text,
    "keys_only": flag,
    "count_only": flag,
    "sort": one_of("key", "newest"),
    "revision": uint,
    "consistency": CONSISTENCY,
}


def parse_range_query(request: web.Request, max_key_bytes: int) -> tuple[RangeQuery, bool]:
    """The query of a range request and whether it may be stale; BadRequest otherwise."""
    q = query_values(request, _QUERY)
    if ("prefix" in q) == ("start" in q):
        raise BadRequest(400, "bad_range", "give either prefix or start (and optionally end)")
    if "end" in q and "prefix" in q:
        raise BadRequest(400, "bad_range", "end goes with start, not with prefix")
    for name in ("prefix", "start", "end"):
        if len(q.get(name, "").encode("utf-8", "surrogatepass")) > max_key_bytes:
            raise BadRequest(400, f"bad_{name}", f"{name} is longer than {max_key_bytes} bytes")
    keys = KeyRange.prefix(q["prefix"]) if "prefix" in q else KeyRange(q["start"], q.get("end"))
    limit = q.get("limit", MAX_PAGE)
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(400, "bad_limit", f"limit must be in 1..{MAX_PAGE}")
    revision, after = q.get("revision", 0), None
    if "continue" in q:
        token_revision, after = decode_token(q["continue"])
        if revision and revision != token_revision:
            raise BadRequest(400, "bad_revision", "revision differs from the continue token's")
        revision = token_revision
    query = RangeQuery(
        keys,
        revision=revision,
        limit=limit,
        keys_only=q.get("keys_only", False),
        count_only=q.get("count_only", False),
        newest_first=q.get("sort") == "newest",
        after=after,
    )
    return query, q.get("consistency") == "stale"


def encode_token(revision: int, last: KeyValue) -> str:
    raw = json.dumps([revision, last.mod_revision, last.key], ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii")


def decode_token(token: str) -> tuple[int, Cursor]:
    try:
        revision, mod_revision, key = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        if type(revision) is not int or revision < 1:
            raise ValueError("bad revision")
        return revision, Cursor(mod_revision, key)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise BadRequest(400, "bad_continue", "continue is not a token this API gave") from None


def kv_json(kv: KeyValue, keys_only: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": kv.key,
        "version": kv.version,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
    }
    if not keys_only:
        out["value"] = base64.b64encode(kv.value).decode("ascii")
    return out


def range_document(result: RangeResult, query: RangeQuery, *, binary: bool) -> dict[str, Any]:
    """The answer's fields; values as base64 text for JSON, raw bytes for msgpack."""
    if binary:
        kvs: list[dict[str, Any]] = [
            {**kv_json(kv, True), **({} if query.keys_only else {"value": kv.value})}
            for kv in result.kvs
        ]
    else:
        kvs = [kv_json(kv, query.keys_only) for kv in result.kvs]
    return {
        "revision": result.revision,
        "count": result.count,
        "more": result.more,
        "next": encode_token(result.revision, result.kvs[-1]) if result.more else None,
        "kvs": kvs,
    }


def wants_msgpack(headers: Mapping[str, str]) -> bool:
    """Whether the request's Accept asks for msgpack (`headers`: aiohttp's, or the fast
    lane's by lower-case name)."""
    return MSGPACK_TYPE in headers.get("accept", "")


def document_response(
    request: web.Request, document: dict[str, Any], revision: int
) -> web.Response:
    return document_answer(document, revision, binary=wants_msgpack(request.headers)).response()


def document_answer(document: dict[str, Any], revision: int, *, binary: bool) -> Answer:
    """A range's or transaction's document, in msgpack when `binary` (the client's
    Accept asked for it), else compact JSON; its revision in `X-KV-Revision`."""
    headers = (("X-KV-Revision", str(revision)),)
    if binary:
        body = pack(document)  # a reused Packer: packb's 256 KiB buffer would be an mmap
        return Answer(200, body, MSGPACK_TYPE, headers)
    body_text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return Answer(200, body_text.encode(), JSON_CHARSET, headers)


def run_query(request: web.Request, runtime: NodeRuntime, query: RangeQuery) -> web.Response:
    """The answer from this node's state; 410 beyond the history. With auth on, only
    the keys the user may read (kvstore.api.access): a range partly outside them
    answers the readable ones (`count` then counts those), one wholly outside 403."""
    keys = query.keys
    try:
        readable = read_access(request, runtime.sm.auth, keys.start, keys.end)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    partial = not readable.covers(keys.start, keys.end)
    if partial and query.count_only:
        return error(403, "permission_denied", "count_only over keys you may not all read")
    try:
        result = runtime.sm.range(query)
    except Compacted as exc:
        return error(410, "compacted", str(exc), compact_revision=exc.compact_revision)
    except FutureRevision as exc:
        return error(400, "future_revision", str(exc), revision=exc.current)
    document = range_document(result, query, binary=wants_msgpack(request.headers))
    if partial:  # after range_document: `next` still continues after the last key read
        document["kvs"] = [kv for kv in document["kvs"] if readable.key(kv["key"])]
        document["count"] = len(document["kvs"])
    return document_response(request, document, result.revision)


async def handle_range(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    try:
        query, stale = parse_range_query(request, runtime.tuning.max_key_bytes)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    if query.revision and query.revision <= runtime.sm.revision:
        return run_query(request, runtime, query)  # a fixed past cut: the same everywhere
    # A revision this node has not reached yet is the leader's to answer.
    stale = stale and not query.revision
    return await serve_read(
        request, runtime, lambda: run_query(request, runtime, query), stale=stale
    )
