"""Node-to-node message delivery: one link (connection, queue) per peer, `send` never waits.

A dead or slow peer must never delay the others, so each peer has its own PeerLink
(kvstore.peer_link): a streamed `POST /raft/messages` carrying msgpack frames, a
bounded queue that drops and counts, short timeouts, back-off. Before a batch goes out it is
coalesced (see `coalesce`) so the receiver steps one message where the core made many.

Snapshots are the exception to "small and often": InstallSnapshot carries only the
snapshot's metadata, so the transport fetches the bytes (`snapshot_source`) and sends
them in checksummed, resumable chunks (kvstore.snapshot_transfer) on a separate aiohttp
connection, so that a large transfer never holds up the heartbeats behind it.

Peers come and go with membership changes: `set_peers` opens links to new members and
closes those of removed ones. Every request names this node's peer_url (header
`X-Raft-From`), so a peer can answer a node it has not yet read about in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp

from consensus.messages import AppendEntries, AppendEntriesResponse, InstallSnapshot, Message
from consensus.types import NodeId, SnapshotMeta
from kvstore.peers.auth import PeerAuth
from kvstore.peers.link import PeerLink
from kvstore.peers.snapshot_transfer import (
    SNAPSHOT_PATH,
    SnapshotSender,
    SnapshotSendError,
    transfer_summary,
)

log = logging.getLogger(__name__)

__all__ = ["SNAPSHOT_PATH", "Transport", "coalesce"]


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
        self_url: str = "",
        snapshot_chunk_bytes: int = 1 << 20,
        on_removed: Callable[[NodeId, str], None] | None = None,
        on_unreachable: Callable[[NodeId], None] | None = None,
        auth: PeerAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_queue_messages: int = 4096,
        max_queue_bytes: int = 64 << 20,
        max_post_bytes: int = 8 << 20,
        request_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        max_backoff: float = 1.0,
    ) -> None:
        self.self_id = self_id
        self.auth = auth or PeerAuth("", self_id)
        """Signs every request (kvstore.peers.auth); `ssl`: mutual TLS for https peers."""
        self.ssl = ssl_context
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.max_post_bytes = max_post_bytes
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.closed = False
        self._snapshot_source = snapshot_source
        self.self_url = self_url.rstrip("/")
        self.snapshot_chunk_bytes = snapshot_chunk_bytes
        self.on_removed = on_removed
        """Called when a peer says this node was removed from the cluster (HTTP 410)."""
        self.on_unreachable = on_unreachable
        """Called when a peer's connection was closed or reset by it, or refused."""
        self._links: dict[NodeId, PeerLink] = {}
        self._unknown_warned: set[NodeId] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._snapshot_sends: dict[NodeId, tuple[SnapshotMeta, asyncio.Task[None]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.set_peers(peer_urls)

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

    def set_peers(self, peer_urls: Mapping[NodeId, str]) -> None:
        """Make the links match `peer_urls`: open new ones, re-open moved ones, close the
        links (and snapshot transfers) of peers no longer listed."""
        wanted = {pid: url.rstrip("/") for pid, url in peer_urls.items() if pid != self.self_id}
        for pid in [p for p, link in self._links.items() if wanted.get(p) != link.url]:
            link = self._links.pop(pid)
            link.close()
            running = self._snapshot_sends.pop(pid, None)
            if running is not None:
                running[1].cancel()
            if pid not in wanted:
                log.info("no longer sending to %s (%s)", pid, link.url)
        for pid, url in wanted.items():
            if pid not in self._links:
                self._links[pid] = PeerLink(self, pid, url)
                self._unknown_warned.discard(pid)
                if self._watchdog is not None:
                    log.info("sending to new peer %s at %s", pid, url)

    def peers(self) -> dict[NodeId, str]:
        return {pid: link.url for pid, link in self._links.items()}

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
                if peer_id not in self._unknown_warned:  # once: it may go on for a while
                    self._unknown_warned.add(peer_id)
                    log.warning("dropping messages to %r: no address known for it", peer_id)
                continue
            link.enqueue(coalesce(batch))

    # -------------------------------------------------------------- snapshots

    def _send_snapshot(self, msg: InstallSnapshot) -> None:
        link = self._links.get(msg.recipient)
        running = self._snapshot_sends.get(msg.recipient)
        if link is None or (running and running[0] == msg.snapshot and not running[1].done()):
            return  # a transfer of this very snapshot is under way: let it finish
        if running is not None:
            running[1].cancel()  # an older snapshot: two transfers would fight over one file
        task = asyncio.get_running_loop().create_task(
            self._post_snapshot(link, msg), name=f"snapshot-{msg.recipient}"
        )
        self._snapshot_sends[msg.recipient] = (msg.snapshot, task)

    async def _post_snapshot(self, link: PeerLink, msg: InstallSnapshot) -> None:
        source = self._snapshot_source
        # In a thread: a snapshot of a large state is hundreds of MB read from its file.
        data = await asyncio.to_thread(source, msg.snapshot) if source else None
        if data is None:
            log.info("snapshot %d for %s was superseded", msg.snapshot.index, link.node_id)
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl if self.ssl else True)
            )
        sender = SnapshotSender(
            self._session,
            link.url,
            msg,
            data,
            chunk_bytes=self.snapshot_chunk_bytes,
            sender_url=self.self_url,
            auth=self.auth,
        )
        started = time.monotonic()
        try:
            await sender.run()
        except SnapshotSendError as exc:
            log.warning(
                "sending snapshot %d to %s failed: %s", msg.snapshot.index, link.node_id, exc
            )
            return
        log.info(
            "sent snapshot %d to %s: %s",
            msg.snapshot.index,
            link.node_id,
            transfer_summary(sender, started),
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
