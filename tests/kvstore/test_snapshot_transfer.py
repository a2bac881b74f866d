"""InstallSnapshot in checksummed chunks: resuming, refusing damage, delivering only whole
snapshots. A real aiohttp peer app on loopback; the sink stands in for the runtime."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consensus import InstallSnapshot, Membership, SnapshotMeta
from kvstore.api.peer import make_peer_app
from kvstore.peers.auth import PeerAuth
from kvstore.peers.snapshot_transfer import (
    SNAPSHOT_PATH,
    SnapshotReceiver,
    SnapshotSender,
    SnapshotSendError,
    encode_chunk,
)

pytestmark = pytest.mark.timeout(60)

CHUNK = 64 << 10
MSG = InstallSnapshot(5, "n1", "n2", SnapshotMeta(1234, 4, Membership(("n1", "n2", "n3"))))
DATA = random.Random(7).randbytes(10 * CHUNK + 123)
DIGEST = hashlib.sha256(DATA).digest()


@dataclass
class _Sink:
    tmp: Path
    node_id: str = "n2"
    delivered: list[tuple[InstallSnapshot, bytes]] = field(default_factory=list)
    peer_auth: PeerAuth = field(default_factory=lambda: PeerAuth("", "n2"))

    def __post_init__(self) -> None:
        self.snapshot_receiver = SnapshotReceiver(self.tmp / "incoming", self._deliver)

    async def _deliver(self, msg: InstallSnapshot, data: bytes) -> None:
        self.delivered.append((msg, data))

    def admit(self, sender: str, sender_url: str | None) -> str | None:
        return None if sender in ("n1", "n3") else "unknown"

    def step_messages(self, msgs: object) -> None:
        raise AssertionError("no plain messages expected")


@contextlib.asynccontextmanager
async def _peer(tmp: Path, drop_chunk: int | None = None) -> AsyncIterator[tuple[_Sink, str]]:
    """A receiving node; with `drop_chunk`, the connection carrying that chunk (counted
    from 1, handshakes included) is cut before it is answered, once."""
    sink = _Sink(tmp)
    app = make_peer_app(sink)
    seen = {"posts": 0, "dropped": False}

    @web.middleware
    async def cut(request: web.Request, handler):  # type: ignore[no-untyped-def]
        seen["posts"] += 1
        if seen["posts"] == drop_chunk and not seen["dropped"]:
            seen["dropped"] = True
            await request.read()
            assert request.transport is not None
            request.transport.close()  # the sender sees the connection drop mid-transfer
            raise ConnectionResetError("cut")
        return await handler(request)

    app.middlewares.append(cut)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield sink, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _post(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async with http.post(url + SNAPSHOT_PATH, data=body) as resp:
        return resp.status, await resp.json()


async def test_a_transfer_cut_midway_resumes_where_the_receiver_stands(tmp_path: Path) -> None:
    async with _peer(tmp_path) as (sink, url), aiohttp.ClientSession() as http:
        for i in range(3):  # a first sender gets three chunks through, then vanishes
            chunk = DATA[i * CHUNK : (i + 1) * CHUNK]
            body = encode_chunk(MSG, len(DATA), DIGEST, i * CHUNK, chunk)
            status, answer = await _post(http, url, body)
            assert (status, answer) == (200, {"next_offset": (i + 1) * CHUNK, "done": False})
        sender = SnapshotSender(http, url, MSG, DATA, chunk_bytes=CHUNK)
        await sender.run()
        assert sender.resumed_at == [3 * CHUNK]
        assert sender.sent_bytes == len(DATA) - 3 * CHUNK
        assert sink.snapshot_receiver.bytes_written == len(DATA)  # nothing written twice
        assert sink.delivered == [(MSG, DATA)]
        assert not list((tmp_path / "incoming").iterdir())  # the partial file is gone


async def test_a_dropped_connection_is_resumed_by_the_sender(tmp_path: Path) -> None:
    async with _peer(tmp_path, drop_chunk=5) as (sink, url), aiohttp.ClientSession() as http:
        sender = SnapshotSender(http, url, MSG, DATA, chunk_bytes=CHUNK, backoff=0.01)
        await sender.run()
        # handshake + 3 chunks answered, the 4th chunk's connection cut: it may or may not
        # have been written, and the new handshake says where to go on from.
        assert sender.resumed_at[0] == 0 and sender.resumed_at[1] in (3 * CHUNK, 4 * CHUNK)
        assert sink.delivered == [(MSG, DATA)]
        assert sink.snapshot_receiver.bytes_written == len(DATA)


async def test_a_corrupted_chunk_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    async with _peer(tmp_path) as (sink, url), aiohttp.ClientSession() as http:
        good = encode_chunk(MSG, len(DATA), DIGEST, 0, DATA[:CHUNK])
        damaged = good[:-10] + bytes(b ^ 0xFF for b in good[-10:])
        status, answer = await _post(http, url, damaged)
        assert status == 400 and answer["error"] == "bad_chunk" and answer["next_offset"] == 0
        assert sink.snapshot_receiver.bytes_written == 0
        status, answer = await _post(http, url, good)  # the intact chunk is taken
        assert (status, answer["next_offset"]) == (200, CHUNK)
        assert sink.delivered == []


async def test_a_whole_that_fails_its_sha256_is_never_delivered(tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"something else").digest()
    async with _peer(tmp_path) as (sink, url), aiohttp.ClientSession() as http:
        small = DATA[:1000]
        status, answer = await _post(http, url, encode_chunk(MSG, 1000, wrong, 0, small))
        assert status == 400 and answer["error"] == "bad_snapshot"
        assert sink.delivered == []
        # A sender with the right digest starts over and gets through.
        await SnapshotSender(http, url, MSG, small, chunk_bytes=300).run()
        assert sink.delivered == [(MSG, small)]


async def test_garbage_and_strangers_are_refused(tmp_path: Path) -> None:
    stranger = InstallSnapshot(5, "n9", "n2", MSG.snapshot)
    async with _peer(tmp_path) as (sink, url), aiohttp.ClientSession() as http:
        for body in (b"", b"\x00\x00\x00\x05abc", b"\x00\x00\x00\x01\xc1" + DATA[:10]):
            status, answer = await _post(http, url, body)
            assert status == 400 and answer["error"] == "bad_snapshot"
        body = encode_chunk(stranger, len(DATA), DIGEST, 0, DATA[:10])
        status, answer = await _post(http, url, body)
        assert status == 400 and answer["error"] == "unknown_sender"
        with pytest.raises(SnapshotSendError, match="unknown_sender"):
            await SnapshotSender(http, url, stranger, DATA, chunk_bytes=CHUNK).run()
        assert sink.delivered == []


async def test_an_older_snapshot_does_not_displace_a_newer_one(tmp_path: Path) -> None:
    older = InstallSnapshot(5, "n1", "n2", SnapshotMeta(1000, 4, MSG.snapshot.membership))
    async with _peer(tmp_path) as (sink, url), aiohttp.ClientSession() as http:
        status, _ = await _post(http, url, encode_chunk(MSG, len(DATA), DIGEST, 0, DATA[:CHUNK]))
        assert status == 200
        status, answer = await _post(http, url, encode_chunk(older, 10, DIGEST, 0, b"x"))
        assert status == 409 and answer["error"] == "superseded"
        await SnapshotSender(http, url, MSG, DATA, chunk_bytes=CHUNK).run()  # resumes
        assert sink.delivered == [(MSG, DATA)]
        assert sink.snapshot_receiver.bytes_written == len(DATA)
