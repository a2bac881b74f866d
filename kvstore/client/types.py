"""Result values returned by the client (plain, immutable, independent of aiohttp)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A value read from the cluster with the version numbers needed for compare-and-set."""

    key: str
    value: bytes
    version: int
    """Writes since the key was (re)created; restarts at 1 after a delete."""
    mod_revision: int
    """The revision of the key's last change: what `prev_revision` compares (no ABA)."""
    create_revision: int = 0
    """The revision that created this incarnation of the key."""


class PutResult(NamedTuple):
    """What a put answers; a tuple so `revision, version = kv.put(...)` reads naturally."""

    revision: int
    version: int


@dataclass(frozen=True, slots=True)
class Member:
    """One node of the cluster as listed in /v1/status `members`."""

    id: str
    client_url: str


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """The answer of one node's /v1/status; `raw` keeps fields this client does not know yet."""

    endpoint: str
    id: str
    role: str
    term: int
    leader: str | None
    commit_index: int
    applied_index: int
    members: tuple[Member, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, endpoint: str, data: dict[str, Any]) -> NodeStatus:
        """Parse leniently: a missing number reads as 0 rather than failing a status display."""
        return cls(
            endpoint=endpoint,
            id=str(data.get("id", "?")),
            role=str(data.get("role", "?")),
            term=int(data.get("term") or 0),
            leader=str(data["leader"]) if data.get("leader") else None,
            commit_index=int(data.get("commit_index") or 0),
            applied_index=int(data.get("applied_index") or 0),
            members=parse_members(data.get("members")),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One member as /v1/members lists it; `match_index` is the leader's replication index."""

    id: str
    role: str
    client_url: str | None
    peer_url: str | None
    match_index: int | None


@dataclass(frozen=True, slots=True)
class MemberList:
    """The answer of /v1/members (and of adding or removing one); `raw` keeps every field."""

    leader: str | None
    members: tuple[MemberRow, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemberList:
        rows = tuple(
            MemberRow(
                str(m.get("id")),
                str(m.get("role", "?")),
                m.get("client_url"),
                m.get("peer_url"),
                m.get("match_index"),
            )
            for m in data.get("members") or []
            if isinstance(m, dict)
        )
        leader = data.get("leader")
        return cls(str(leader) if leader else None, rows, data)


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One row of a cluster-wide status: the node's status, or why it could not be had."""

    endpoint: str
    node_id: str | None
    status: NodeStatus | None
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.status is not None


def parse_members(value: Any) -> tuple[Member, ...]:
    """Read `members` as a list of {"id", "client_url"} objects.

    That list is the shape the client expects; a mapping id -> client_url is also
    accepted so a server that chose the other obvious shape still works.
    """
    members: list[Member] = []
    if isinstance(value, dict):
        items = [{"id": k, "client_url": v} for k, v in value.items()]
    elif isinstance(value, list):
        items = value
    else:
        return ()
    for item in items:
        if isinstance(item, dict) and item.get("id") and isinstance(item.get("client_url"), str):
            members.append(Member(str(item["id"]), item["client_url"].rstrip("/")))
    return tuple(members)
