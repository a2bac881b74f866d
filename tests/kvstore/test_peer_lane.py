"""kvstore.api.peer_lane: the peer port's message stream served by our own protocol.

Each scenario runs against the lane and against aiohttp's handler (the path every
other peer request still takes) and must give the same result: the same messages
stepped in the same order, the same refusals (head HMAC, frame HMAC, wrong recipient,
removed sender with its signed 410), and every other request handed to aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from consensus.codec import encode_messages
from consensus.messages import AppendEntries, RequestVote
from consensus.types import Entry
from kvstore.api.connections import ConnectionGuard
from kvstore.api.peer import make_peer_app
from kvstore.api.peer_lane import PeerLane
from kvstore.peers.auth import AUTH_HEADER, PeerAuth
from kvstore.peers.link import frame
from kvstore.peers.transport import Transport
from tests.kvstore.test_runtime import _eventually

pytestmark = pytest.mark.timeout(30)

SECRET = b"s" * 32
PATHS = ["lane", "aiohttp"]


class _Seen:
    """The incarnations this node has seen: none (the senders here name none)."""

    restored = False

    def get(self, node: str) -> str | None:
        return None


@dataclass
class _Sink:
    """The runtime as the peer endpoints see it: n2, with members n1 and n2."""

    peer_auth: PeerAuth
    node_id: str = "n2"
    removed: frozenset[str] = frozenset()
    got: list[object] = field(default_factory=list)
    snapshot_receiver: None = None
    incarnations: _Seen = field(default_factory=_Seen)

    def admit(self, sender: str, sender_url: str | None) -> str | None:
        if sender in self.removed:
            return "removed"
        return None if sender in ("n1", "n2") else "unknown"

    def step_messages(self, msgs: list[object]) -> None:
        self.got.extend(msgs)


@contextlib.asynccontextmanager
async def _serve(sink: _Sink, path: str) -> AsyncIterator[int]:
    """The peer app on an OS-chosen port, through the lane or through aiohttp alone."""
    app = make_peer_app(sink)  # type: ignore[arg-type]
    guard = ConnectionGuard(5.0)
    guard.install(app)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    lane = PeerLane(app, runner, guard) if path == "lane" else None
    await runner.setup()
    server = await guard.listen(
        runner, "127.0.0.1", 0, None, lane.protocol if lane is not None else None
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await runner.cleanup()


def _head(auth: PeerAuth, port: int) -> tuple[bytes, object]:
    headers, tagger = auth.request_headers("n2", "http://127.0.0.1:1", None)
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = (
        f"POST /raft/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{fields}"
        "Content-Type: application/x-raft-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head.encode(), tagger


async def _exchange(port: int, data: bytes, pieces: int = 1) -> tuple[int, dict, bytes]:
    """Send `data` (in `pieces` writes), then read one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    step = max(1, len(data) // pieces)
    for at in range(0, len(data), step):
        writer.write(data[at : at + step])
        await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    lines = head.decode().split("\r\n")[:-2]
    headers = {name.lower(): value for name, value in (ln.split(": ", 1) for ln in lines[1:])}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    writer.close()
    await writer.wait_closed()
    return int(lines[0].split(" ")[1]), headers, body


def _votes(count: int, sender: str = "n1", recipient: str = "n2") -> list[RequestVote]:
    return [RequestVote(term, sender, recipient, 0, 0) for term in range(1, count + 1)]


@pytest.mark.parametrize("path", PATHS)
async def test_the_transport_delivers_every_batch_in_order(path: str) -> None:
    sink = _Sink(PeerAuth("c", "n2", SECRET))
    async with _serve(sink, path) as port:
        transport = Transport(
            "n1", {"n2": f"http://127.0.0.1:{port}"}, auth=PeerAuth("c", "n1", SECRET)
        )
        await transport.start()
        try:
            for i in range(1, 201):  # many frames, some in one segment, some not
                transport.send([RequestVote(i, "n1", "n2", 0, 0)])
                if i % 7 == 0:
                    await asyncio.sleep(0)
            entries = tuple(Entry(5, i, b"v" * 300) for i in range(1, 60))
            transport.send([AppendEntries(5, "n1", "n2", 0, 0, entries, 3)])
            await _eventually(lambda: len(sink.got) == 201)
        finally:
            await transport.close()
    assert [m.term for m in sink.got] == [*range(1, 201), 5]  # type: ignore[attr-defined]
    assert sink.got[-1].entries == entries  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("pieces", [1, 3, 10_000])
async def test_frames_split_anywhere_and_the_last_chunk_give_all_then_204(
    path: str, pieces: int
) -> None:
    """Chunks cut at any byte (a frame across segments, several in one), the stream's
    last chunk in the same segment as the last frame: every batch, then 204."""
    sink = _Sink(PeerAuth("c", "n2", SECRET))
    async with _serve(sink, path) as port:
        head, tagger = _head(PeerAuth("c", "n1", SECRET), port)
        frames = b"".join(
            frame(encode_messages(_votes(i)[-2:]), tagger)  # type: ignore[arg-type]
            for i in range(2, 40)
        )
        status, _, _ = await _exchange(port, head + frames + b"0\r\n\r\n", pieces)
    assert status == 204
    assert [m.term for m in sink.got] == [t for i in range(2, 40) for t in (i - 1, i)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", PATHS)
async def test_a_tampered_frame_ends_the_stream_with_401_and_steps_nothing_more(
    path: str,
) -> None:
    sink = _Sink(PeerAuth("c", "n2", SECRET))
    async with _serve(sink, path) as port:
        head, tagger = _head(PeerAuth("c", "n1", SECRET), port)
        good = frame(encode_messages(_votes(1)), tagger)  # type: ignore[arg-type]
        bad = bytearray(frame(encode_messages(_votes(2)[1:]), tagger))  # type: ignore[arg-type]
        bad[-3] ^= 1  # the last byte of the frame's MAC
        after = frame(encode_messages(_votes(3)[2:]), tagger)  # type: ignore[arg-type]
        status, _, body = await _exchange(port, head + good + bytes(bad) + after)
    assert (status, json.loads(body)["error"]) == (401, "bad_signature")
    assert [m.term for m in sink.got] == [1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", PATHS)
async def test_a_head_signed_with_another_secret_is_refused(path: str) -> None:
    sink = _Sink(PeerAuth("c", "n2", SECRET))
    async with _serve(sink, path) as port:
        head, tagger = _head(PeerAuth("c", "n1", b"x" * 32), port)
        data = head + frame(encode_messages(_votes(1)), tagger)  # type: ignore[arg-type]
        status, _, body = await _exchange(port, data)
    assert (status, json.loads(body)["error"]) == (401, "bad_signature")
    assert sink.got == []


@pytest.mark.parametrize("path", PATHS)
async def test_a_batch_for_another_node_is_refused(path: str) -> None:
    sink = _Sink(PeerAuth("", "n2"))
    async with _serve(sink, path) as port:
        head, _ = _head(PeerAuth("", "n1"), port)
        data = head + frame(encode_messages(_votes(1, recipient="n7")))
        status, _, body = await _exchange(port, data)
    assert (status, json.loads(body)["error"]) == (400, "wrong_recipient")
    assert sink.got == []


@pytest.mark.parametrize("path", PATHS)
async def test_a_removed_sender_gets_a_signed_410(path: str) -> None:
    sink = _Sink(PeerAuth("c", "n2", SECRET), removed=frozenset({"n1"}))
    sender = PeerAuth("c", "n1", SECRET)
    async with _serve(sink, path) as port:
        head, tagger = _head(sender, port)
        nonce = head.split(b"X-Raft-Nonce: ")[1].split(b"\r\n")[0].decode()
        data = head + frame(encode_messages(_votes(1)), tagger)  # type: ignore[arg-type]
        status, headers, body = await _exchange(port, data)
    assert (status, json.loads(body)["error"]) == (410, "removed_member")
    assert AUTH_HEADER.lower() in headers
    assert sender.removal_is_genuine(headers, "n2", nonce)


async def test_other_requests_are_handed_to_aiohttp() -> None:
    """A plain one-batch POST and GET /raft/seen are aiohttp's, from their first byte."""
    sink = _Sink(PeerAuth("", "n2"))
    async with _serve(sink, "lane") as port, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        headers, _ = PeerAuth("", "n1").request_headers("n2", "http://127.0.0.1:1", b"")
        async with http.post(
            f"{base}/raft/messages", data=encode_messages(_votes(2)), headers=headers
        ) as resp:
            assert resp.status == 204
        async with http.get(f"{base}/raft/seen?node=n1", headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["node"] == "n1"
        async with http.get(f"{base}/raft/seen?node=n1&node=n1", headers=headers) as resp:
            assert resp.status == 400  # aiohttp's strict query check
    assert [m.term for m in sink.got] == [1, 2]  # type: ignore[attr-defined]


async def test_shutdown_answers_open_streams() -> None:
    sink = _Sink(PeerAuth("", "n2"))
    async with contextlib.AsyncExitStack() as stack:
        port = await stack.enter_async_context(_serve(sink, "lane"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head, _ = _head(PeerAuth("", "n1"), port)
        writer.write(head + frame(encode_messages(_votes(1))))
        await _eventually(lambda: len(sink.got) == 1)
        await stack.aclose()  # the app shuts down with the stream open
        answer = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 204 ")


@pytest.mark.parametrize("path", PATHS)
async def test_chunk_extensions_are_ignored(path: str) -> None:
    sink = _Sink(PeerAuth("", "n2"))
    async with _serve(sink, path) as port:
        head, _ = _head(PeerAuth("", "n1"), port)
        chunk = frame(encode_messages(_votes(1)))
        size_line, rest = chunk.split(b"\r\n", 1)
        status, _, _ = await _exchange(port, head + size_line + b";x=1\r\n" + rest + b"0\r\n\r\n")
    assert status == 204
    assert [m.term for m in sink.got] == [1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("size_line", [b"+10", b"1_0", b" 10", b"x"])
async def test_a_malformed_chunk_ends_the_stream_with_400(size_line: bytes) -> None:
    sink = _Sink(PeerAuth("", "n2"))
    async with _serve(sink, "lane") as port:
        head, _ = _head(PeerAuth("", "n1"), port)
        good = frame(encode_messages(_votes(1)))
        status, _, body = await _exchange(port, head + good + size_line + b"\r\n" + b"a" * 16)
    assert (status, json.loads(body)["error"]) == (400, "bad_messages")
    assert [m.term for m in sink.got] == [1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", PATHS)
async def test_frames_arriving_after_the_head_in_whole_chunks_or_not(path: str) -> None:
    """What the lane reads straight from each segment once the stream is open (a chunk
    of exactly whole frames, several in one chunk) and what it must leave to the
    buffered path (a frame across two chunks, a chunk across two segments), then a
    tampered frame in a segment of its own: everything before it, in order, then 401."""
    sink = _Sink(PeerAuth("c", "n2", SECRET))
    async with _serve(sink, path) as port:
        head, tagger = _head(PeerAuth("c", "n1", SECRET), port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        def body(term: int) -> bytes:
            batch = encode_messages(_votes(term)[-1:])  # type: ignore[arg-type]
            return batch + tagger.tag(batch)  # type: ignore[attr-defined]

        def chunk(payload: bytes) -> bytes:
            return b"%x\r\n" % len(payload) + payload + b"\r\n"

        def framed(term: int) -> bytes:
            data = body(term)
            return len(data).to_bytes(4, "big") + data

        first = frame(body(1))  # one frame, one chunk
        pair = chunk(framed(2) + framed(3))  # two frames in one chunk
        split = framed(4)  # one frame across two chunks
        fifth = frame(body(5))  # a chunk across two segments
        segments = [
            first,
            pair,
            chunk(split[:5]) + chunk(split[5:]),
            fifth[:7],
            fifth[7:] + frame(body(6)),
        ]
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.05)  # the head alone, so that the stream opens first
        expected = [[1], [1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]
        for segment, terms in zip(segments, expected, strict=True):
            writer.write(segment)
            await writer.drain()
            await _eventually(lambda terms=terms: [m.term for m in sink.got] == terms)  # type: ignore[attr-defined]
        bad = bytearray(frame(body(7)))
        bad[-3] ^= 1  # the last byte of the frame's MAC
        writer.write(bytes(bad) + frame(body(8)))
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        length = int(answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        error = json.loads(await reader.readexactly(length))["error"]
        writer.close()
    assert (answer.split(b" ", 2)[1], error) == (b"401", "bad_signature")
    assert [m.term for m in sink.got] == [1, 2, 3, 4, 5, 6]  # type: ignore[attr-defined]
