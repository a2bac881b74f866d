"""Node-to-node message delivery: one link (connection, queue) per peer, `send` never waits.

A dead or slow peer must never delay the others, so each peer has its own PeerLink
(kvstore.peer_link): a streamed `POST /raft/messages` carrying msgpack frames, a
bounded queue that drops and counts, short timeouts, back-off. Before a batch goes out it is
coalesced (see `coalesce`) so the receiver steps one message where the core made many.

Snapshots are the exception to "small and often": InstallSnapshot carries only the
snapshot's metadata, so the transport fetches the bytes (`snapshot_source`) and sends
message and bytes together in one `POST /raft/snapshot` on a separate aiohttp
connection, so that a large transfer never holds up the heartbeats behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp

from consensus.codec import encode_messages
from consensus.messages import AppendEntries, AppendEntriesResponse, InstallSnapshot, Message
from consensus.types import NodeId, SnapshotMeta
from kvstore.peer_link import PeerLink, describe_error

log = logging.getLogger(__name__)

SNAPSHOT_PATH = "/raft/snapshot"
SNAPSHOT_HEADER = struct.Struct(">I")
"""A snapshot POST body: 4-byte length, the encoded InstallSnapshot, then the state bytes."""


def coalesce(msgs: list[Message]) -> list[Message]:
    """Merge the messages of one batch for one peer where Raft allows it.

    Contiguous AppendEntries of one term become one (entries concatenated, newest commit
    and read_seq), and successful acknowledgements of one term become one (highest match
    and read_seq): the receiver ends in the same state with one step instead of many.
    The merged message takes the place of the first; Raft tolerates such reordering (a
    network may reorder too) and the leader frees in-flight slots by index, not count.
    """
    if len(msgs) < 2:
        return msgs
    out: list[Message] = []
    append_at = ack_at = -1  # positions in `out` of the message to extend
    for msg in msgs:
        if type(msg) is AppendEntries and msg.entries:
            prev = out[append_at] if append_at >= 0 else None
            if (
                type(prev) is AppendEntries
                and prev.term == msg.term
                and msg.prev_log_index == prev.prev_log_index + len(prev.entries)
            ):
                out[append_at] = AppendEntries(
                    prev.term,
                    prev.sender,
                    prev.recipient,
                    prev.prev_log_index,
                    prev.prev_log_term,
                    prev.entries + msg.entries,
                    max(prev.leader_commit, msg.leader_commit),
                    max(prev.read_seq, msg.read_seq),
                )
                continue
            append_at = len(out)
        elif type(msg) is AppendEntriesResponse and msg.success:
            ack = out[ack_at] if ack_at >= 0 else None
            if type(ack) is AppendEntriesResponse and ack.term == msg.term:
                out[ack_at] = AppendEntriesResponse(
                    ack.term,
                    ack.sender,
                    ack.recipient,
                    True,
                    max(ack.match_index, msg.match_index),
                    read_seq=max(ack.read_seq, msg.read_seq),
                )
                continue
            ack_at = len(out)
        out.append(msg)
    return out


class Transport:
    """Delivers consensus messages to peers; `send` is synchronous and never blocks."""

    def __init__(
        self,
        self_id: NodeId,
        peer_urls: Mapping[NodeId, str],
        *,
        snapshot_source: Callable[[SnapshotMeta], bytes | None] | None = None,
        max_queue_messages: int = 4096,
        max_queue_bytes: int = 64 << 20,
        max_post_bytes: int = 8 << 20,
        request_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        max_backoff: float = 1.0,
    ) -> None:
        self.self_id = self_id
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.max_post_bytes = max_post_bytes
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.closed = False
        self._snapshot_source = snapshot_source
        self._links = {
            pid: PeerLink(self, pid, url.rstrip("/"))
            for pid, url in peer_urls.items()
            if pid != self_id
        }
        self._watchdog: asyncio.Task[None] | None = None
        self._snapshot_sends: dict[NodeId, tuple[SnapshotMeta, asyncio.Task[None]]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._watchdog = asyncio.create_task(self._watch(), name="transport-watchdog")

    async def close(self) -> None:
        """Close every connection; queued messages are dropped (Raft does not need them)."""
        self.closed = True
        tasks = [task for _, task in self._snapshot_sends.values()]
        if self._watchdog is not None:
            tasks.append(self._watchdog)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for link in self._links.values():
            link.close()
        if self._session is not None:
            await self._session.close()

    def send(self, msgs: Iterable[Message]) -> None:
        """Hand messages over; each recipient gets them in one POST written right now
        (or queued while its connection is busy or being re-established)."""
        if self.closed:
            return
        by_peer: dict[NodeId, list[Message]] = {}
        for msg in msgs:
            if type(msg) is InstallSnapshot:
                self._send_snapshot(msg)
                continue
            by_peer.setdefault(msg.recipient, []).append(msg)
        for peer_id, batch in by_peer.items():
            link = self._links.get(peer_id)
            if link is None:
                log.warning("dropping %d messages to unknown node %r", len(batch), peer_id)
                continue
            link.enqueue(coalesce(batch))

    # -------------------------------------------------------------- snapshots

    def _send_snapshot(self, msg: InstallSnapshot) -> None:
        link = self._links.get(msg.recipient)
        running = self._snapshot_sends.get(msg.recipient)
        if link is None or (running and running[0] == msg.snapshot and not running[1].done()):
            return  # a transfer of this very snapshot is under way: let it finish
        task = asyncio.get_running_loop().create_task(
            self._post_snapshot(link, msg), name=f"snapshot-{msg.recipient}"
        )
        self._snapshot_sends[msg.recipient] = (msg.snapshot, task)

    async def _post_snapshot(self, link: PeerLink, msg: InstallSnapshot) -> None:
        data = self._snapshot_source(msg.snapshot) if self._snapshot_source else None
        if data is None:
            log.info("snapshot %d for %s was superseded", msg.snapshot.index, link.node_id)
            return
        head = encode_messages([msg])
        body = SNAPSHOT_HEADER.pack(len(head)) + head + data
        if self._session is None:
            self._session = aiohttp.ClientSession()
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=30 + len(body) / (5 << 20), sock_connect=2)
        try:
            async with self._session.post(
                link.url + SNAPSHOT_PATH, data=body, timeout=timeout
            ) as r:
                answer = await r.read()
                if r.status >= 300:
                    raise RuntimeError(f"HTTP {r.status}: {answer[:200]!r}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = describe_error(exc)
            log.warning(
                "sending snapshot %d to %s failed: %s", msg.snapshot.index, link.node_id, reason
            )
            return
        elapsed = time.monotonic() - started
        log.info(
            "sent snapshot %d (%d bytes) to %s in %.1fs",
            msg.snapshot.index,
            len(data),
            link.node_id,
            elapsed,
        )

    # -------------------------------------------------------------- health

    async def _watch(self) -> None:
        """Abort connections the peer stopped reading (a hung or SIGSTOPped peer)."""
        interval = max(0.05, self.request_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for link in self._links.values():
                link.check_timeout(now)

    def is_reachable(self, peer_id: NodeId) -> bool | None:
        link = self._links.get(peer_id)
        return None if link is None else link.reachable

    def peer_status(self) -> dict[NodeId, dict[str, Any]]:
        """Per-peer delivery health for `GET /v1/status` and for operators."""
        return {pid: link.status() for pid, link in self._links.items()}
