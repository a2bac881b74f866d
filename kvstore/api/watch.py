"""`GET /v1/watch`: the changes to a key or a prefix, from a revision on, as they apply.

Any node serves a watch from its own applied state (kvstore.runtime.watch_hub), with
no trip to the leader: the stream is exactly the committed history, one message per
revision, so the node's freshness only decides *when* a change arrives, never *which*.

Two forms of the same thing:
- Server-Sent Events (the default): `id:` is the revision, so a browser's EventSource
  (or any client) resumes with `Last-Event-ID` and gets the rest with no gap and no
  repeat. Changes come as unnamed events (`onmessage`), `progress` events carry the
  revision when nothing changed for a while, and a final `cancelled` event says why
  the stream ends (a reader too slow, history compacted, the node stopping) and where
  to resume.
- Long poll (`wait=` seconds, as Consul's blocking queries): answers at once with the
  changes after `start_revision` when there are some, else waits up to `wait` for the
  first; `next_revision` in the answer is the `start_revision` of the next poll.

A start older than the retained history answers 410 `compacted` with the oldest
revision still readable: the client re-lists (a range read) and watches from there.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kvstore.api.access import authenticate, read_access
from kvstore.api.common import (
    RUNTIME_KEY,
    BadRequest,
    error,
    flag,
    query_values,
    text,
    uint,
)
from kvstore.api.range import kv_json
from kvstore.runtime.node import NodeRuntime
from kvstore.runtime.watch_hub import (
    COMPACTED,
    SHUTDOWN,
    Changes,
    Ended,
    Item,
    Selector,
    Watcher,
)
from kvstore.state.auth import READ
from kvstore.state.history import Compacted, Event, EventKind
from kvstore.state.keyrange import KeyRange

WATCH_PATH = "/v1/watch"
MAX_WAIT_S = 300.0
"""Longest long poll; a client that wants longer simply polls again."""
MAX_POLL_EVENTS = 1000
"""Events in one long-poll answer at most (whole revisions); the rest come next poll."""
COALESCE_BYTES = 64 * 1024
"""Ready changes are written to a stream together up to about this size (one syscall)."""
WRITE_TIMEOUT_S = 30.0
"""A stream write blocked this long (the reader stopped reading) ends the stream."""
RETRY_MS = 1000
"""What an EventSource waits before reconnecting on its own."""
NO_LEADER = "no_leader"
UNAUTHENTICATED = "unauthenticated"
"""Why a stream ends on a node that knows no leader (besides the hub's reasons)."""

_WAIT = re.compile(r"([0-9]{1,6}(?:\.[0-9]{1,3})?)s?")


@dataclass(frozen=True, slots=True)
class WatchRequest:
    selector: Selector
    start_revision: int | None
    prev_kv: bool
    wait: float | None
    """Seconds to wait in the long-poll form; None for a stream."""


def _wait(raw: str) -> float:
    """Seconds, optionally with an `s` (as Consul writes them), at most MAX_WAIT_S."""
    match = _WAIT.fullmatch(raw)
    if match is None or float(match.group(1)) > MAX_WAIT_S:
        raise ValueError(f"expected seconds between 0 and {MAX_WAIT_S:g}, got {raw!r}")
    return float(match.group(1))


_QUERY = {
    "key": text,
    "prefix": text,
    "start_revision": uint,
    "prev_kv": flag,
    "wait": _wait,
}


def parse_watch(request: web.Request, max_key_bytes: int) -> WatchRequest:
    """The query, strictly: exactly one of key/prefix, integers where integers go."""
    q = query_values(request, _QUERY)
    key, prefix = q.get("key"), q.get("prefix")
    if (key is None) == (prefix is None):
        raise BadRequest(400, "bad_query", "give exactly one of 'key' and 'prefix'")
    if len((key or prefix or "").encode("utf-8", "surrogatepass")) > max_key_bytes:
        raise BadRequest(400, "key_too_large", f"the key or prefix exceeds {max_key_bytes} bytes")
    if key == "":
        raise BadRequest(400, "bad_key", "the key must not be empty (use prefix= for all keys)")
    start = q.get("start_revision")
    raw_id = request.headers.get("Last-Event-ID")
    if raw_id is not None:  # what an EventSource saw last wins over its original URL
        try:
            start = max(start or 0, uint(raw_id) + 1)
        except ValueError as exc:
            raise BadRequest(400, "bad_last_event_id", f"Last-Event-ID: {exc}") from None
    if start == 0:
        raise BadRequest(400, "bad_start_revision", "start_revision must be >= 1")
    selector = Selector(key=key, prefix=prefix)
    return WatchRequest(selector, start, q.get("prev_kv", False), q.get("wait"))


# ---------------------------------------------------------------------- the JSON shape


def event_json(event: Event, prev_kv: bool) -> dict[str, Any]:
    kind = "put" if event.kind is EventKind.PUT else "delete"
    out = {"type": kind, **kv_json(event.kv, keys_only=False)}
    if prev_kv:
        out["prev"] = None if event.prev is None else kv_json(event.prev, keys_only=False)
    return out


def _changes_text(changes: Changes, prev_kv: bool) -> bytes:
    """One revision as an SSE message, encoded once for every watcher sharing it."""
    text = changes.encoded.get(prev_kv)
    if text is None:
        events = [event_json(e, prev_kv) for e in changes.events]
        data = json.dumps({"revision": changes.revision, "events": events}, separators=(",", ":"))
        text = changes.encoded[prev_kv] = f"id: {changes.revision}\ndata: {data}\n\n".encode()
    return text


def _ended_json(ended: Ended) -> dict[str, Any]:
    messages = {
        "slow": "the reader fell too far behind; watch again from next_revision",
        COMPACTED: "the history needed to continue is compacted; re-list, then watch",
        SHUTDOWN: "the node is stopping; watch again (on any node) from next_revision",
        NO_LEADER: "this node knows no leader; watch again on another node from next_revision",
        UNAUTHENTICATED: "the token expired or was revoked (or authentication was turned "
        "on): get a new token and watch again from next_revision",
    }
    out: dict[str, Any] = {
        "reason": ended.reason,
        "next_revision": ended.next_revision,
        "message": messages[ended.reason],
    }
    if ended.reason == COMPACTED:
        out["compact_revision"] = ended.compact_revision
    return out


def _compacted(exc: Compacted) -> web.Response:
    return error(
        410,
        "compacted",
        f"{exc}; re-list (a range read at revision >= {exc.compact_revision}) and watch "
        "from the revision it returns + 1",
        compact_revision=exc.compact_revision,
    )


# ---------------------------------------------------------------------- the handler


async def handle_watch(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    try:
        wr = parse_watch(request, runtime.tuning.max_key_bytes)
        keys = _keys(wr.selector)
        read_access(request, runtime.sm.auth, keys.start, keys.end)  # 403: none of it
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    # A user's changes are filtered by the permissions in force when each is sent (a
    # revoke applies to a running watch from its next event), for the user whose token
    # is still valid then (`_reader`).
    try:
        watcher = runtime.watches.watch(wr.selector, wr.start_revision)
    except Compacted as exc:
        return _compacted(exc)
    try:
        if wr.wait is not None:
            return await _long_poll(request, runtime, watcher, wr, wr.wait)
        return await _stream(request, runtime, watcher, wr)
    finally:
        watcher.close()


def _keys(selector: Selector) -> KeyRange:
    if selector.key is not None:
        return KeyRange.single(selector.key)
    return KeyRange.prefix(selector.prefix or "")


def _visible(item: Item | None, runtime: NodeRuntime, user: str | None) -> Item | None:
    """`item` with only the events `user` may read now (None: no filter); a revision
    with none of them has no events."""
    auth = runtime.sm.auth
    if user is None or type(item) is not Changes or not auth.enabled:
        return item
    readable = auth.access(user, READ)
    events = tuple(e for e in item.events if readable.key(e.kv.key))
    return item if len(events) == len(item.events) else Changes(item.revision, events)


def _reader(request: web.Request, runtime: NodeRuntime) -> str | web.Response | None:
    """Who reads the watch now: None with authentication off, the token's user, or the
    401 that ends the watch. The middleware checked the token when the watch started,
    but a watch can outlive it: the token expires, its user changes password or is
    deleted, or authentication is turned on under a watch opened without a token.
    Checking costs one HMAC, so it is done before every send."""
    auth = runtime.sm.auth
    if not auth.enabled:
        return None
    user = authenticate(request.headers.get("Authorization"), auth)
    return user if isinstance(user, str) else user.response()


async def _long_poll(
    request: web.Request,
    runtime: NodeRuntime,
    watcher: Watcher,
    wr: WatchRequest,
    wait: float,
) -> web.Response:
    item: Item | None = await watcher.next(wait)
    user = _reader(request, runtime)
    if isinstance(user, web.Response):  # nothing is sent: the next poll starts here again
        return user
    item = _visible(item, runtime, user)
    events: list[dict[str, Any]] = []
    while type(item) is Changes:
        events += (event_json(e, wr.prev_kv) for e in item.events)
        if len(events) >= MAX_POLL_EVENTS:
            break
        item = _visible(watcher.poll(), runtime, user)
    if not events and runtime.leader_id is None:
        return error(503, "no_leader", "this node knows no leader; poll another node")
    if not events and type(item) is Ended:
        if item.reason == COMPACTED:
            return _compacted(Compacted(item.next_revision - 1, item.compact_revision))
        if item.reason == SHUTDOWN:
            return error(503, "unavailable", "the node is stopping; poll another node")
    progress = watcher.progress()
    next_revision = watcher.next_revision
    if progress is not None:
        next_revision = max(next_revision, progress.revision + 1)
    body = {"revision": runtime.watches.revision, "next_revision": next_revision, "events": events}
    return web.json_response(body, headers={"X-KV-Revision": str(runtime.watches.revision)})


async def _stream(
    request: web.Request,
    runtime: NodeRuntime,
    watcher: Watcher,
    wr: WatchRequest,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold the stream back
        }
    )
    await response.prepare(request)
    try:
        await _events(request, response, runtime, watcher, wr)
    except (TimeoutError, ConnectionError):
        response.force_close()  # the reader is gone or stuck; it resumes from its last id
    return response


async def _events(
    request: web.Request,
    response: web.StreamResponse,
    runtime: NodeRuntime,
    watcher: Watcher,
    wr: WatchRequest,
) -> None:
    created = {"start_revision": watcher.next_revision, "revision": runtime.watches.revision}
    await _write(response, f"retry: {RETRY_MS}\nevent: created\ndata: {json.dumps(created)}\n\n")
    interval = runtime.tuning.watch_progress_ms / 1000
    while True:
        item = await watcher.next(interval)
        user = _reader(request, runtime)
        if isinstance(user, web.Response):
            user = None
            if type(item) is not Ended:
                # Nothing more is sent; the reader resumes, with a new token, from the
                # first revision it has not had.
                resume = item.revision if type(item) is Changes else watcher.next_revision
                item = Ended(UNAUTHENTICATED, resume)
        item = _visible(item, runtime, user)
        if item is None and runtime.leader_id is None:
            # Cut off from the cluster (or between leaders): this node's state may be
            # old and stay old. The reader resumes on another node instead of hearing
            # stale progress here (etcd's "require leader").
            item = Ended(NO_LEADER, watcher.next_revision)
        if item is None:
            progress = watcher.progress()
            if progress is None:  # still waiting to reach the start: keep the line alive
                await _write(response, ": waiting\n\n")
            else:
                data = json.dumps({"revision": progress.revision})
                await _write(
                    response, f"id: {progress.revision}\nevent: progress\ndata: {data}\n\n"
                )
            continue
        parts: list[bytes] = []
        size = 0
        while type(item) is Changes:
            if item.events:
                text = _changes_text(item, wr.prev_kv)
                parts.append(text)
                size += len(text)
            if size >= COALESCE_BYTES:
                break
            item = _visible(watcher.poll(), runtime, user)
        if parts:
            await _write(response, b"".join(parts))
        if type(item) is Ended:
            data = json.dumps(_ended_json(item))
            await _write(response, f"event: cancelled\ndata: {data}\n\n")
            return


async def _write(response: web.StreamResponse, text: str | bytes) -> None:
    """One write to the stream; raises TimeoutError when the reader stopped reading
    (the connection is then dropped and the reader resumes from its last id)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    await asyncio.wait_for(response.write(data), WRITE_TIMEOUT_S)


def add_watch_routes(app: web.Application) -> None:
    async def end_watches(app: web.Application) -> None:
        app[RUNTIME_KEY].watches.close()  # let every stream finish before the server stops

    app.router.add_get(WATCH_PATH, handle_watch)
    app.on_shutdown.append(end_watches)
