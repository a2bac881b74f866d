"""Membership changes one server at a time (Raft dissertation §4.1).

A change is an entry of type CONF_CHANGE. It takes effect on a node when the node
learns that the entry is committed, and a leader accepts a new change only when
the previous one has taken effect and it has committed an entry of its own term
(the fix for the single-server change bug found after the dissertation). Adding a
server happens in two steps: it joins as a learner, which replicates but does not
count for quorum, and is promoted once it has caught up. (A learner still answers vote
requests: it may have been promoted without knowing it yet; see RaftNode.)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from consensus.errors import ConsensusError
from consensus.types import Entry, EntryType, Membership, NodeId


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 0
    PROMOTE = 1
    REMOVE = 2
    BOOTSTRAP = 3
    """The founding voters, written identically as entry 1 by every founding node, so
    the whole membership history is in the log and a joining node learns it there."""


class InvalidConfChange(ConsensusError):
    """The change does not apply to the current membership (e.g. removing a stranger)."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: NodeId
    context: bytes = b""
    """Opaque to the core: the driver keeps the new member's addresses here."""


def encode_conf_change(change: ConfChange) -> bytes:
    return msgpack.packb([int(change.type), change.node_id, change.context], use_bin_type=True)


def decode_conf_change(data: bytes) -> ConfChange:
    try:
        kind, node_id, context = msgpack.unpackb(data, raw=False)
        return ConfChange(ConfChangeType(kind), str(node_id), bytes(context))
    except Exception as exc:  # garbage from disk or a peer arrives in many shapes
        raise InvalidConfChange(f"undecodable configuration change: {exc}") from exc


def removal_of(node_id: NodeId, entries: Iterable[Entry]) -> int:
    """The index of the last of `entries` that removes `node_id` (0 if none): a leader
    elected with its own removal still uncommitted takes no proposals (consensus.leader)."""
    found = 0
    for entry in entries:
        if entry.type is EntryType.CONF_CHANGE:
            try:
                change = decode_conf_change(entry.data)
            except InvalidConfChange:
                continue  # takes no effect when applied either
            if change.type is ConfChangeType.REMOVE and change.node_id == node_id:
                found = entry.index
    return found


def bootstrap_change(voters: tuple[NodeId, ...]) -> ConfChange:
    return ConfChange(ConfChangeType.BOOTSTRAP, "", msgpack.packb(list(voters)))


def bootstrap_entry(voters: tuple[NodeId, ...]) -> Entry:
    """Every founding node writes the same committed entry 1 (term 1) naming the
    founding voters, as etcd does: identical entries keep Log Matching, and the
    membership history then lives entirely in the log."""
    return Entry(1, 1, encode_conf_change(bootstrap_change(voters)), EntryType.CONF_CHANGE)


def bootstrap_voters(change: ConfChange) -> tuple[NodeId, ...]:
    try:
        voters = msgpack.unpackb(change.context, raw=False)
        return tuple(str(voter) for voter in voters)
    except Exception as exc:
        raise InvalidConfChange(f"undecodable bootstrap membership: {exc}") from exc


def validate(membership: Membership, change: ConfChange) -> None:
    """Refuse a change that makes no sense for `membership`, with a reason for the operator."""
    node = change.node_id
    if change.type is ConfChangeType.BOOTSTRAP:
        if membership.voters and membership.voters != bootstrap_voters(change):
            raise InvalidConfChange("bootstrap membership differs from the one in force")
        return
    if change.type is ConfChangeType.ADD_LEARNER and node in membership:
        raise InvalidConfChange(f"{node} is already a member")
    if change.type is ConfChangeType.PROMOTE and node not in membership.learners:
        raise InvalidConfChange(f"{node} is not a learner")
    if change.type is ConfChangeType.REMOVE:
        if node not in membership:
            raise InvalidConfChange(f"{node} is not a member")
        if membership.voters == (node,):
            raise InvalidConfChange(f"{node} is the last voter")


def apply_change(membership: Membership, change: ConfChange) -> Membership:
    """The membership after `change`; an invalid change (possible only in a corrupt log,
    since the leader validates before proposing) leaves it unchanged everywhere alike."""
    try:
        validate(membership, change)
    except InvalidConfChange:
        return membership
    if change.type is ConfChangeType.BOOTSTRAP:
        return Membership(bootstrap_voters(change))
    voters = tuple(v for v in membership.voters if v != change.node_id)
    learners = tuple(n for n in membership.learners if n != change.node_id)
    if change.type is ConfChangeType.ADD_LEARNER:
        learners = (*learners, change.node_id)
    elif change.type is ConfChangeType.PROMOTE:
        voters = (*voters, change.node_id)
    return Membership(voters, learners)
