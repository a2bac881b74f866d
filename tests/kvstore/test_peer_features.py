"""What a peer reads beyond the first wire format (X-Raft-Features): every head names it,
the receiver remembers it per sender, and a link sends commit-only appends in their own
compact form only to peers that named it; a peer that predates the header gets the plain
append it always decoded (and answers it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consensus.codec import decode_messages
from consensus.messages import AppendEntries, LeaderDurable, Message
from kvstore.peers.auth import FEATURES_HEADER, MAX_KNOWN_PEERS, PeerAuth, Verified
from kvstore.peers.link import FRAME_HEADER, PeerLink

URL = "http://127.0.0.1:7001"
SECRET = b"s" * 32


def test_every_head_says_it_reads_commit_only_appends_and_the_receiver_remembers() -> None:
    sender, receiver = PeerAuth("c", "n1"), PeerAuth("c", "n2")
    headers, _ = sender.request_headers("n2", URL)
    receiver.heard(receiver.verify(headers, None))
    assert receiver.commit_only_peers == {"n1"}
    del headers[FEATURES_HEADER]  # n1 restarted at a version that predates the header
    receiver.heard(receiver.verify(headers, None))
    assert receiver.commit_only_peers == set()


def test_the_header_is_outside_the_mac_so_older_nodes_verify_and_are_verified() -> None:
    sender, receiver = PeerAuth("c", "n1", SECRET), PeerAuth("c", "n2", SECRET)
    headers, _ = sender.request_headers("n2", URL, b"body")
    del headers[FEATURES_HEADER]  # what an older node sends, its MAC computed without it
    verified = receiver.verify(headers, None, b"body")
    assert verified.sender == "n1" and verified.features == ""


def test_the_remembered_senders_are_bounded() -> None:
    receiver = PeerAuth("c", "n0")
    for i in range(MAX_KNOWN_PEERS + 10):
        receiver.heard(Verified(f"n{i}", None, None, features="commit-only"))
    assert len(receiver.commit_only_peers) == MAX_KNOWN_PEERS


@dataclass
class _Owner:
    auth: PeerAuth = field(default_factory=lambda: PeerAuth("c", "n1"))
    self_url: str = URL
    closed: bool = False
    max_queue_messages: int = 100
    max_queue_bytes: int = 1 << 20
    max_post_bytes: int = 1 << 20


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _Proto:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.paused = False
        self.tagger = None


def _link(owner: Any) -> tuple[PeerLink, _Proto]:
    """A link to n2 over a connected stream that records what it writes."""
    link = PeerLink(owner, "n2", "http://127.0.0.1:7002")
    proto = _Proto()
    link.proto = proto  # type: ignore[assignment]
    return link, proto


def _decoded(chunk: bytes) -> list[Message]:
    """The messages of one written chunk (a chunk-size line, one frame, CRLF)."""
    return decode_messages(chunk.split(b"\r\n", 1)[1][FRAME_HEADER.size : -2])


def _sent(owner: Any, msg: AppendEntries) -> AppendEntries:
    link, proto = _link(owner)
    link.enqueue([msg])
    (chunk,) = proto.transport.written
    (decoded,) = _decoded(chunk)
    assert isinstance(decoded, AppendEntries)
    return decoded


def test_a_link_sends_commit_only_appends_only_to_peers_that_read_them() -> None:
    owner = _Owner()
    announcement = AppendEntries(3, "n1", "n2", 7, 3, (), 7, 1, True)
    assert _sent(owner, announcement).commit_only is False  # n2 named no features yet
    owner.auth.commit_only_peers.add("n2")
    assert _sent(owner, announcement) == announcement


def test_a_link_sends_leader_durable_notes_only_to_peers_that_read_them() -> None:
    owner = _Owner()
    link, proto = _link(owner)
    append = AppendEntries(3, "n1", "n2", 7, 3, (), 7, 1)
    link.enqueue([LeaderDurable(3, "n1", "n2", 8), append])
    (chunk,) = proto.transport.written
    assert _decoded(chunk) == [append]
    link.enqueue([LeaderDurable(3, "n1", "n2", 8)])  # nothing else: nothing written
    assert len(proto.transport.written) == 1
    owner.auth.heard(Verified("n2", None, None, features="commit-only,leader-durable"))
    link.enqueue([LeaderDurable(3, "n1", "n2", 8)])
    (_, chunk) = proto.transport.written
    assert _decoded(chunk) == [LeaderDurable(3, "n1", "n2", 8)]
