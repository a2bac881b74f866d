"""InstallSnapshot over HTTP in checksummed chunks, resumable after a dropped connection.

Why chunks: a snapshot of 100,000 keys is ~12 MB and grows with the data; one huge
POST restarts from zero after any hiccup and makes the receiver hold it all in memory
while it arrives. Instead every `POST /raft/snapshot` carries one chunk, signed
as a whole like any peer request (kvstore.peers.auth):

    body = <4-byte big-endian header length> <msgpack header> <chunk bytes>
    header = {"msg": encode_messages([InstallSnapshot]), "total": size of the whole,
              "sha256": 32-byte digest of the whole, "offset": where the chunk goes,
              "crc32": CRC32 of the chunk}

and is answered `{"next_offset": N, "done": bool}`: the offset the receiver needs next.
The receiver appends chunks to a file under the node's data dir, keyed by (sender,
snapshot index, term) and named by a digest of that key (a sender id never becomes a
path: `../` in it cannot reach outside the directory); a chunk at another offset is
not written, the answer just says where to continue, so a sender that reconnects
opens with an empty chunk at offset 0 (the handshake) and resumes where the receiver
stands. A chunk whose CRC32 fails is
refused (400 `bad_chunk`); a whole whose SHA-256 fails is discarded (400
`bad_snapshot`). Only a complete, verified snapshot is stepped into the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from consensus.codec import CodecError, decode_messages, encode_messages
from consensus.messages import InstallSnapshot
from consensus.types import NodeId
from kvstore.peers.auth import URL_HEADER, PeerAuth

log = logging.getLogger("kvstore.snapshot")

SNAPSHOT_PATH = "/raft/snapshot"
HEADER_LEN = struct.Struct(">I")
MAX_HEADER_BYTES = 1 << 16
MAX_SNAPSHOT_BYTES = 4 << 30
MAX_CHUNK_BYTES = 64 << 20
SENDER_URL_HEADER = URL_HEADER
"""The sender's peer_url, so a node can answer a peer it does not know yet (a new leader
it has not read about in the log)."""


class ChunkError(Exception):
    """A chunk the receiver refuses; `next_offset` is where the sender should go on."""

    def __init__(self, status: int, code: str, message: str, next_offset: int = 0) -> None:
        super().__init__(message)
        self.status, self.code, self.next_offset = status, code, next_offset


@dataclass(frozen=True, slots=True)
class Chunk:
    msg: InstallSnapshot
    total: int
    sha256: bytes
    offset: int
    data: bytes


def encode_chunk(
    msg: InstallSnapshot, total: int, sha256: bytes, offset: int, data: bytes
) -> bytes:
    header = msgpack.packb(
        {
            "msg": encode_messages([msg]),
            "total": total,
            "sha256": sha256,
            "offset": offset,
            "crc32": zlib.crc32(data),
        },
        use_bin_type=True,
    )
    return HEADER_LEN.pack(len(header)) + header + data


def decode_chunk(body: bytes) -> Chunk:
    """Parse and check one chunk body; ChunkError(400) for anything malformed."""
    if len(body) < HEADER_LEN.size:
        raise ChunkError(400, "bad_snapshot", "truncated chunk")
    (size,) = HEADER_LEN.unpack_from(body)
    if size > MAX_HEADER_BYTES or HEADER_LEN.size + size > len(body):
        raise ChunkError(400, "bad_snapshot", "truncated chunk header")
    try:
        header = msgpack.unpackb(body[HEADER_LEN.size : HEADER_LEN.size + size], raw=False)
        msgs = decode_messages(header["msg"])
        total, digest, offset, crc = (
            header["total"],
            header["sha256"],
            header["offset"],
            header["crc32"],
        )
    except (CodecError, KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise ChunkError(400, "bad_snapshot", f"bad chunk header: {exc}") from None
    if len(msgs) != 1 or type(msgs[0]) is not InstallSnapshot:
        raise ChunkError(400, "bad_snapshot", "expected exactly one InstallSnapshot message")
    if not all(type(v) is int for v in (total, offset, crc)) or type(digest) is not bytes:
        raise ChunkError(400, "bad_snapshot", "bad chunk header field types")
    if not 0 < total <= MAX_SNAPSHOT_BYTES or len(digest) != 32 or offset < 0:
        raise ChunkError(400, "bad_snapshot", "bad snapshot size, digest or offset")
    data = body[HEADER_LEN.size + size :]
    if offset + len(data) > total:
        raise ChunkError(400, "bad_snapshot", f"chunk at {offset} runs past the end {total}")
    if zlib.crc32(data) != crc:
        raise ChunkError(400, "bad_chunk", f"chunk at offset {offset} fails its CRC32")
    return Chunk(msgs[0], total, digest, offset, data)


# ---------------------------------------------------------------------- receiving

Delivery = Callable[[InstallSnapshot, bytes], Awaitable[None]]
"""Called with a complete, verified snapshot (the runtime parses and steps it)."""


@dataclass
class _Partial:
    key: tuple[NodeId, int, int]
    total: int
    sha256: bytes
    path: Path
    received: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)


class SnapshotReceiver:
    """The receiving end: one partial file per sender, the newest snapshot wins."""

    def __init__(self, directory: Path, deliver: Delivery) -> None:
        self.directory = directory
        self._deliver = deliver
        self._partials: dict[NodeId, _Partial] = {}
        self._done: dict[NodeId, tuple[tuple[NodeId, int, int], int]] = {}
        self._locks: dict[NodeId, asyncio.Lock] = {}
        self.bytes_written = 0
        """Chunk bytes written to partial files (tests check that a resume skips data)."""
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob("*.part"):  # a restart does not resume
                stale.unlink()

    async def receive(self, chunk: Chunk) -> tuple[int, bool]:
        """Take one chunk; returns (next offset wanted, whether the snapshot is complete)."""
        sender = chunk.msg.sender
        lock = self._locks.setdefault(sender, asyncio.Lock())
        async with lock:
            return await self._receive(chunk)

    async def _receive(self, chunk: Chunk) -> tuple[int, bool]:
        msg = chunk.msg
        key = (msg.sender, msg.snapshot.index, msg.snapshot.term)
        done = self._done.get(msg.sender)
        if done is not None and done[0] == key:
            return done[1], True  # the sender missed our last answer
        partial = self._partials.get(msg.sender)
        if partial is not None and partial.key[1:] > key[1:]:
            raise ChunkError(409, "superseded", "a newer snapshot from this sender is arriving")
        if partial is None or partial.key != key or partial.sha256 != chunk.sha256:
            if chunk.offset != 0:
                return 0, False  # we hold nothing of this one: start over
            partial = self._start(key, chunk)
        if chunk.offset != partial.received or not chunk.data:
            return partial.received, False
        with partial.path.open("ab") as out:
            out.write(chunk.data)
        partial.hasher.update(chunk.data)
        partial.received += len(chunk.data)
        self.bytes_written += len(chunk.data)
        if partial.received < partial.total:
            return partial.received, False
        return await self._complete(partial, msg)

    def _start(self, key: tuple[NodeId, int, int], chunk: Chunk) -> _Partial:
        self._drop(key[0])
        sender, index, _ = key
        name = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        path = self.directory / f"{name}.part"
        self.directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        partial = _Partial(key, chunk.total, chunk.sha256, path)
        self._partials[sender] = partial
        log.info("receiving snapshot %d (%d bytes) from %s", index, chunk.total, sender)
        return partial

    def _drop(self, sender: NodeId) -> None:
        partial = self._partials.pop(sender, None)
        if partial is not None:
            with contextlib.suppress(OSError):
                partial.path.unlink()

    async def _complete(self, partial: _Partial, msg: InstallSnapshot) -> tuple[int, bool]:
        try:
            if partial.hasher.digest() != partial.sha256:
                raise ChunkError(400, "bad_snapshot", "the snapshot fails its SHA-256; start over")
            data = await asyncio.to_thread(partial.path.read_bytes)
        finally:
            self._drop(msg.sender)
        if len(data) != partial.total:
            raise ChunkError(400, "bad_snapshot", "the partial file changed under the receiver")
        await self._deliver(msg, data)
        self._done[msg.sender] = (partial.key, partial.total)
        return partial.total, True

    def close(self) -> None:
        for sender in list(self._partials):
            self._drop(sender)


# ---------------------------------------------------------------------- sending


class SnapshotSendError(Exception):
    """The transfer gave up; the core asks for the snapshot again later, and the next
    transfer resumes where the receiver stands."""


_RETRYABLE = frozenset({"bad_chunk", "bad_snapshot"})


class SnapshotSender:
    """Sends one snapshot to one peer in chunks; after a failure it reconnects, asks the
    receiver where it stands (an empty chunk at offset 0) and goes on from there."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        msg: InstallSnapshot,
        data: bytes,
        *,
        chunk_bytes: int = 1 << 20,
        sender_url: str = "",
        auth: PeerAuth | None = None,
        attempts: int = 6,
        backoff: float = 0.2,
        chunk_timeout: float = 15.0,
    ) -> None:
        self.session, self.url, self.msg, self.data = session, url.rstrip("/"), msg, data
        self.chunk_bytes = max(1, chunk_bytes)
        self.sender_url = sender_url
        self.auth = auth or PeerAuth("", msg.sender)
        self.attempts, self.backoff, self.chunk_timeout = attempts, backoff, chunk_timeout
        self.digest = b""
        self.sent_bytes = 0
        self.resumed_at: list[int] = []
        """Offsets the receiver asked to resume from after a handshake (0: from scratch)."""

    async def run(self) -> None:
        """Send until the receiver holds the whole snapshot; SnapshotSendError if not."""
        data = self.data
        self.digest = await asyncio.to_thread(lambda: hashlib.sha256(data).digest())
        failures = 0
        while True:
            try:
                offset, done = await self._post(0, b"")
                self.resumed_at.append(offset)
                while not done:
                    chunk = data[offset : offset + self.chunk_bytes]
                    offset, done = await self._post(offset, chunk)
                    self.sent_bytes += len(chunk)
                return
            except ChunkError as exc:
                if exc.code not in _RETRYABLE:
                    raise SnapshotSendError(f"refused: {exc.code}: {exc}") from None
                reason = f"{exc.code}: {exc}"
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            failures += 1
            if failures >= self.attempts:
                raise SnapshotSendError(f"gave up after {failures} attempts: {reason}")
            log.info(
                "snapshot %d to %s interrupted (%s); resuming",
                self.msg.snapshot.index,
                self.msg.recipient,
                reason,
            )
            await asyncio.sleep(self.backoff * failures)

    async def _post(self, offset: int, chunk: bytes) -> tuple[int, bool]:
        body = encode_chunk(self.msg, len(self.data), self.digest, offset, chunk)
        headers, _ = self.auth.request_headers(self.msg.recipient, self.sender_url, body)
        timeout = aiohttp.ClientTimeout(total=self.chunk_timeout, sock_connect=2.0)
        async with self.session.post(
            self.url + SNAPSHOT_PATH, data=body, headers=headers, timeout=timeout
        ) as resp:
            answer = await resp.json(content_type=None)
            if not isinstance(answer, dict):
                raise ValueError(f"unexpected answer {answer!r}")
            if resp.status != 200:
                raise ChunkError(
                    resp.status,
                    str(answer.get("error", "unknown")),
                    str(answer.get("message", "")),
                    int(answer.get("next_offset", 0)),
                )
            return int(answer["next_offset"]), bool(answer.get("done"))


def transfer_summary(sender: SnapshotSender, started: float) -> str:
    resumed = [o for o in sender.resumed_at if o > 0]
    extra = f", resumed at {resumed}" if resumed else ""
    return (
        f"{len(sender.data)} bytes in {time.monotonic() - started:.2f}s "
        f"({sender.sent_bytes} sent{extra})"
    )
