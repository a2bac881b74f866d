"""Connection hygiene on both ports: a deadline on receiving each request, and one log
line (not a traceback) for a request that cannot be parsed.

aiohttp closes a keep-alive connection that stays idle (its keepalive_timeout, which
kvstore.server sets from `[tuning] idle_timeout_ms`), but it waits without limit for a
request that never completes: a connection that sends nothing, or a request head or
body trickled in a byte at a time (slowloris) holds a socket and a buffer each, and
enough of them exhaust the node's file descriptors. ConnectionGuard gives every
request `[tuning] receive_timeout_ms` to arrive:
- its head, counted from the connection's opening or the first byte of the request;
- its body, counted from the parsed head, unless the handler declared the body a
  stream (`streamed_body`: the peer port's message stream lasts as long as its
  connection, and is authenticated before it is declared).
A response that lasts (a watch stream, a long poll) is not a request being received,
so it is never cut. The guard sits between the listening socket and aiohttp's
protocol and sees only when bytes arrive, plus (through a middleware) when a handler
starts and ends: it needs nothing of aiohttp's internals. On the client port the fast
lane (kvstore.api.fast_lane) takes the guarded protocol's place: it arms the same Watch
for the requests it parses, and hands connections to guarded aiohttp protocols
(`ConnectionGuard.aiohttp_protocol`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def streamed_body(request: web.Request) -> None:
    """Exempt this request's body from the receive deadline: it is a long-lived stream."""
    guard = request.app.get(GUARD_KEY)
    watch = guard.watch_of(request) if guard is not None else None
    if watch is not None:
        watch.streamed = True


class Watch:
    """One connection's receive deadline, and how many of its requests are being handled."""

    __slots__ = ("_guard", "_timer", "_transport", "handling", "peer", "streamed")

    def __init__(self, guard: ConnectionGuard, transport: asyncio.BaseTransport) -> None:
        self._guard = guard
        self._transport = transport
        self._timer: asyncio.TimerHandle | None = None
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.handling = 0
        self.streamed = False
        """The request being handled declared its body a stream (`streamed_body`)."""

    def arm(self, missing: str, request: web.Request | None = None) -> None:
        """Start the deadline unless one runs already (trickling must not extend it)."""
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._guard.receive_s, self._expire, missing, request)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, missing: str, request: web.Request | None) -> None:
        self._timer = None
        if request is not None and (request.content.is_eof() or self.streamed):
            return  # the body arrived in time, or is a stream
        log.warning(
            "closed the connection from %s: %s within %g s",
            self.peer,
            missing,
            self._guard.receive_s,
        )
        self._transport.abort()  # close() could wait on a TLS goodbye that never comes


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, with its bytes and lifetime observed."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard, self._inner = guard, inner
        self._watch: Watch | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._watch = self._guard.opened(self._inner, transport)
        self._watch.arm("no request received")
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._watch is not None and self._watch.handling == 0:
            self._watch.arm("the request head was not completed")
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self._inner)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    """Receive deadlines for the connections of one listener (one aiohttp runner)."""

    def __init__(self, receive_s: float) -> None:
        self.receive_s = receive_s
        self._watches: dict[object, Watch] = {}

    def install(self, app: web.Application) -> None:
        """Guard `app`'s requests: the middleware first of all, and the guard findable."""
        app.middlewares.insert(0, self.middleware)
        app[GUARD_KEY] = self

    def watch_of(self, request: web.Request) -> Watch | None:
        return self._watches.get(request.protocol)

    def opened(self, protocol: asyncio.Protocol, transport: asyncio.BaseTransport) -> Watch:
        watch = self._watches[protocol] = Watch(self, transport)
        return watch

    def closed(self, protocol: asyncio.Protocol) -> None:
        watch = self._watches.pop(protocol, None)
        if watch is not None:
            watch.disarm()

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """The head is in: its deadline ends, and the body's begins (if one is coming)."""
        watch = self.watch_of(request)
        if watch is None:  # an app served without the guard (tests' servers)
            return await handler(request)
        missing = f"the body of {request.method} {request.path[:80]} was not received"
        watch.handling += 1
        watch.disarm()
        if not request.content.is_eof():
            watch.arm(missing, request)
        try:
            return await handler(request)
        finally:
            watch.handling -= 1
            watch.streamed = False
            watch.disarm()
            if not request.content.is_eof():  # answered early: aiohttp drains the rest
                watch.arm(missing, request)

    def aiohttp_protocol(self, runner: web.AppRunner) -> asyncio.Protocol:
        """`runner`'s aiohttp protocol behind this guard: every connection `listen`
        serves without a lane, and each one a lane hands over."""
        server = runner.server
        assert server is not None, "runner.setup() first"
        return _GuardedProtocol(self, server())

    async def listen(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        protocol: Callable[[], asyncio.Protocol] | None = None,
    ) -> asyncio.Server:
        """Serve `runner`'s application on host:port through the guard (the runner must be
        set up, and its app `install`ed). `protocol` makes each connection's protocol
        instead (a lane, which hands connections to `aiohttp_protocol` ones)."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            protocol or (lambda: self.aiohttp_protocol(runner)),
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=self.receive_s if ssl_context is not None else None,
            backlog=1024,
            reuse_address=True,
        )


GUARD_KEY = web.AppKey("connection_guard", ConnectionGuard)


def hand_over(
    transport: asyncio.BaseTransport, protocol: asyncio.Protocol, data: bytes, paused: bool
) -> None:
    """`protocol` (a guarded aiohttp one) serves `transport` from now on, starting
    with `data`, the bytes its previous protocol (a lane's) received and did not answer."""
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if paused:  # writing
        protocol.pause_writing()
    protocol.data_received(data)


class OneLineProtocolErrors(logging.Filter):
    """aiohttp logs a request it cannot parse with a traceback ("Error handling request
    from ..."), and the first bad request of a connection (garbage, TLS to a plain
    port) at DEBUG only. This filter, on the `aiohttp.server` logger, makes each one
    WARNING line naming the peer and the problem; a connection lost mid-request
    becomes one DEBUG line; any other error keeps its traceback."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | ConnectionError):
            problem = " ".join(str(exc).split())[:200]
            kind = "malformed request" if isinstance(exc, HttpProcessingError) else "cut off"
            record.msg, record.args = f"{record.getMessage()}: {kind}: {problem}", None
            record.exc_info, record.exc_text = None, None
            level = logging.WARNING if isinstance(exc, HttpProcessingError) else logging.DEBUG
            record.levelno, record.levelname = level, logging.getLevelName(level)
        return record.levelno >= self._level


def one_line_protocol_errors() -> None:
    """Install OneLineProtocolErrors at the root logger's current level (once)."""
    logger = logging.getLogger("aiohttp.server")
    if any(isinstance(f, OneLineProtocolErrors) for f in logger.filters):
        return
    logger.addFilter(OneLineProtocolErrors(logging.getLogger().getEffectiveLevel()))
    logger.setLevel(logging.DEBUG)  # so the DEBUG records reach the filter at all
