"""One peer's end of the transport: a long-lived, streamed `POST /raft/messages`.

Each link opens one HTTP/1.1 POST with a chunked body and keeps it open; every batch
of messages (all of one Ready for this peer) is one frame written straight to the
socket: `<4-byte length><encode_messages(batch)>` inside one HTTP chunk. Why:
- the leader's AppendEntries are on the wire before its own fsync starts;
- a batch costs one `write` here and one `read` there, with no per-batch HTTP answer
  (answers would double the system calls, which dominate a small write's cost);
- replies to Raft messages travel as messages of their own on the peer's link.

Every connection opens with a fresh head from kvstore.peers.auth (cluster id, sender;
with a cluster secret a nonce and an HMAC, and every frame then ends with its own MAC);
under TLS the peer's certificate must name the node this link is for.

The peer answers only when it ends the stream (a 400 for a bad frame, or shutdown);
any answer, reset or close makes the link drop what it had, report the peer
unreachable once (a log line an operator can act on) and reconnect after a growing
back-off. A connection the peer's side closed or reset, and a refused reconnection,
also go to the owner's `on_unreachable` at once (every time): that is how a killed
process looks, and the Raft core then campaigns without waiting for the election
timeout if the peer was its leader (RaftNode.peer_unreachable). A peer that answers,
or is merely slow, does not count.

A peer that stops reading (hung, SIGSTOPped) shows as a write buffer that does not
drain; after the request timeout the connection is aborted. Messages wait in a
bounded queue while the link is down or the socket is full, dropping the OLDEST (the
newest carry the freshest term and commit) and counting every drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from consensus.codec import encode_messages
from consensus.messages import AppendEntries, LeaderDurable, Message, ProposeRequest
from consensus.types import NodeId, entries_size
from kvstore.peers.auth import FrameTagger, PeerAuth
from kvstore.peers.tls import transport_identity

log = logging.getLogger("kvstore.peers.transport")

MESSAGES_PATH = "/raft/messages"
STREAM_CONTENT_TYPE = "application/x-raft-stream"
FRAME_HEADER = struct.Struct(">I")


def message_bytes(msg: Message) -> int:
    """A cheap size estimate used to bound queues and frames."""
    if type(msg) is AppendEntries:
        return 48 + entries_size(msg.entries)
    if type(msg) is ProposeRequest:
        return 48 + sum(len(data) + 16 for data in msg.datas)
    return 48


def frame(body: bytes, tagger: FrameTagger | None = None) -> bytes:
    """One batch as one HTTP chunk holding one length-prefixed frame (ending with its
    MAC when the stream is authenticated by a cluster secret)."""
    if tagger is not None:
        body += tagger.tag(body)
    size = FRAME_HEADER.size + len(body)
    return b"%x\r\n" % size + FRAME_HEADER.pack(len(body)) + body + b"\r\n"


class _Protocol(asyncio.Protocol):
    """The socket side of a link: writes the request head, watches for an answer."""

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.answer = bytearray()
        self.paused = False
        self.tagger: FrameTagger | None = None
        self.nonce: str | None = None
        self.refused = ""
        """Why this connection was refused before it was used (a wrong certificate)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=4 << 20)
        link = self.link
        auth = link.owner.auth
        if auth.tls and transport_identity(transport) != (auth.cluster_id, link.node_id):
            found = transport_identity(transport)
            self.refused = f"certificate names {found!r}, not node {link.node_id!r}"
            self.transport.abort()
            return
        headers, self.tagger = auth.request_headers(link.node_id, link.owner.self_url)
        self.nonce = headers.get("X-Raft-Nonce")
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.transport.write(
            f"POST {MESSAGES_PATH} HTTP/1.1\r\nHost: {link.netloc}\r\n{fields}"
            f"Content-Type: {STREAM_CONTENT_TYPE}\r\nTransfer-Encoding: chunked\r\n\r\n".encode(
                "latin-1"
            )
        )

    def data_received(self, data: bytes) -> None:
        """The peer answered, so it ended the stream: report why, then reconnect."""
        self.answer += data
        head, sep, body = bytes(self.answer).partition(b"\r\n\r\n")
        if sep or len(self.answer) > 8192:
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
            self.link.failed(self, f"peer ended the stream: {status_line} {body[:200]!r}")
            if status_line.split(" ")[1:2] == ["410"]:  # "you were removed from the cluster"
                self.link.told_removed(
                    _headers(head), self.nonce, body[:300].decode("utf-8", "replace")
                )

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost(self, exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.link.flush()


class LinkSettings(Protocol):
    """What a link reads from the transport that owns it (kvstore.peers.transport):
    limits and timeouts shared by every link, whether the transport is closing, and
    how to authenticate, and whom to tell when a peer says this node was removed."""

    self_url: str
    auth: PeerAuth
    ssl: ssl.SSLContext | None
    closed: bool
    max_queue_messages: int
    max_queue_bytes: int
    max_post_bytes: int
    request_timeout: float
    connect_timeout: float
    max_backoff: float
    on_removed: Callable[[NodeId, str], None] | None
    on_unreachable: Callable[[NodeId], None] | None


class PeerLink:
    """Delivery to one peer; also what `GET /v1/status` reports about it."""

    def __init__(self, owner: LinkSettings, node_id: NodeId, url: str) -> None:
        self.owner = owner
        self.node_id = node_id
        self.url = url
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.netloc = parts.netloc
        self.queue: deque[tuple[Message, int]] = deque()
        self.queued_bytes = 0
        self.proto: _Protocol | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.stuck_since = 0.0  # when the socket last stopped draining (0: it drains)
        self.retry_at = 0.0
        self.backoff = 0.0
        self.reachable: bool | None = None  # None until the first attempt ends
        self.last_error = ""
        self.connected_at = 0.0
        self.failures = 0
        self.sent_batches = 0
        self.sent_messages = 0
        self.dropped = 0

    # -------------------------------------------------------------- sending

    def enqueue(self, msgs: list[Message]) -> None:
        owner = self.owner
        for msg in msgs:
            size = message_bytes(msg)
            self.queue.append((msg, size))
            self.queued_bytes += size
        while len(self.queue) > 1 and (
            len(self.queue) > owner.max_queue_messages or self.queued_bytes > owner.max_queue_bytes
        ):
            _, size = self.queue.popleft()
            self.queued_bytes -= size
            self.dropped += 1
        self.flush()

    def flush(self) -> None:
        """Write everything queued, if the connection can take it now."""
        proto = self.proto
        if proto is None or proto.transport is None:
            self._connect_later()
            return
        auth = self.owner.auth
        commit_only, notes = (
            self.node_id in auth.commit_only_peers,
            self.node_id in auth.durable_note_peers,
        )
        while self.queue and not proto.paused:
            batch = self._take_batch()
            if not notes:  # an older peer refuses the tag; a note is only a hint
                batch = [m for m in batch if type(m) is not LeaderDurable]
                if not batch:
                    continue
            try:
                body = encode_messages(batch, commit_only)
            except Exception:  # a bug upstream; never let it kill delivery to this peer
                log.exception("cannot encode %d messages for %s; dropped", len(batch), self.node_id)
                continue
            proto.transport.write(frame(body, proto.tagger))
            self.sent_batches += 1
            self.sent_messages += len(batch)

    def _take_batch(self) -> list[Message]:
        """Everything queued, up to max_post_bytes (always at least one message)."""
        batch: list[Message] = []
        total = 0
        limit = self.owner.max_post_bytes
        queue = self.queue
        while queue:
            msg, size = queue[0]
            if batch and total + size > limit:
                break
            queue.popleft()
            self.queued_bytes -= size
            batch.append(msg)
            total += size
        return batch

    # -------------------------------------------------------------- connection

    def _connect_later(self) -> None:
        if self.connecting is None and not self.owner.closed:
            self.connecting = asyncio.get_running_loop().create_task(
                self._connect(), name=f"connect-{self.node_id}"
            )

    async def _connect(self) -> None:
        proto: _Protocol | None = None
        try:
            delay = self.retry_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.owner.connect_timeout):
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(self),
                        self.host,
                        self.port,
                        ssl=self.owner.ssl,
                        server_hostname=self.host if self.owner.ssl else None,
                    )
            except (OSError, TimeoutError) as exc:
                self._mark_failed(describe_error(exc))
                if isinstance(exc, (ConnectionRefusedError, ConnectionResetError)):
                    self._tell_unreachable()
            if proto is not None and proto.refused:
                self._mark_failed(proto.refused)
                proto = None
            if proto is not None and self.owner.closed:
                if proto.transport is not None:
                    proto.transport.close()
                return
            if proto is not None:
                self.proto = proto
                self._mark_connected()
        finally:
            self.connecting = None
        if self.proto is not None or self.queue:
            self.flush()  # writes, or schedules the next attempt after the back-off

    def failed(self, proto: _Protocol, reason: str) -> None:
        """The stream ended or stalled: drop the connection and reconnect later."""
        if proto is self.proto:
            self._drop_connection(reason)
            if proto.transport is not None:
                proto.transport.abort()

    def told_removed(self, headers: dict[str, str], nonce: str | None, text: str) -> None:
        """A 410 counts only when signed by the peer (secret mode; under TLS the
        connection proved the peer): anyone else's 410 is only a failed connection."""
        if not self.owner.auth.removal_is_genuine(headers, self.node_id, nonce):
            log.warning("ignoring an unauthenticated 'removed' answer from %s", self.url)
            return
        callback = self.owner.on_removed
        if callback is not None:
            callback(self.node_id, text)

    def lost(self, proto: _Protocol, exc: Exception | None) -> None:
        """The connection ended without our doing: the peer closed or reset it."""
        if proto is self.proto:
            self._drop_connection(describe_error(exc) if exc else "connection closed by peer")
            self._tell_unreachable()

    def _tell_unreachable(self) -> None:
        callback = self.owner.on_unreachable
        if callback is not None and not self.owner.closed:
            callback(self.node_id)

    def _drop_connection(self, reason: str) -> None:
        self.proto = None
        self.stuck_since = 0.0
        self._mark_failed(reason)
        if self.queue:
            self._connect_later()

    def check_timeout(self, now: float) -> None:
        """Abort a connection whose socket has not drained for the request timeout."""
        proto = self.proto
        if proto is None or proto.transport is None:
            return
        if proto.transport.get_write_buffer_size() == 0:
            self.stuck_since = 0.0
        elif not self.stuck_since:
            self.stuck_since = now
        elif now - self.stuck_since > self.owner.request_timeout:
            self.failed(proto, f"not reading for {self.owner.request_timeout:.1f}s")

    # -------------------------------------------------------------- health

    def _mark_connected(self) -> None:
        if self.reachable is False:
            log.info(
                "peer %s reachable again at %s after %d failed attempts",
                self.node_id,
                self.url,
                self.failures,
            )
        self.reachable = True
        self.failures = 0
        self.backoff = 0.0
        self.connected_at = time.time()

    def _mark_failed(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        self.backoff = min(self.owner.max_backoff, max(0.02, self.backoff * 2))
        self.retry_at = time.monotonic() + self.backoff
        if self.reachable is not False:
            log.warning(
                "peer %s unreachable at %s: %s (dropping its messages, retrying with back-off)",
                self.node_id,
                self.url,
                reason,
            )
            self.reachable = False

    def status(self) -> dict[str, Any]:
        proto = self.proto
        unsent = proto.transport.get_write_buffer_size() if proto and proto.transport else 0
        return {
            "reachable": self.reachable,
            "last_error": self.last_error or None,
            "connected_since": self.connected_at if self.proto else None,
            "consecutive_failures": self.failures,
            "queued": len(self.queue),
            "unsent_bytes": unsent,
            "dropped": self.dropped,
            "sent_batches": self.sent_batches,
            "sent_messages": self.sent_messages,
        }

    def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        proto, self.proto = self.proto, None
        if proto is not None and proto.transport is not None:
            with contextlib.suppress(Exception):
                proto.transport.write(b"0\r\n\r\n")  # end the chunked body cleanly
            proto.transport.close()


def _headers(head: bytes) -> dict[str, str]:
    """The header fields of an HTTP answer's head, names in lower case."""
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
