"""Connection hygiene (kvstore.api.connections) over real sockets on 127.0.0.1: a
connection that sends nothing, half a head, or a trickled body is closed within the
receive deadline with one log line; garbage is one line, not a traceback; a long
response (a watch stream) and a declared body stream outlive every deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from kvstore.api.connections import ConnectionGuard, one_line_protocol_errors, streamed_body

RECEIVE_S = 0.4
IDLE_S = 0.8
LIMIT_S = 5.0
"""A generous bound on when a closed connection must be seen closed (a loaded machine)."""


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def _stream_out(request: web.Request) -> web.StreamResponse:
    """Like a watch: one line now and then, for longer than every deadline."""
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(int(3 * IDLE_S / 0.1)):
        await response.write(b"tick\n")
        await asyncio.sleep(0.1)
    await response.write_eof()
    return response


async def _stream_in(request: web.Request) -> web.Response:
    """Like the peer port's message stream: the body lasts as long as the sender."""
    streamed_body(request)
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
    return web.Response(text=str(total))


@pytest.fixture
async def port(caplog: pytest.LogCaptureFixture) -> AsyncIterator[int]:
    caplog.set_level(logging.INFO)
    one_line_protocol_errors()
    guard = ConnectionGuard(RECEIVE_S)
    app = web.Application()
    guard.install(app)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/watch", _stream_out)
    app.router.add_post("/stream", _stream_in)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=IDLE_S)
    await runner.setup()
    listener = await guard.listen(runner, "127.0.0.1", 0, None)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await runner.cleanup()


async def _closed_after(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bytes = b""
) -> float:
    """Seconds until the server closes the connection (sending `trickle` a byte at a time
    meanwhile); fails if it stays open past LIMIT_S."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending = list(trickle)
    while loop.time() - start < LIMIT_S:
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.1)
        except TimeoutError:
            if pending:
                writer.write(bytes([pending.pop(0)]))
                try:
                    await writer.drain()
                except ConnectionError:
                    return loop.time() - start
            continue
        except ConnectionError:
            return loop.time() - start
        if not data:
            return loop.time() - start
    raise AssertionError(f"the connection was still open after {LIMIT_S} s")


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_a_connection_that_sends_nothing_is_closed(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    waited = await _closed_after(reader, writer)
    writer.close()
    assert RECEIVE_S * 0.8 <= waited < IDLE_S  # the receive deadline, not the idle one
    (line,) = _lines(caplog, "no request received")
    assert "127.0.0.1:" in line.getMessage() and line.exc_info is None


async def test_a_head_trickled_in_is_closed_at_the_deadline(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
    waited = await _closed_after(reader, writer, trickle=b"X-Slow: " + b"a" * 100)
    writer.close()
    assert waited < RECEIVE_S + 1.0  # trickling does not extend it
    (line,) = _lines(caplog, "closed the connection from 127.0.0.1:")
    assert "no request received" in line.getMessage()


async def test_a_body_trickled_in_is_closed_at_the_deadline(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    waited = await _closed_after(reader, writer, trickle=b"c" * 98)
    writer.close()
    assert waited < RECEIVE_S + 1.0
    (line,) = _lines(caplog, "closed the connection from")
    assert "the body of POST /echo was not received" in line.getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback"


async def test_a_body_trickled_after_an_early_answer_is_closed_too(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    waited = await _closed_after(reader, writer, trickle=b"c" * 98)
    writer.close()
    assert waited < RECEIVE_S + 1.0  # not aiohttp's 10 s of draining the rest
    (line,) = _lines(caplog, "closed the connection from")
    assert "the body of POST /nowhere was not received" in line.getMessage()


async def test_the_next_request_head_gets_its_own_deadline(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), LIMIT_S)
    assert head.startswith(b"HTTP/1.1 200")
    writer.write(b"GET /wat")  # half a second request, then silence
    waited = await _closed_after(reader, writer)
    writer.close()
    assert waited < IDLE_S  # the receive deadline, sooner than the idle one
    (line,) = _lines(caplog, "the request head was not completed")
    assert "127.0.0.1:" in line.getMessage()


async def test_an_idle_keep_alive_connection_is_closed_quietly(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), LIMIT_S)
    waited = await _closed_after(reader, writer)
    writer.close()
    assert IDLE_S * 0.8 <= waited < IDLE_S + 2.0
    assert _lines(caplog, "closed the connection") == []


async def test_garbage_is_one_line_not_a_traceback(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x16\x03\x01\x02\x00 this is not http\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), LIMIT_S)
    writer.close()
    assert answer.split(b" ")[1] == b"400"
    (line,) = _lines(caplog, "malformed request")
    assert "127.0.0.1" in line.getMessage() and "\n" not in line.getMessage()
    assert line.levelno == logging.WARNING and line.exc_info is None


async def test_a_bad_header_on_a_second_request_is_one_line(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), LIMIT_S)
    writer.write(b"GET /echo HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), LIMIT_S)
    writer.close()
    assert answer.split(b" ")[1] == b"400"
    (line,) = _lines(caplog, "malformed request")
    assert line.exc_info is None and "\n" not in line.getMessage()


async def test_a_watch_stream_outlives_every_deadline(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /watch HTTP/1.1\r\nHost: x\r\n\r\n")
    loop = asyncio.get_running_loop()
    start = loop.time()
    body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), LIMIT_S + 3 * IDLE_S)
    writer.close()
    assert loop.time() - start >= 2 * IDLE_S
    assert body.count(b"tick") >= 10
    assert _lines(caplog, "closed the connection") == []


async def test_a_declared_body_stream_outlives_every_deadline(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(int(2 * IDLE_S / 0.1)):
        writer.write(b"4\r\nbeat\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
    writer.write(b"0\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT_S)
    rest = await asyncio.wait_for(reader.read(2), LIMIT_S)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert rest == str(4 * int(2 * IDLE_S / 0.1)).encode()[:2]
    assert _lines(caplog, "closed the connection") == []
