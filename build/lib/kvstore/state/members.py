"""The member directory: who is in the cluster and at which URLs, as the log says.

A membership change (`consensus.ConfChange`) carries the new member's addresses in its
`context` bytes, which the core never looks at. The state machine applies them to a
directory `{id: MemberAddress}`, and keeps the ids of removed members, so every replica
(and every snapshot) holds the same directory. Founders' addresses are not in the log
(the bootstrap entry names ids only): the runtime takes them from cluster.toml.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from consensus.membership import (
    ConfChange,
    ConfChangeType,
    InvalidConfChange,
    decode_conf_change,
)

_CONTEXT_FORMAT = 1


@dataclass(frozen=True, slots=True)
class MemberAddress:
    client_url: str
    peer_url: str


def encode_member_context(address: MemberAddress) -> bytes:
    return msgpack.packb([_CONTEXT_FORMAT, address.client_url, address.peer_url], use_bin_type=True)


def decode_member_context(data: bytes) -> MemberAddress | None:
    """The addresses in a change's context, or None when it carries none (or garbage):
    a change proposed without addresses still changes membership, just not the directory."""
    try:
        fmt, client_url, peer_url = msgpack.unpackb(data, raw=False)
    except Exception:  # any malformed context reads as "no addresses"
        return None
    if fmt != _CONTEXT_FORMAT or not isinstance(client_url, str) or not isinstance(peer_url, str):
        return None
    return MemberAddress(client_url, peer_url)


class MemberDirectory:
    """Addresses of members added through the log, and ids removed through it.

    Deterministic: a pure function of the CONF_CHANGE entries applied, in order."""

    __slots__ = ("addresses", "removed")

    def __init__(
        self,
        addresses: dict[str, MemberAddress] | None = None,
        removed: set[str] | None = None,
    ) -> None:
        self.addresses: dict[str, MemberAddress] = addresses or {}
        self.removed: set[str] = removed or set()

    def apply(self, data: bytes) -> ConfChange | None:
        """Apply one CONF_CHANGE entry's data; returns the change (None if undecodable)."""
        try:
            change = decode_conf_change(data)
        except InvalidConfChange:
            return None
        node = change.node_id
        if change.type is ConfChangeType.ADD_LEARNER:
            address = decode_member_context(change.context)
            if address is not None:
                self.addresses[node] = address
            self.removed.discard(node)
        elif change.type is ConfChangeType.REMOVE:
            self.addresses.pop(node, None)
            self.removed.add(node)
        return change

    def copy(self) -> MemberDirectory:
        return MemberDirectory(dict(self.addresses), set(self.removed))

    def to_wire(self) -> tuple[list[tuple[str, str, str]], list[str]]:
        """A canonical form for snapshots: equal directories give equal bytes."""
        members = [(n, a.client_url, a.peer_url) for n, a in sorted(self.addresses.items())]
        return members, sorted(self.removed)

    @classmethod
    def from_wire(cls, members: object, removed: object) -> MemberDirectory:
        addresses: dict[str, MemberAddress] = {}
        for item in members:  # type: ignore[attr-defined]
            node, client_url, peer_url = item
            if not all(isinstance(v, str) for v in (node, client_url, peer_url)):
                raise ValueError(f"bad member record {item!r}")
            addresses[node] = MemberAddress(client_url, peer_url)
        gone = set(removed)  # type: ignore[call-overload]
        if not all(isinstance(v, str) for v in gone):
            raise ValueError("bad removed-member record")
        return cls(addresses, gone)
