"""The fast lane: the client port's hot routes served without aiohttp's request machinery.

About half of a node's event-loop time under load went to aiohttp's request handling
and the four middlewares around `/v1/kv/{key}`. Every connection of the client port
now starts here: a protocol of our own parses each request (kvstore.api.http_wire)
and serves GET, PUT and DELETE on `/v1/kv/{key}` and POST on `/v1/txn` itself, calling
the very functions the aiohttp routes and middlewares call: kv_answer (kvstore.api.kv)
and txn_answer (kvstore.api.txn), the auth gate (kvstore.api.access.admit with the
route's rule), the request counters of `/metrics` (RequestStats), and the connection
guard's receive deadline (kvstore.api.connections). Each answer is one
transport.write; pipelined requests are answered one after another, in order.

Anything else (another route or method, a query that needs decoding, a chunked body,
Expect, Upgrade, a malformed or unusual head, a value over the size limit: 413, a
transaction over it) is
handed to aiohttp for the rest of the connection: its protocol takes the transport
and every byte from the start of that request, and the connection never comes back.
So watches, streams and every other route keep their exact behaviour, and aiohttp
still answers malformed requests with its 400s.

`KV_FAST_LANE=off` serves every connection with aiohttp (to compare the two paths);
it switches off the peer port's lane too (kvstore.api.peer_lane).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import cast

from aiohttp import web

from consensus import NotLeader, ProposalDropped
from kvstore.api.access import admit, key_rule
from kvstore.api.common import RUNTIME_KEY, Answer, BadRequest, Refused, error_answer
from kvstore.api.connections import ConnectionGuard, Watch, hand_over
from kvstore.api.http_wire import (
    MAX_HEAD,
    TXN_PATH,
    Handoff,
    Head,
    encode_answer,
    parse_head,
)
from kvstore.api.kv import (
    key_answer,
    kv_answer,
    parse_key,
    read_answer,
    result_answer,
    write_command,
    write_parts,
)
from kvstore.api.metrics import STATS_KEY, kv_operation
from kvstore.api.serve import UNSAFE_LOCAL_READS, proposed
from kvstore.api.txn import txn_answer
from kvstore.runtime.requests import Callback, Outcome, RuntimeStopped
from kvstore.state.commands import Command
from kvstore.state.machine import ApplyResult

log = logging.getLogger(__name__)

ENABLED = os.environ.get("KV_FAST_LANE", "on") != "off"
_INTERNAL_ERROR = error_answer(500, "internal", "internal error")
"""The answer to a request whose handling hit a bug; the connection is then closed."""


_TXN_OPERATION = f"POST {TXN_PATH}"
"""The transaction route's label in the request metrics, as the aiohttp middleware's."""


def _any_user(user: str) -> str | None:
    """The transaction route's rule (kvstore.api.access.in_handler): any authenticated
    user; txn_answer refuses what its operations may not touch."""
    return None


def _internal_error(head: Head) -> Answer:
    """A bug while answering `head`: logged with its traceback, and answered with 500
    (what aiohttp does for an unhandled exception)."""
    log.exception("error serving %s %s", head.method, head.path[:80])
    return _INTERNAL_ERROR


class FastLane:
    """What every connection of one client port shares: the node, the app's request
    counters, the guard, and aiohttp's protocol factory for the connections handed off.
    Make it before the runner is set up (it registers for the app's shutdown)."""

    def __init__(
        self, app: web.Application, runner: web.AppRunner, guard: ConnectionGuard, idle_s: float
    ) -> None:
        self.runtime = app[RUNTIME_KEY]
        self.stats = app.get(STATS_KEY)
        self.guard = guard
        self.idle_s = idle_s
        self._runner = runner
        tuning = self.runtime.tuning
        self.max_key_bytes = tuning.max_key_bytes
        self.max_value_bytes = tuning.max_value_bytes
        self.max_buffered = MAX_HEAD + tuning.max_value_bytes
        """Bytes read ahead (pipelined requests) before reading pauses."""
        self.timeout_s = tuning.request_timeout_ms / 1000
        self.direct_reads = not UNSAFE_LOCAL_READS
        self.connections: set[_Connection] = set()
        app.on_shutdown.append(self.shutdown)

    def protocol(self) -> asyncio.Protocol:
        """The protocol of a new client connection (ConnectionGuard.listen's factory)."""
        return _Connection(self)

    def aiohttp_protocol(self) -> asyncio.Protocol:
        """aiohttp's protocol for a connection handed off, behind the guard."""
        return self.guard.aiohttp_protocol(self._runner)

    def route(self, head: Head) -> None:
        """Set `head.key`, or Handoff when aiohttp's router could see this path otherwise
        than parse_key does (an empty key is the range route; a newline stops the
        route's pattern; dot segments may be normalized) or the key is refused (the
        aiohttp route gives the 400). A transaction over the value limit goes to aiohttp
        too, which bounds a body by the request size limit instead."""
        if head.method == "POST":  # the transaction route (parse_head checked the path)
            if head.length > self.max_value_bytes:
                raise Handoff("a transaction body over the value limit")
            return
        try:
            key = parse_key(head.path, self.max_key_bytes)
        except BadRequest:
            raise Handoff("a key the route refuses") from None
        if "\n" in key or "/." in "/" + key:
            raise Handoff("a key aiohttp's router may read otherwise")
        if head.length > self.max_value_bytes:
            raise Handoff("a value over the limit (413)")
        head.key = key

    async def answer(self, head: Head, body: bytes) -> Answer:
        """The answer to one request, counted as the metrics middleware counts."""
        started = time.perf_counter()
        answer = await self._answer(head, body)
        self.count(head, answer, started)
        return answer

    def count(self, head: Head, answer: Answer, started: float) -> None:
        if self.stats is not None:
            operation = _TXN_OPERATION if head.method == "POST" else kv_operation(head.method)
            self.stats.observe(operation, answer.status, time.perf_counter() - started)

    def serves_directly(self, head: Head) -> bool:
        """Whether this request is answered without a task of its own, by callbacks: a
        PUT or DELETE (_Connection._write), or a plain linearizable GET (no query:
        _Connection._read), with auth off on a running node. Anything else takes
        kv_answer's path."""
        runtime = self.runtime
        if runtime.sm.auth.enabled or runtime.stopping or runtime.fatal_error is not None:
            return False
        if head.method == "POST":
            return False  # a transaction: txn_answer, in a task
        return head.method != "GET" or (self.direct_reads and not head.query)

    async def _answer(self, head: Head, body: bytes) -> Answer:
        runtime, method, key = self.runtime, head.method, head.key
        auth = runtime.sm.auth
        user = None
        if auth.enabled:  # the auth middleware's gate, with the route's rule
            rule = _any_user if method == "POST" else lambda u: key_rule(auth, u, method, key)
            admitted = admit(auth, head.headers.get("authorization"), rule)
            if not isinstance(admitted, str):
                return admitted
            user = admitted

        async def read_body() -> bytes:
            return body

        if method == "POST":
            return await txn_answer(runtime, head.query, head.headers, user, read_body)
        return await kv_answer(runtime, method, key, head.query, head.headers, user, read_body)

    async def shutdown(self, _app: web.Application | None = None) -> None:
        """The app's shutdown: idle connections close now, busy ones after their answer
        (aiohttp does the same with its own connections)."""
        for connection in list(self.connections):
            connection.close_soon()


class _Connection(asyncio.Protocol):
    """One client connection while the fast lane serves it."""

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._watch: Watch | None = None
        self._buffer = bytearray()
        """Bytes received and not yet taken as a request."""
        self._head: Head | None = None
        """A head whose body is still arriving."""
        self._busy = False
        """A request is being answered (the next one waits: answers go out in order)."""
        self._closing = False
        self._writing_paused = False
        self._reading_paused = False
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        """The answer being made (held: the loop keeps only weak references to tasks)."""
        self._reading: tuple[Head, float, float] | None = None
        """A GET waiting for its read index: (head, started, deadline)."""
        self._writing: tuple[Head, float, Command, float] | None = None
        """A write waiting for its entry: (head, started, command, deadline)."""

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._watch = self._lane.guard.opened(self, transport)
        self._watch.arm("no request received")
        self._lane.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy and not self._writing_paused:
            self._next()
        self._flow()

    def eof_received(self) -> bool | None:
        return None  # as aiohttp: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._lane.guard.closed(self)
        self._lane.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self._busy and self._buffer:
            self._next()
        self._flow()

    # ------------------------------------------------------------------ requests

    def _next(self) -> None:
        """Take the next complete request from the buffer and answer it, hand the
        connection to aiohttp, or arm the deadline of what is still arriving."""
        buffer, head = self._buffer, self._head
        watch = self._watch
        assert watch is not None
        if head is None:
            handoff = False
            try:
                head = parse_head(buffer)
                if head is not None:
                    self._lane.route(head)
            except Handoff:
                handoff = True
            if handoff:  # outside the except: aiohttp's own errors have no context
                self._hand_off()
                return
            if head is None:
                if buffer:
                    watch.arm("the request head was not completed")
                return
        end = head.size + head.length
        if len(buffer) < end:
            if self._head is None:  # the head is in: its deadline ends, the body's begins
                self._head = head
                watch.disarm()
                watch.arm(f"the body of {head.method} {head.path[:80]} was not received")
            return
        self._head = None
        watch.disarm()
        body = bytes(buffer[head.size : end])
        del buffer[:end]
        self._busy = True
        if not self._lane.serves_directly(head):
            self._task = self._loop.create_task(self._serve(head, body))
        elif head.method == "GET":
            self._read(head)
        else:
            self._write(head, body)

    def _write(self, head: Head, body: bytes) -> None:
        """A PUT or DELETE without a task, a future or a coroutine of its own: proposed
        at once (NodeRuntime.submit) and answered from inside the apply loop
        (_written). A first attempt that fails takes kv_answer's path (proposed), which
        retries what may be retried, by the same deadline, and answers the rest."""
        lane = self._lane
        runtime = lane.runtime
        started = time.perf_counter()
        try:
            cmd = write_command(head.key, write_parts(head.method, head.query, head.headers), body)
        except Refused as exc:
            self._answered(head, started, error_answer(exc.status, exc.code, exc.message))
            return
        except Exception:  # a bug: as in _serve
            self._answered(head, started, _internal_error(head))
            return
        deadline = runtime.loop.time() + lane.timeout_s
        self._writing = (head, started, cmd, deadline)
        try:
            runtime.submit(cmd, deadline, Callback(self._written))
        except (NotLeader, ProposalDropped, RuntimeStopped) as exc:  # never proposed
            self._written(exc)
        except Exception:  # a bug: as in _serve
            self._writing = None
            self._answered(head, started, _internal_error(head))

    def _written(self, outcome: Outcome) -> None:
        if self._writing is None:
            return  # answered already: a bug while proposing it (500)
        head, started, cmd, deadline = self._writing
        self._writing = None
        if isinstance(outcome, Exception):
            self._task = self._loop.create_task(
                self._serve_write(head, started, cmd, deadline, outcome)
            )
            return
        try:
            answer = result_answer(cast("ApplyResult | None", outcome))
        except Exception:  # a bug: as in _serve
            answer = _internal_error(head)
        self._answered(head, started, answer)

    async def _serve_write(
        self, head: Head, started: float, cmd: Command, deadline: float, failed: Exception
    ) -> None:
        try:
            result = await proposed(self._lane.runtime, cmd, None, deadline, failed)
            answer = result_answer(result)
        except Refused as exc:
            answer = error_answer(exc.status, exc.code, exc.message)
        except Exception:  # a bug: as in _serve
            answer = _internal_error(head)
        self._answered(head, started, answer)

    def _answered(self, head: Head, started: float, answer: Answer) -> None:
        self._lane.count(head, answer, started)
        self._respond(head, answer)

    async def _serve(self, head: Head, body: bytes) -> None:
        try:
            answer = await self._lane.answer(head, body)
        except Exception:  # a bug: aiohttp would answer 500 and log it, as here
            answer = _internal_error(head)
        self._respond(head, answer)

    def _read(self, head: Head) -> None:
        """A linearizable GET without a task or a future of its own: the reads of one
        loop turn share one read index (ViaLeader.confirm), which answers each of them
        straight from the state machine (_read_confirmed)."""
        runtime = self._lane.runtime
        deadline = runtime.loop.time() + self._lane.timeout_s
        self._reading = (head, time.perf_counter(), deadline)
        runtime.via_leader.confirm(self._read_confirmed, deadline)

    def _read_confirmed(self, outcome: int | Exception) -> None:
        assert self._reading is not None
        head, started, deadline = self._reading
        self._reading = None
        if isinstance(outcome, Exception):  # no index (leader change, time-out, shutdown):
            # kv_answer's path retries or refuses, by the same deadline
            self._task = self._loop.create_task(self._serve_read(head, started, deadline))
            return
        try:
            answer = key_answer(self._lane.runtime, head.key)
        except Exception:  # a bug: as in _serve
            answer = _internal_error(head)
        self._answered(head, started, answer)

    async def _serve_read(self, head: Head, started: float, deadline: float) -> None:
        try:
            answer = await read_answer(self._lane.runtime, head.key, deadline, stale=False)
        except Exception:  # a bug: as in _serve
            answer = _internal_error(head)
        self._answered(head, started, answer)

    def _respond(self, head: Head, answer: Answer) -> None:
        """Write the answer, then take the next request (or idle, or close: after an
        internal error, as aiohttp does)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        close = answer is _INTERNAL_ERROR or not head.keep_alive or self._closing
        leader = self._lane.runtime.leader_id
        transport.write(encode_answer(answer, head.version, leader, close))
        self._busy = False
        if close:
            transport.close()
            return
        if self._buffer and not self._writing_paused:
            self._next()
        if not self._busy and not self._buffer:
            self._idle()
        self._flow()

    def _flow(self) -> None:
        """Read while answers leave and little waits in the buffer; pause otherwise."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pause = self._writing_paused or len(self._buffer) > self._lane.max_buffered
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # ------------------------------------------------------------------ idle, shutdown

    def _idle(self) -> None:
        """A keep-alive connection with no request is closed after idle_s, quietly
        (one timer per connection, moved forward only when it fires)."""
        self._idle_since = self._loop.time()
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_at(
                self._idle_since + self._lane.idle_s, self._idle_check
            )

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._closing:
            return
        if self._busy or self._buffer:
            self._idle_since = self._loop.time()  # in use since; the guard watches receipt
        due = self._idle_since + self._lane.idle_s
        if due <= self._loop.time():
            assert self._transport is not None
            self._transport.close()
            return
        self._idle_timer = self._loop.call_at(due, self._idle_check)

    def close_soon(self) -> None:
        """At shutdown: close now when idle, else after the answer being made."""
        self._closing = True
        if not self._busy and self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ handoff

    def _hand_off(self) -> None:
        """aiohttp serves this connection from now on, from the current request's first
        byte (everything before it was answered here)."""
        lane, transport = self._lane, self._transport
        assert transport is not None
        self._closing = True
        lane.guard.closed(self)
        lane.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._transport = None  # no longer ours: _flow leaves it alone
        data, self._buffer = bytes(self._buffer), bytearray()
        self._head = None
        hand_over(transport, lane.aiohttp_protocol(), data, self._writing_paused)
