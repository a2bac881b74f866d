"""Who may speak on the peer port: every peer request proves its sender and its cluster.

Three modes (kvstore.server picks one from cluster.toml, and refuses to listen beyond
loopback with none of them):
- cluster secret (`[peer_auth]`): each request carries `X-Raft-Time`, `X-Raft-Nonce`
  and `X-Raft-Auth`, an HMAC-SHA256 over (purpose, cluster id, sender, recipient, time,
  nonce, sender URL, incarnation, body digest). The receiver refuses a time outside
  `MAX_SKEW_S` of its clock and a nonce it has seen within twice that, so a captured
  request cannot be played again. The long-lived message stream is authenticated once
  by its head; each frame then carries an HMAC under a key derived from that head,
  over a sequence number and the frame, so frames can be neither forged, altered,
  replayed, reordered nor spliced from another stream. The 410 `removed_member`
  answer is signed too, bound to the request's nonce, so only a holder of the secret
  can make a node stop.
- mutual TLS (https peer URLs): the certificate, signed by the cluster CA, names
  `urn:pyraftkv:<cluster id>:node:<node id>`; that id is the sender, whatever the
  request claims. TLS itself gives integrity and freshness.
- neither: loopback only, where anyone who can connect already runs on this machine.

In every mode the request names its cluster id (`X-Raft-Cluster`) and sender
(`X-Raft-Sender`), and every message inside must be from that sender.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from consensus.types import NodeId

CLUSTER_HEADER = "X-Raft-Cluster"
SENDER_HEADER = "X-Raft-Sender"
URL_HEADER = "X-Raft-From"
TIME_HEADER = "X-Raft-Time"
NONCE_HEADER = "X-Raft-Nonce"
AUTH_HEADER = "X-Raft-Auth"
INCARNATION_HEADER = "X-Raft-Incarnation"
"""The sender's incarnation (kvstore.runtime.incarnation), covered by the HMAC."""
FEATURES_HEADER = "X-Raft-Features"
"""What the sender reads beyond the first wire format: `commit-only` (consensus.codec's
_TAG_COMMIT_ONLY) and `leader-durable` (its LeaderDurable note, consensus.durable_note),
so a peer sends it those only once it knows. Outside the HMAC, which
nodes that predate the header compute without it; a forger could at most get plain
appends sent, or commit-only ones that an older node refuses (as any forged head could)."""
COMMIT_ONLY = "commit-only"
LEADER_DURABLE = "leader-durable"
MAX_KNOWN_PEERS = 1024
"""Bound on each set of peers by feature (an open cluster admits any sender's head)."""
TAG_BYTES = 32
MAX_SKEW_S = 60.0
"""How far a sender's clock may be from the receiver's (NTP keeps them much closer)."""
NODE_URI_PREFIX = "urn:pyraftkv:"
_SEQ = struct.Struct(">Q")
_STAMP = re.compile(r"[0-9]{1,16}")
"""Milliseconds since the epoch, in ASCII digits: str.isdigit() also takes '²', which
int() refuses."""


class PeerAuthError(Exception):
    """A peer request this node refuses; answered with `status` and `code`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def node_uri(cluster_id: str, node_id: str) -> str:
    """The subject alternative name that makes a certificate a node's (`kv certs init`)."""
    return f"{NODE_URI_PREFIX}{quote(cluster_id, safe='')}:node:{node_id}"


def _same(received: str, expected: str) -> bool:
    """Constant-time comparison of a received MAC: as bytes, because a header may hold
    any character (aiohttp passes undecodable bytes as surrogates), and
    hmac.compare_digest raises TypeError for a str that is not ASCII."""
    return hmac.compare_digest(received.encode("utf-8", "surrogatepass"), expected.encode())


def _fields(*parts: str | bytes) -> bytes:
    """Length-prefixed concatenation: no two different field lists give the same bytes."""
    out = bytearray()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        out += struct.pack(">I", len(raw)) + raw
    return bytes(out)


class FrameTagger:
    """One stream's frame MACs: a key derived from the authenticated head and a counter."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._seq = 0

    def tag(self, body: bytes) -> bytes:
        digest = hmac.new(self._key, _SEQ.pack(self._seq) + body, hashlib.sha256).digest()
        self._seq += 1
        return digest

    def check(self, body: bytes, tag: bytes) -> None:
        """Raise PeerAuthError unless `tag` is the next frame's MAC over `body`."""
        if not hmac.compare_digest(self.tag(body), tag):
            raise PeerAuthError(401, "bad_signature", "a frame fails its HMAC")


@dataclass(frozen=True, slots=True)
class Verified:
    """An accepted request head: who sent it, and (secret mode) its frame checker."""

    sender: NodeId | None
    """None only without authentication, for a hand-made request naming no sender."""
    sender_url: str | None
    frames: FrameTagger | None
    nonce: str = ""
    incarnation: str | None = None
    """The life of its data directory the sender claims (kvstore.runtime.incarnation)."""
    features: str = ""
    """The sender's FEATURES_HEADER."""


class PeerAuth:
    """This node's side of peer authentication, for sending and for receiving."""

    def __init__(
        self,
        cluster_id: str,
        self_id: NodeId,
        secret: bytes | None = None,
        tls: bool = False,
        incarnation: str | None = None,
    ) -> None:
        self.cluster_id, self.self_id = cluster_id, self_id
        self.incarnation = incarnation
        """Sent on every request; None for a node still deciding whether to found."""
        self._secret = secret
        self.tls = tls
        self._seen: dict[str, float] = {}  # nonce -> when it may be forgotten
        self.commit_only_peers: set[NodeId] = set()
        """Peers whose last accepted request head said they read commit-only appends
        (`heard`); the links encode for them accordingly (kvstore.peers.link)."""
        self.durable_note_peers: set[NodeId] = set()
        """Peers whose last head said they read LeaderDurable notes; the others get none
        (a note is only a hint: they learn the commit from the leader as before)."""
        self._next_prune = 0.0

    @property
    def authenticated(self) -> bool:
        return self._secret is not None or self.tls

    # -------------------------------------------------------------- sending

    def request_headers(
        self, recipient: NodeId, sender_url: str, body: bytes | None = None
    ) -> tuple[dict[str, str], FrameTagger | None]:
        """Headers for one request to `recipient`. `body` None: a frame stream, whose
        frames the returned tagger signs; else the headers cover that whole body."""
        headers = {
            CLUSTER_HEADER: self.cluster_id,
            SENDER_HEADER: self.self_id,
            FEATURES_HEADER: f"{COMMIT_ONLY},{LEADER_DURABLE}",
        }
        if sender_url:
            headers[URL_HEADER] = sender_url
        if self.incarnation:
            headers[INCARNATION_HEADER] = self.incarnation
        if self._secret is None:
            return headers, None
        stamp, nonce = str(int(time.time() * 1000)), os.urandom(16).hex()
        mac, frame_key = self._macs(
            self.self_id, recipient, stamp, nonce, sender_url, self.incarnation or "", body
        )
        headers.update({TIME_HEADER: stamp, NONCE_HEADER: nonce, AUTH_HEADER: mac})
        return headers, (FrameTagger(frame_key) if body is None else None)

    def removal_is_genuine(
        self, headers: Mapping[str, str], responder: NodeId, nonce: str | None
    ) -> bool:
        """Whether a 410 answer on a request of ours (with `nonce`) comes from a holder
        of the secret. Under TLS the connection already proved who answered."""
        if self._secret is None:
            return True
        if not nonce:
            return False
        expected = self._removal_mac(responder, self.self_id, nonce)
        return _same(headers.get(AUTH_HEADER.lower(), ""), expected)

    # -------------------------------------------------------------- receiving

    def verify(
        self,
        headers: Mapping[str, str],
        tls_identity: tuple[str, str] | None,
        body: bytes | None = None,
    ) -> Verified:
        """Check a request head (and `body`, unless it is a frame stream); returns the
        authenticated sender, or raises PeerAuthError."""
        cluster = headers.get(CLUSTER_HEADER)
        if (cluster is not None or self.authenticated) and cluster != self.cluster_id:
            raise PeerAuthError(
                403,
                "wrong_cluster",
                f"request for cluster {cluster!r}, this is {self.cluster_id!r}",
            )
        sender = headers.get(SENDER_HEADER)
        sender_url = headers.get(URL_HEADER) or None
        if sender is None and self.authenticated:
            raise PeerAuthError(401, "unauthenticated", f"no {SENDER_HEADER} header")
        if self.tls:
            if tls_identity is None:
                raise PeerAuthError(401, "no_certificate", "peer requests need a node certificate")
            if tls_identity != (self.cluster_id, sender):
                raise PeerAuthError(
                    403,
                    "wrong_certificate",
                    f"certificate names {tls_identity!r}, request claims {sender!r}",
                )
        incarnation = headers.get(INCARNATION_HEADER) or None
        features = headers.get(FEATURES_HEADER, "")
        if self._secret is None:
            return Verified(sender, sender_url, None, incarnation=incarnation, features=features)
        stamp, nonce = headers.get(TIME_HEADER, ""), headers.get(NONCE_HEADER, "")
        if not _STAMP.fullmatch(stamp) or not 16 <= len(nonce) <= 64:
            raise PeerAuthError(401, "unauthenticated", "missing or malformed peer credentials")
        assert sender is not None
        mac, frame_key = self._macs(
            sender, self.self_id, stamp, nonce, sender_url or "", incarnation or "", body
        )
        if not _same(headers.get(AUTH_HEADER, ""), mac):
            raise PeerAuthError(401, "bad_signature", "peer request fails its HMAC")
        now = time.time()
        if abs(now - int(stamp) / 1000) > MAX_SKEW_S:
            raise PeerAuthError(401, "stale_request", "peer request too old (or clocks differ)")
        self._remember(nonce, now)
        frames = FrameTagger(frame_key) if body is None else None
        return Verified(sender, sender_url, frames, nonce, incarnation, features)

    def heard(self, verified: Verified) -> None:
        """Remember what an accepted head's sender reads (its last head counts: a node
        restarted at an older version stops getting what it cannot read)."""
        sender, features = verified.sender, verified.features.split(",")
        if sender is None:
            return
        for feature, peers in (
            (COMMIT_ONLY, self.commit_only_peers),
            (LEADER_DURABLE, self.durable_note_peers),
        ):
            if feature in features:
                if sender in peers or len(peers) < MAX_KNOWN_PEERS:
                    peers.add(sender)
            else:
                peers.discard(sender)

    def removal_headers(self, verified: Verified | None) -> dict[str, str]:
        """Signs a 410 `removed_member` answer to an authenticated request."""
        if self._secret is None or verified is None or verified.sender is None:
            return {}
        return {AUTH_HEADER: self._removal_mac(self.self_id, verified.sender, verified.nonce)}

    # -------------------------------------------------------------- helpers

    def _macs(
        self,
        sender: str,
        recipient: str,
        stamp: str,
        nonce: str,
        sender_url: str,
        incarnation: str,
        body: bytes | None,
    ) -> tuple[str, bytes]:
        assert self._secret is not None
        purpose = "stream" if body is None else "request"
        digest = b"" if body is None else hashlib.sha256(body).digest()
        head = _fields(
            purpose, self.cluster_id, sender, recipient, stamp, nonce, sender_url, incarnation
        ) + _fields(digest)
        mac = hmac.new(self._secret, b"head" + head, hashlib.sha256).hexdigest()
        frame_key = hmac.new(self._secret, b"frames" + head, hashlib.sha256).digest()
        return mac, frame_key

    def _removal_mac(self, responder: str, removed: str, nonce: str) -> str:
        assert self._secret is not None
        msg = b"removed" + _fields(self.cluster_id, responder, removed, nonce)
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def _remember(self, nonce: str, now: float) -> None:
        """Refuse a nonce seen before; forget nonces once their time is out of the window
        anyway. Only requests with a valid MAC get here, so the set cannot be flooded."""
        if now >= self._next_prune:
            self._seen = {n: t for n, t in self._seen.items() if t > now}
            self._next_prune = now + MAX_SKEW_S
        if nonce in self._seen:
            raise PeerAuthError(401, "replayed_request", "peer request seen before (replay)")
        self._seen[nonce] = now + 2 * MAX_SKEW_S + 1
