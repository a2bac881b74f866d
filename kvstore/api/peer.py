"""The node-to-node endpoints, mounted on the peer_url.

- `POST /raft/messages`: a msgpack batch of consensus messages, or (the transport's
  way) a long-lived chunked stream of length-prefixed batches;
- `POST /raft/snapshot`: one checksummed chunk of a snapshot (kvstore.snapshot_transfer);
  the InstallSnapshot it belongs to is stepped once the whole snapshot is verified;
- `GET /raft/seen?node=ID`: the last incarnation of ID this node has seen, and whether
  it was seeded by a restore (kvstore.peers.seen), asked by a pristine founder.

Every request names the sender's incarnation (`X-Raft-Incarnation`); once its messages
are admitted, it is recorded per sender (kvstore.runtime.incarnation).

Every request is first checked by kvstore.peers.auth: its cluster id, and with a
cluster secret or TLS who sent it (401/403 before a byte of the body is looked at;
with a secret, every frame of a stream is checked too). Every message inside must name
that sender, a valid node id. Senders name their peer_url in `X-Raft-From`; a sender
this node does not know yet (a member added by an entry it has not applied) is
admitted and answered there. A sender the log says was removed gets 410
`removed_member` (signed, with a secret), which tells it to stop.

Bodies are decoded at this trust boundary: garbage, truncated bodies or messages for
another node answer 400 with a JSON error and change nothing, so a confused or hostile
peer cannot take the node down. Accepted messages are handed to the runtime, which
steps the core; the answer (204) does not wait for anything to be persisted, because
replies travel back as messages of their own through the sender's transport.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from consensus.codec import CodecError, decode_messages
from consensus.messages import InstallSnapshot, Message
from consensus.types import NodeId
from kvstore.api.common import JSON_CHARSET, Answer, BadRequest, query_values, text
from kvstore.api.connections import streamed_body
from kvstore.config import ConfigError, parse_url, valid_node_id
from kvstore.peers.auth import TAG_BYTES, PeerAuth, PeerAuthError, Verified
from kvstore.peers.link import FRAME_HEADER, STREAM_CONTENT_TYPE
from kvstore.peers.seen import SEEN_PATH
from kvstore.peers.snapshot_transfer import (
    MAX_CHUNK_BYTES,
    SNAPSHOT_PATH,
    ChunkError,
    SnapshotReceiver,
    decode_chunk,
)
from kvstore.peers.tls import transport_identity
from kvstore.runtime.incarnation import NodeIncarnations, valid_incarnation

log = logging.getLogger(__name__)

MESSAGES_PATH = "/raft/messages"
DEFAULT_MAX_BODY = 64 << 20
"""A transport POST carries at most a few MiB; the limit only stops runaway bodies."""
MAX_FRAME_BYTES = 64 << 20
ADMITTED, REMOVED, UNKNOWN = None, "removed", "unknown"


class MessageSink(Protocol):
    """What the peer endpoints need from the runtime."""

    node_id: NodeId
    snapshot_receiver: SnapshotReceiver | None
    peer_auth: PeerAuth
    incarnations: NodeIncarnations

    def admit(self, sender: NodeId, sender_url: str | None) -> str | None:
        """None to accept messages from `sender`, else REMOVED or UNKNOWN."""
        ...

    def step_messages(self, msgs: Sequence[Message]) -> None: ...


SINK_KEY = web.AppKey("raft_message_sink", MessageSink)
STREAMS_KEY = web.AppKey("raft_streams", set[asyncio.Task[Any]])


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: object
) -> Answer:
    body = json.dumps({"error": code, "message": message, **extra}).encode()
    return Answer(status, body, JSON_CHARSET, tuple((headers or {}).items()))


def verify_head(
    sink: MessageSink,
    headers: Mapping[str, str],
    transport: asyncio.BaseTransport | None,
    remote: str | None,
    body: bytes | None,
) -> Verified | Answer:
    """The authenticated head of a peer request (see kvstore.peers.auth), or the refusal;
    for aiohttp's handlers and the peer lane's own protocol (kvstore.api.peer_lane)."""
    auth = sink.peer_auth
    try:
        verified = auth.verify(headers, transport_identity(transport), body)
        if verified.sender is not None and not valid_node_id(verified.sender):
            raise PeerAuthError(400, "bad_sender", f"invalid sender id {verified.sender[:80]!r}")
        if verified.sender_url is not None:
            parse_url(verified.sender_url)
        if verified.incarnation is not None and not valid_incarnation(verified.incarnation):
            raise PeerAuthError(400, "bad_incarnation", "X-Raft-Incarnation is not 32 hex digits")
    except ConfigError as exc:
        return _error(400, "bad_sender", f"invalid sender URL: {exc}")
    except PeerAuthError as exc:
        log.warning("refused a peer request from %s: %s: %s", remote, exc.code, exc)
        return _error(exc.status, exc.code, str(exc))
    auth.heard(verified)
    return verified


def _verify(request: web.Request, body: bytes | None) -> Verified | Answer:
    sink = request.app[SINK_KEY]
    return verify_head(sink, request.headers, request.transport, request.remote, body)


def _check(sink: MessageSink, msgs: list[Message], verified: Verified) -> Answer | None:
    """Every message must be for this node and from the request's (authenticated)
    sender, another member of the cluster."""
    sender_url = verified.sender_url
    checked: set[NodeId] = set()
    for msg in msgs:
        if not valid_node_id(msg.sender) or verified.sender not in (None, msg.sender):
            return _error(
                403,
                "wrong_sender",
                f"message from {str(msg.sender)[:80]!r} in a request from {verified.sender!r}",
            )
        if msg.recipient != sink.node_id:
            return _error(
                400,
                "wrong_recipient",
                f"message for {msg.recipient!r} reached node {sink.node_id!r}; "
                "check that every node uses the same cluster.toml",
            )
        if msg.sender in checked:
            continue
        verdict = UNKNOWN if msg.sender == sink.node_id else sink.admit(msg.sender, sender_url)
        if verdict == REMOVED:
            return _error(
                410,
                "removed_member",
                f"node {msg.sender!r} was removed from the cluster; it must stop",
                sink.peer_auth.removal_headers(verified),
            )
        if verdict is not ADMITTED:
            return _error(400, "unknown_sender", f"message from unknown node {msg.sender!r}")
        if verified.incarnation is not None:
            sink.incarnations.saw(msg.sender, verified.incarnation)
        checked.add(msg.sender)
    return None


def _accept(
    sink: MessageSink, body: bytes, remote: str | None, verified: Verified
) -> Answer | None:
    """Decode, validate and step one batch; a bad batch is rejected as a whole."""
    try:
        msgs = decode_messages(body)
    except CodecError as exc:
        log.warning("rejecting an undecodable message batch from %s: %s", remote, exc)
        return _error(400, "bad_messages", str(exc))
    rejected = _check(sink, msgs, verified)
    if rejected is not None:
        return rejected
    if any(type(m) is InstallSnapshot for m in msgs):
        return _error(400, "bad_messages", f"InstallSnapshot travels on {SNAPSHOT_PATH} only")
    if msgs:
        sink.step_messages(msgs)
    return None


async def handle_messages(request: web.Request) -> web.StreamResponse:
    """One batch (a plain msgpack body), or a stream of length-prefixed batches that
    lasts as long as the sender's connection (see kvstore.peer_link)."""
    sink = request.app[SINK_KEY]
    if request.content_type == STREAM_CONTENT_TYPE:
        return await _handle_stream(request, sink)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "body_too_large", "message batch exceeds the peer body limit").response()
    verified = _verify(request, body)
    if isinstance(verified, Answer):
        return verified.response()
    rejected = _accept(sink, body, request.remote, verified)
    return rejected.response() if rejected is not None else web.Response(status=204)


def frame_too_large(remote: str | None, size: int) -> Answer:
    """The refusal of a frame over MAX_FRAME_BYTES (logged: it ends the stream)."""
    log.warning("ending the stream from %s: %d-byte frame", remote, size)
    return _error(413, "body_too_large", f"frame of {size} bytes")


def ended_inside_a_frame(remote: str | None) -> Answer:
    """The answer to a stream whose last chunk came in the middle of a frame."""
    log.warning("the stream from %s ended inside a frame", remote)
    return _error(400, "bad_messages", "the stream ended inside a frame")


class InboundStream:
    """The frames of one authenticated message stream, whichever server path reads
    them (aiohttp's handler here, or kvstore.api.peer_lane's protocol): each frame's MAC
    is checked (with a cluster secret), then its batch is decoded, checked and stepped."""

    __slots__ = ("remote", "sink", "verified")

    def __init__(self, sink: MessageSink, verified: Verified, remote: str | None) -> None:
        self.sink, self.verified, self.remote = sink, verified, remote

    def take(self, body: bytes) -> Answer | None:
        """Step one frame; the answer that ends the stream when it is refused."""
        frames = self.verified.frames
        if frames is not None:
            body, tag = body[:-TAG_BYTES], body[-TAG_BYTES:]
            try:
                frames.check(body, tag)
            except PeerAuthError as exc:
                log.warning(
                    "ending the stream from %s (%s): %s", self.remote, self.verified.sender, exc
                )
                return _error(exc.status, exc.code, str(exc))
        return _accept(self.sink, body, self.remote, self.verified)


async def _handle_stream(request: web.Request, sink: MessageSink) -> web.StreamResponse:
    verified = _verify(request, None)
    if isinstance(verified, Answer):
        return verified.response()
    streamed_body(request)  # authenticated: it may last as long as its connection
    stream = InboundStream(sink, verified, request.remote)
    streams = request.app[STREAMS_KEY]
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    content, header = request.content, FRAME_HEADER
    try:
        while True:
            try:
                (size,) = header.unpack(await content.readexactly(header.size))
                if size > MAX_FRAME_BYTES:
                    return frame_too_large(request.remote, size).response()
                body = await content.readexactly(size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    return ended_inside_a_frame(request.remote).response()
                return web.Response(status=204)  # the sender closed its stream
            rejected = stream.take(body)
            if rejected is not None:
                return rejected.response()
    except (asyncio.CancelledError, ConnectionError):
        return web.Response(status=204)  # shutting down, or the sender went away
    finally:
        streams.discard(task)


async def _end_streams(app: web.Application) -> None:
    """On shutdown, end the open streams now instead of waiting out the drain timeout."""
    for task in list(app[STREAMS_KEY]):
        task.cancel()


async def handle_snapshot(request: web.Request) -> web.Response:
    """One chunk of a snapshot; answers the offset the receiver needs next."""
    sink = request.app[SINK_KEY]
    receiver = sink.snapshot_receiver
    if receiver is None:
        return _error(503, "unavailable", "this node does not take snapshots").response()
    if (request.content_length or 0) > MAX_CHUNK_BYTES + (1 << 16):
        return _error(413, "body_too_large", "snapshot chunk exceeds the size limit").response()
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(
            413, "body_too_large", "snapshot chunk exceeds the peer body limit"
        ).response()
    verified = _verify(request, body)
    if isinstance(verified, Answer):
        return verified.response()
    try:
        chunk = decode_chunk(body)
    except ChunkError as exc:
        log.warning("refused an undecodable snapshot chunk from %s: %s", request.remote, exc)
        return _error(exc.status, exc.code, str(exc), next_offset=exc.next_offset).response()
    rejected = _check(sink, [chunk.msg], verified)
    if rejected is not None:
        return rejected.response()
    try:
        next_offset, done = await receiver.receive(chunk)
    except ChunkError as exc:
        log.warning("refused a snapshot chunk from %s: %s", chunk.msg.sender, exc)
        return _error(exc.status, exc.code, str(exc), next_offset=exc.next_offset).response()
    return web.json_response({"next_offset": next_offset, "done": done})


async def handle_seen(request: web.Request) -> web.Response:
    """Whether this node has seen an incarnation of `node`, and was seeded by a restore:
    what a pristine founder needs to know before it founds (kvstore.runtime.founding)."""
    sink = request.app[SINK_KEY]
    try:
        node = query_values(request, {"node": text}).get("node")
    except BadRequest as exc:
        return _error(exc.status, exc.code, exc.message).response()
    if node is None or not valid_node_id(node):
        return _error(
            400, "bad_node", "query parameter 'node' must name a valid node id"
        ).response()
    verified = _verify(request, b"")
    if isinstance(verified, Answer):
        return verified.response()
    seen = sink.incarnations
    return web.json_response(
        {"node": node, "incarnation": seen.get(node), "restored": seen.restored}
    )


def add_peer_routes(app: web.Application, sink: MessageSink) -> None:
    """Mount the peer endpoints on `app` (the client app too when both share one URL)."""
    app[SINK_KEY] = sink
    app[STREAMS_KEY] = set()
    app.on_shutdown.append(_end_streams)
    app.router.add_post(MESSAGES_PATH, handle_messages)
    app.router.add_post(SNAPSHOT_PATH, handle_snapshot)
    app.router.add_get(SEEN_PATH, handle_seen)


def make_peer_app(sink: MessageSink, max_body: int = DEFAULT_MAX_BODY) -> web.Application:
    """A stand-alone application for a peer_url that differs from the client_url."""
    app = web.Application(client_max_size=max_body)
    add_peer_routes(app, sink)
    return app
