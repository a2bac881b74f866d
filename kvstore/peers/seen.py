"""`GET /raft/seen?node=ID`: has this node seen an incarnation of ID, and was it seeded
by `kv snapshot restore`? A pristine founder asks every peer before it founds a cluster
(kvstore.runtime.founding); the answer is served by kvstore.api.peer and authenticated
like every other peer request (kvstore.peers.auth).

Answer: 200 `{"node": ID, "incarnation": "<32 hex>" or null, "restored": bool}`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp

from consensus.types import NodeId
from kvstore.peers.auth import PeerAuth

SEEN_PATH = "/raft/seen"


@dataclass(frozen=True, slots=True)
class SeenAnswer:
    peer: NodeId
    incarnation: str | None
    """The last incarnation of the asked-about node that `peer` has seen, if any."""
    restored: bool
    """`peer`'s data directory was seeded by `kv snapshot restore`."""


class SeenProbe:
    """Asks peers about one node id, each with a short timeout; an unreachable peer, or
    one that answers anything but a well-formed 200, is no answer (None)."""

    def __init__(
        self,
        auth: PeerAuth,
        self_url: str,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        self.auth, self.self_url, self.ssl = auth, self_url, ssl_context
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def ask(
        self, session: aiohttp.ClientSession, peer: NodeId, peer_url: str, node: NodeId
    ) -> SeenAnswer | None:
        headers, _ = self.auth.request_headers(peer, self.self_url, b"")
        url = peer_url.rstrip("/") + SEEN_PATH
        try:
            async with session.get(
                url, params={"node": node}, headers=headers, timeout=self.timeout
            ) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        if not isinstance(body, dict) or body.get("node") != node:
            return None
        incarnation, restored = body.get("incarnation"), body.get("restored")
        if not (incarnation is None or isinstance(incarnation, str)) or type(restored) is not bool:
            return None
        return SeenAnswer(peer, incarnation, restored)

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl if self.ssl else True)
        )
