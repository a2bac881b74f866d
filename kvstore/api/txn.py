"""`POST /v1/txn`: compares, then one of two operation lists, atomically in one log entry.

Request (JSON; values as base64 in `value`, or as UTF-8 text in `text`)::

    {"compare": [{"key": "stock/apple", "target": "value", "op": "=", "text": "3"},
                 {"key": "orders/7", "target": "exists", "op": "=", "value": false}],
     "success": [{"put": {"key": "stock/apple", "text": "2"}},
                 {"put": {"key": "orders/7", "text": "apple"}}],
     "failure": [{"get": {"key": "stock/apple"}}]}

Compare targets: version, create_revision, mod_revision (integers), value (bytes),
exists (true/false, with = or != only); ops: = != < >. Operations: put {key, value},
delete {key}, delete_range {prefix | start, end}, get {key}, range {prefix | start, end,
limit, keys_only, count_only, sort}. A put may carry `"lease": ID`: the key then
belongs to that lease (deleted when it ends), and a transaction naming a lease that does
not exist, in either branch, is refused whole with 404 `lease_not_found`. The answer:
`{"succeeded", "revision", "results"}` with one result per operation of the branch that
ran, in order. A failed compare is
not an error (200, `succeeded: false`). A transaction without writes (and without a
fence) is served as a linearizable read (one ReadIndex, no log entry). With
`?fence_lock=NAME&fence_token=T` the whole transaction is refused with 409 `fenced`
unless T holds the lock NAME when it is applied. Exactly-once session headers apply as
to a single write.

Limits: at most MAX_TXN_OPS compares and operations in all (400 `too_many_operations`),
keys and values together at most `max_value_bytes` (413 `txn_too_large`), and the body
within the node's request size limit (413).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from aiohttp import web

from kvstore.api.access import refusal_answer
from kvstore.api.common import (
    RUNTIME_KEY,
    USER_KEY,
    Answer,
    BadRequest,
    Refused,
    error_answer,
    pair_values,
)
from kvstore.api.coordination import FENCE_QUERY, parse_fence
from kvstore.api.kv import Headers, parse_session, result_answer
from kvstore.api.range import MAX_PAGE, document_answer, range_document, wants_msgpack
from kvstore.api.serve import confirm_read, proposed
from kvstore.runtime.node import NodeRuntime
from kvstore.state.commands import (
    Compare,
    Op,
    Target,
    Txn,
    TxnDeleteRange,
    TxnOp,
    TxnPut,
    TxnRange,
)
from kvstore.state.keyrange import KeyRange, RangeQuery
from kvstore.state.machine import ApplyResult, TxnResult
from kvstore.state.types import DeleteRangeResult, PutResult

MAX_TXN_OPS = 128
"""Compares plus operations of both branches, as etcd's default."""
_OPS = {"=": Op.EQ, "!=": Op.NE, "<": Op.LT, ">": Op.GT}
_TARGETS = {t.name.lower(): t for t in Target}
_SORTS = ("key", "newest")


class _Limits:
    """Checks every key and counts key and value bytes while the body is parsed."""

    def __init__(self, max_key_bytes: int) -> None:
        self.max_key_bytes = max_key_bytes
        self.total = 0

    def key(self, raw: object, where: str, *, bound: bool = False) -> str:
        if not isinstance(raw, str) or (not raw and not bound):
            raise BadRequest(400, "bad_txn", f"{where}: a key must be a non-empty string")
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size > self.max_key_bytes:
            raise BadRequest(400, "key_too_large", f"{where}: key of {size} bytes")
        self.total += size
        return raw

    def value(self, spec: dict[str, Any], where: str) -> bytes:
        if ("value" in spec) == ("text" in spec):
            raise BadRequest(400, "bad_txn", f"{where}: give value (base64) or text")
        try:
            if "text" in spec:
                if not isinstance(spec["text"], str):
                    raise ValueError("text must be a string")
                data = spec["text"].encode("utf-8")
            else:
                if not isinstance(spec["value"], str):
                    raise ValueError("value must be a base64 string")
                data = base64.b64decode(spec["value"], validate=True)
        except (ValueError, binascii.Error, UnicodeError) as exc:
            raise BadRequest(400, "bad_txn", f"{where}: {exc}") from None
        self.total += len(data)
        return data


def _fields(spec: object, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise BadRequest(400, "bad_txn", f"{where}: expected an object")
    unknown = set(spec) - allowed
    if unknown:
        raise BadRequest(400, "bad_txn", f"{where}: unknown field {sorted(unknown)[0]!r}")
    return spec


def _keys(spec: dict[str, Any], where: str, limits: _Limits) -> KeyRange:
    if "key" in spec:
        if "prefix" in spec or "start" in spec or "end" in spec:
            raise BadRequest(400, "bad_txn", f"{where}: key goes alone")
        return KeyRange.single(limits.key(spec["key"], where))
    if ("prefix" in spec) == ("start" in spec):
        raise BadRequest(400, "bad_txn", f"{where}: give key, prefix, or start (and end)")
    if "prefix" in spec:
        if "end" in spec:
            raise BadRequest(400, "bad_txn", f"{where}: end goes with start, not prefix")
        return KeyRange.prefix(limits.key(spec["prefix"], where, bound=True))
    end = spec.get("end")
    end = None if end is None else limits.key(end, where, bound=True)
    return KeyRange(limits.key(spec["start"], where, bound=True), end)


def _compare(spec: object, where: str, limits: _Limits) -> Compare:
    c = _fields(spec, where, {"key", "target", "op", "value", "text"})
    target, op = _TARGETS.get(c.get("target")), _OPS.get(c.get("op"))  # type: ignore[arg-type]
    if target is None or op is None:
        raise BadRequest(
            400,
            "bad_txn",
            f"{where}: target must be one of {', '.join(_TARGETS)} and op one of {' '.join(_OPS)}",
        )
    key = limits.key(c.get("key"), where)
    operand = limits.value(c, where) if target is Target.VALUE else c.get("value")
    try:
        return Compare(key, target, op, operand)
    except ValueError as exc:
        raise BadRequest(400, "bad_txn", f"{where}: {exc}") from None


def _op(spec: object, where: str, limits: _Limits) -> TxnOp:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise BadRequest(
            400, "bad_txn", f"{where}: expected one of put, delete, delete_range, get, range"
        )
    ((kind, body),) = spec.items()
    where = f"{where}.{kind}"
    if kind == "put":
        p = _fields(body, where, {"key", "value", "text", "lease"})
        lease = p.get("lease", 0)
        if type(lease) is not int or lease < 0 or ("lease" in p and not lease):
            raise BadRequest(400, "bad_txn", f"{where}: lease must be an integer >= 1")
        return TxnPut(limits.key(p.get("key"), where), limits.value(p, where), lease)
    if kind in ("delete", "get"):
        return _single(kind, _fields(body, where, {"key"}), where, limits)
    if kind == "delete_range":
        return TxnDeleteRange(
            _keys(_fields(body, where, {"prefix", "start", "end"}), where, limits)
        )
    if kind == "range":
        allowed = {"prefix", "start", "end", "limit", "keys_only", "count_only", "sort"}
        r = _fields(body, where, allowed)
        limit, sort = r.get("limit", MAX_PAGE), r.get("sort", "key")
        flags = (r.get("keys_only", False), r.get("count_only", False))
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE or sort not in _SORTS:
            raise BadRequest(400, "bad_txn", f"{where}: limit 1..{MAX_PAGE}, sort key or newest")
        if not all(type(f) is bool for f in flags):
            raise BadRequest(400, "bad_txn", f"{where}: keys_only and count_only are booleans")
        query = RangeQuery(_keys(r, where, limits), 0, limit, *flags, sort == "newest")
        return TxnRange(query)
    raise BadRequest(400, "bad_txn", f"{where}: unknown operation")


def _single(kind: str, body: dict[str, Any], where: str, limits: _Limits) -> TxnOp:
    keys = KeyRange.single(limits.key(body.get("key"), where))
    return TxnDeleteRange(keys) if kind == "delete" else TxnRange(RangeQuery(keys))


def parse_txn(body: bytes, max_key_bytes: int, max_bytes: int) -> Txn:
    """The transaction of a request body; BadRequest (400/413) for anything wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeError):
        raise BadRequest(400, "bad_txn", "the body is not JSON") from None
    doc = _fields(doc, "txn", {"compare", "success", "failure"})
    parts = {name: doc.get(name, []) for name in ("compare", "success", "failure")}
    if not all(isinstance(part, list) for part in parts.values()):
        raise BadRequest(400, "bad_txn", "compare, success and failure must be lists")
    count = sum(len(part) for part in parts.values())
    if count > MAX_TXN_OPS:
        raise BadRequest(
            400, "too_many_operations", f"{count} compares and operations, limit {MAX_TXN_OPS}"
        )
    limits = _Limits(max_key_bytes)
    compares = tuple(_compare(c, f"compare[{i}]", limits) for i, c in enumerate(parts["compare"]))
    success = tuple(_op(o, f"success[{i}]", limits) for i, o in enumerate(parts["success"]))
    failure = tuple(_op(o, f"failure[{i}]", limits) for i, o in enumerate(parts["failure"]))
    if limits.total > max_bytes:
        raise BadRequest(
            413, "txn_too_large", f"keys and values of {limits.total} bytes, limit {max_bytes}"
        )
    try:
        return Txn(compares, success, failure)
    except ValueError as exc:
        raise BadRequest(400, "bad_txn", str(exc)) from None


def _txn_document(result: TxnResult, txn: Txn, *, binary: bool) -> dict[str, Any]:
    ops = txn.success if result.succeeded else txn.failure
    results: list[dict[str, Any]] = []
    for op, res in zip(ops, result.results, strict=True):
        if type(res) is PutResult:
            results.append({"put": {"revision": res.revision, "version": res.version}})
        elif type(res) is DeleteRangeResult:
            results.append({"delete_range": {"revision": res.revision, "deleted": res.deleted}})
        else:
            assert type(op) is TxnRange
            results.append({"range": range_document(res, op.query, binary=binary)})
    return {"succeeded": result.succeeded, "revision": result.revision, "results": results}


def _answer_for(txn: Txn, result: ApplyResult | None, binary: bool) -> Answer:
    if type(result) is not TxnResult:
        return result_answer(result)  # session_expired
    document = _txn_document(result, txn, binary=binary)
    return document_answer(document, result.revision, binary=binary)


async def handle_txn(request: web.Request) -> web.StreamResponse:
    """The aiohttp route; the fast lane (kvstore.api.fast_lane) calls txn_answer itself."""

    async def read_body() -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(413, "txn_too_large", "the body exceeds the size limit") from None

    runtime: NodeRuntime = request.app[RUNTIME_KEY]
    user = request.get(USER_KEY)
    answer = await txn_answer(runtime, request.query.items(), request.headers, user, read_body)
    return answer.response()


async def txn_answer(
    runtime: NodeRuntime,
    query: Iterable[tuple[str, str]],
    headers: Headers,
    user: str | None,
    read_body: Callable[[], Awaitable[bytes]],
) -> Answer:
    """The answer to a transaction, whichever transport carried it (the aiohttp route
    above and the fast lane). `query`: the (name, value) pairs in order; `headers`:
    looked up by lower-case name; `user`: the authenticated user (None: auth is off);
    `read_body` reads the body (raising BadRequest 413), after the query and headers
    were found good. A transaction without writes is served as a linearizable read,
    one with writes is proposed (kvstore.api.serve: 503 never proposed, 504 outcome
    unknown)."""
    tuning = runtime.tuning
    try:
        fence = parse_fence(pair_values(query, FENCE_QUERY))
        session = parse_session(headers)
        body = await read_body()
        txn = replace(parse_txn(body, tuning.max_key_bytes, tuning.max_value_bytes), fence=fence)
    except BadRequest as exc:
        return error_answer(exc.status, exc.code, exc.message)
    refused = refusal_answer(runtime.sm.auth, user, txn)
    if refused is not None:
        return refused
    binary = wants_msgpack(headers)
    try:
        if not txn.writes:
            deadline = runtime.loop.time() + tuning.request_timeout_ms / 1000
            await confirm_read(runtime, deadline, stale=False)
            return _answer_for(txn, runtime.sm.read_txn(txn), binary)
        result = await proposed(runtime, replace(txn, session=session), user)
    except Refused as exc:
        return error_answer(exc.status, exc.code, exc.message)
    return _answer_for(txn, result, binary)
