"""/v1/locks/{name} and /v1/elections/{name}: one queue per name, two vocabularies.

A lock and an election are the same thing in the state machine (kvstore.state.locks):
a first-come queue of leases whose head holds it; an election's candidates also
publish a value. So both URL families address the same queues, and a fence names
either.

- POST queues the caller's lease (a log entry; a lease already queued keeps its
  place), answering its token; with `wait`, the same request then waits until the
  token holds or has left the queue (or `wait` s pass), so one request acquires, as
  etcd's blocking lock call does. GET with `token` and `wait` waits the same way for
  a token already queued: a client whose wait ran out (or whose connection dropped)
  waits again without losing its place.
- Every wait is served by the node that received the request, from its own applied
  state: a POST's wait starts once its entry is applied here, a GET's after a read
  index (serve_read), so a `held` (or left-the-queue) answer is true at an applied
  log position at least as new as the request's start; no hop to the leader.
- DELETE leaves the queue (release, withdraw, resign); PUT on an election publishes
  a new value, refused with 409 `fenced` unless the token leads.
- GET with `after=CHANGED` waits until the head changes (a new leader or value):
  an election observer's long poll.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kvstore.api.common import RUNTIME_KEY, BadRequest, error, query_values, uint
from kvstore.api.coordination import (
    parse_name,
    positive,
    require,
    seconds,
    unexpected,
    wait_until,
)
from kvstore.api.kv import parse_session, read_value
from kvstore.api.serve import serve_read, serve_write
from kvstore.runtime.node import NodeRuntime
from kvstore.state.coordination_commands import (
    MAX_ELECTION_VALUE_BYTES,
    LockAcquire,
    LockRelease,
    Proclaim,
)
from kvstore.state.types import ApplyResult, LockResult

LOCKS = "/v1/locks/"
ELECTIONS = "/v1/elections/"


def add_lock_routes(app: web.Application) -> None:
    for prefix in (LOCKS, ELECTIONS):
        app.router.add_route("*", prefix + "{name:.+}", handle_queue)


def _prefix(request: web.Request) -> str:
    return ELECTIONS if request.path.startswith(ELECTIONS) else LOCKS


def _queued(name: str) -> Any:
    def respond(result: ApplyResult | None) -> web.Response:
        if type(result) is LockResult:
            return web.json_response(
                {
                    "name": name,
                    "token": result.token,
                    "holder": result.holder,
                    "held": result.token == result.holder,
                }
            )
        return unexpected(result)

    return respond


def _acquired(runtime: NodeRuntime, name: str, wait: float) -> Any:
    """The answer to a POST with `wait`: once its entry is applied here (so this node's
    state is at least as new as the request), wait on local applies until the token
    holds or has left the queue, then answer from that state (`queued` false: it
    left, its lease ended)."""

    async def respond(result: ApplyResult | None) -> web.Response:
        if type(result) is not LockResult:
            return unexpected(result)
        token = result.token
        await wait_until(runtime, lambda: _settled(runtime, name, token), wait)
        tokens = _tokens(runtime, name)
        held = bool(tokens) and tokens[0] == token
        holder = tokens[0] if tokens else 0
        body = {"name": name, "token": token, "holder": holder, "held": held}
        return web.json_response({**body, "queued": token in tokens})

    return respond


def _tokens(runtime: NodeRuntime, name: str) -> list[int]:
    """The queue's tokens in order (the head holds) in this node's applied state."""
    queue = runtime.sm.coordination.locks.queue(name)
    return [] if queue is None else [w.token for w in queue.waiters]


def _settled(runtime: NodeRuntime, name: str, token: int) -> bool:
    """`token` holds `name`, or is no longer queued for it: a waiter's wait is over."""
    tokens = _tokens(runtime, name)
    return not tokens or tokens[0] == token or token not in tokens


async def _value(request: web.Request) -> bytes:
    value = await read_value(request, MAX_ELECTION_VALUE_BYTES)
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "bad_value", "an election value must be UTF-8 text") from None
    return value


async def handle_queue(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    method = request.method
    election = _prefix(request) == ELECTIONS
    try:
        name = parse_name(request.raw_path, _prefix(request))
        if method == "POST":
            query = query_values(request, {"lease": positive, "wait": seconds})
            lease = require(query, "lease")
            value = await _value(request) if election else b""
            command = LockAcquire(name, lease, value, parse_session(request.headers))
            wait = query.get("wait")
            respond = _queued(name) if wait is None else _acquired(runtime, name, wait)
            return await serve_write(request, runtime, command, respond)
        if method == "DELETE":
            token = require(query_values(request, {"token": positive}), "token")
            release = LockRelease(name, token, parse_session(request.headers))
            return await serve_write(request, runtime, release, _queued(name))
        if method == "PUT" and election:
            token = require(query_values(request, {"token": positive}), "token")
            value = await _value(request)
            proclaim = Proclaim(name, token, value, parse_session(request.headers))
            return await serve_write(request, runtime, proclaim, _queued(name))
        if method == "GET":
            query = query_values(request, {"token": positive, "after": uint, "wait": seconds})
            token, after = query.get("token"), query.get("after")
            return await _observe(request, runtime, name, token, after, query.get("wait", 0.0))
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    allowed = "GET, POST, PUT, DELETE" if election else "GET, POST, DELETE"
    return error(405, "method_not_allowed", f"{method} is not supported here ({allowed})")


async def _observe(
    request: web.Request,
    runtime: NodeRuntime,
    name: str,
    token: int | None,
    after: int | None,
    wait: float,
) -> web.StreamResponse:
    """The queue's head, after waiting (up to `wait` s) for `token` to hold or leave, or
    for the head to change from `after`."""

    def settled() -> bool:
        if token is not None and _settled(runtime, name, token):
            return True
        queue = runtime.sm.coordination.locks.queue(name)
        changed = 0 if queue is None else queue.changed
        return after is not None and changed != after

    async def answer() -> web.StreamResponse:
        if token is not None or after is not None:
            await wait_until(runtime, settled, wait)
        return web.json_response(_describe(runtime, name, token))

    return await serve_read(request, runtime, answer, stale=False, wait=wait)


def _describe(runtime: NodeRuntime, name: str, token: int | None) -> dict[str, Any]:
    queue = runtime.sm.coordination.locks.queue(name)
    holder = None if queue is None else queue.holder
    body: dict[str, Any] = {
        "name": name,
        "holder": None
        if holder is None
        else {
            "token": holder.token,
            "lease": holder.lease,
            "value": holder.value.decode("utf-8", "replace"),
        },
        "changed": 0 if queue is None else queue.changed,
        "waiters": 0 if queue is None else len(queue.waiters) - 1,
    }
    if token is not None:
        tokens = [] if queue is None else [w.token for w in queue.waiters]
        body.update(token=token, held=bool(tokens) and tokens[0] == token, queued=token in tokens)
    return body
