"""The commands a client write turns into, and their bytes in the Raft log.

Every replica decodes the same bytes into the same command, so the encoding is part of
the replicated state: change it only by adding a new tag, never by reinterpreting an old
one. The wire form is a msgpack array, tag first, fields positional and the session
flattened in (or left off), because it is written once per write and read on every
replica: short and cheap to decode beats self-describing.

Tags: 1 put and 2 delete (with prev_version) are the original forms and are still what
a put or delete without `prev_revision` encodes to, so older replicas read them; 3 and 4
are put and delete with `prev_revision`; 5 is a transaction.

Invariants are checked when a command is built, so a bad client header fails at the
HTTP layer (as a ValueError) instead of reaching the log, where every replica would
have to deal with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeAlias

import msgpack

from consensus.packing import pack
from kvstore.state.auth_commands import (
    AUTH_COMMANDS,
    AUTH_TAGS,
    AuthCommand,
    auth_fields,
    decode_auth,
)
from kvstore.state.coordination_commands import (
    CoordinationCommand,
    Fence,
    LeaseGrant,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Proclaim,
    check_extras,
)
from kvstore.state.keyrange import Cursor, KeyRange, RangeQuery
from kvstore.state.session_ref import MAX_CLIENT_ID_LENGTH, SessionRef, is_int

__all__ = [
    "MAX_CLIENT_ID_LENGTH",
    "AsUser",
    "Command",
    "CommandDecodeError",
    "Compare",
    "CoordinationCommand",
    "Delete",
    "Fence",
    "LeaseGrant",
    "LeaseRevoke",
    "LockAcquire",
    "LockRelease",
    "Op",
    "Proclaim",
    "Put",
    "SessionRef",
    "Target",
    "Txn",
    "TxnDeleteRange",
    "TxnOp",
    "TxnPut",
    "TxnRange",
    "decode_command",
    "encode_command",
]


_PUT = 1
_DELETE = 2
_PUT_REV = 3
_DELETE_REV = 4
_TXN = 5
_SETTINGS = 6
_OP_PUT, _OP_DELETE_RANGE, _OP_RANGE = range(3)
# Leases, locks and elections (kvstore.state.coordination). Writes with a lease or a
# fence use their own tags, so the bytes of the others stay what they always were.
_PUT_EXT = 10
_DELETE_EXT = 11
_LEASE_GRANT = 12
_LEASE_REVOKE = 13
_LOCK_ACQUIRE = 14
_LOCK_RELEASE = 15
_PROCLAIM = 16
_TXN_FENCED = 17
# A command proposed on behalf of an authenticated user (kvstore.state.auth_check):
# [40, user, the command's own bytes]; auth commands themselves are tags 30..38.
_AS_USER = 40


class CommandDecodeError(ValueError):
    """Bytes that are not a command this version understands (corrupt, or a newer format)."""


def _check_common(
    key: object, prev_version: object, session: object, prev_revision: object = None
) -> None:
    if not isinstance(key, str):
        raise ValueError(f"key must be a string, got {type(key).__name__}")
    for name, prev in (("prev_version", prev_version), ("prev_revision", prev_revision)):
        if prev is not None and (not is_int(prev) or prev < 0):
            raise ValueError(f"{name} must be None or an integer >= 0, got {prev!r}")
    if session is not None and not isinstance(session, SessionRef):
        raise ValueError(f"session must be a SessionRef or None, got {type(session).__name__}")


@dataclass(unsafe_hash=True, slots=True)  # built per write: see kvstore.state.types
class Put:
    """Write `value` under `key`; with `prev_revision` set, only if the key's mod_revision
    is that (0: only if the key does not exist), which no delete and re-create can fake;
    with `prev_version`, only if the key is at that version (kept for compatibility:
    a re-created key restarts at version 1, so it can pass against another incarnation)."""

    key: str
    value: bytes
    prev_version: int | None = None
    session: SessionRef | None = None
    prev_revision: int | None = None
    lease: int = 0
    """Attach the key to this lease (0: none); it is deleted when the lease ends."""
    fence: Fence | None = None

    def __post_init__(self) -> None:
        if (  # the plain put passes in one expression: every replica builds each one
            type(self.key) is str
            and type(self.value) is bytes
            and self.prev_version is None
            and self.prev_revision is None
            and (self.session is None or type(self.session) is SessionRef)
            and self.lease == 0
            and type(self.lease) is int
            and self.fence is None
        ):
            return
        _check_common(self.key, self.prev_version, self.session, self.prev_revision)
        if not isinstance(self.value, bytes):
            raise ValueError(f"value must be bytes, got {type(self.value).__name__}")
        check_extras(self.lease, self.fence)


@dataclass(unsafe_hash=True, slots=True)  # built per write: see kvstore.state.types
class Delete:
    """Remove `key`; with `prev_version` / `prev_revision` set, only if the key is at that
    version / mod_revision."""

    key: str
    prev_version: int | None = None
    session: SessionRef | None = None
    prev_revision: int | None = None
    fence: Fence | None = None

    def __post_init__(self) -> None:
        _check_common(self.key, self.prev_version, self.session, self.prev_revision)
        check_extras(0, self.fence)


class Target(IntEnum):
    """What a transaction compare looks at (a missing key has version, create_revision
    and mod_revision 0, and no value: every value compare on it is false)."""

    VERSION = 0
    CREATE_REVISION = 1
    MOD_REVISION = 2
    VALUE = 3
    EXISTS = 4


class Op(IntEnum):
    EQ = 0
    NE = 1
    LT = 2
    GT = 3


@dataclass(frozen=True, slots=True)
class Compare:
    """`<target of key> <op> operand`: an int for the numbers, bytes for VALUE, and a
    bool for EXISTS (with = or != only)."""

    key: str
    target: Target
    op: Op
    operand: int | bytes | bool

    def __post_init__(self) -> None:
        if not isinstance(self.key, str):
            raise ValueError("compare key must be a string")
        if type(self.target) is not Target or type(self.op) is not Op:
            raise ValueError("compare target and op must be a Target and an Op")
        operand = self.operand
        if self.target is Target.VALUE:
            ok = type(operand) is bytes
        elif self.target is Target.EXISTS:
            ok = type(operand) is bool and self.op in (Op.EQ, Op.NE)
        else:
            ok = is_int(operand) and operand >= 0  # type: ignore[operator]
        if not ok:
            raise ValueError(f"bad operand {operand!r} for a {self.target.name} compare")


@dataclass(frozen=True, slots=True)
class TxnPut:
    key: str
    value: bytes
    lease: int = 0
    """Attach the key to this lease (0: none), as `Put.lease`; a transaction naming a
    lease that does not exist, in either branch, is refused whole."""

    def __post_init__(self) -> None:
        _check_common(self.key, None, None)
        if not isinstance(self.value, bytes):
            raise ValueError(f"value must be bytes, got {type(self.value).__name__}")
        check_extras(self.lease, None)


@dataclass(frozen=True, slots=True)
class TxnDeleteRange:
    keys: KeyRange

    def __post_init__(self) -> None:
        if not isinstance(self.keys, KeyRange):
            raise ValueError("a delete needs a KeyRange")


@dataclass(frozen=True, slots=True)
class TxnRange:
    """A read inside a transaction: it sees the writes of the operations before it."""

    query: RangeQuery

    def __post_init__(self) -> None:
        if not isinstance(self.query, RangeQuery) or self.query.revision:
            raise ValueError("a read inside a transaction reads the current revision")


TxnOp: TypeAlias = TxnPut | TxnDeleteRange | TxnRange


@dataclass(frozen=True, slots=True)
class Txn:
    """If every compare holds, run `success`, else `failure`; all in one log entry.

    A branch may not write one key twice (put twice, or put and delete): with one
    revision for the whole transaction, the history could not order the two."""

    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...] = ()
    session: SessionRef | None = None
    fence: Fence | None = None
    """When set, the whole transaction (compares included) is refused unless the token
    holds the lock; a fenced transaction is never served as a read."""

    def __post_init__(self) -> None:
        check_extras(0, self.fence)
        if not all(isinstance(c, Compare) for c in self.compares):
            raise ValueError("compares must be Compare values")
        for branch in (self.success, self.failure):
            if not all(isinstance(op, TxnPut | TxnDeleteRange | TxnRange) for op in branch):
                raise ValueError("operations must be TxnPut, TxnDeleteRange or TxnRange")
            _check_no_double_write(branch)
        if self.session is not None and not isinstance(self.session, SessionRef):
            raise ValueError("session must be a SessionRef or None")

    @property
    def writes(self) -> bool:
        """Whether either branch may change the store (else it can be served as a read)."""
        if self.fence is not None:
            return True
        return any(type(op) is not TxnRange for op in (*self.success, *self.failure))


def _check_no_double_write(branch: tuple[TxnOp, ...]) -> None:
    puts = [op.key for op in branch if type(op) is TxnPut]
    if len(set(puts)) != len(puts):
        raise ValueError("a transaction branch puts the same key twice")
    deletes = [op.keys for op in branch if type(op) is TxnDeleteRange]
    for key in puts:
        if any(key in keys for keys in deletes):
            raise ValueError(f"a transaction branch both puts and deletes {key!r}")


@dataclass(frozen=True, slots=True)
class SetSettings:
    """Cluster settings that decide apply results (session expiry and eviction, the
    retained history), so they live in the log, never in each node's file. With
    `only_if_unset` (what a new leader proposes from its cluster.toml when the log has
    none yet) it changes nothing once the log carries settings, so racing leaders agree."""

    session_ttl_entries: int
    max_sessions: int
    history_revisions: int
    only_if_unset: bool = False
    session: None = None  # never part of a client session

    def __post_init__(self) -> None:
        for name in ("session_ttl_entries", "max_sessions", "history_revisions"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if type(self.only_if_unset) is not bool:
            raise ValueError("only_if_unset must be a bool")


@dataclass(frozen=True, slots=True)
class AsUser:
    """`command`, proposed on behalf of `user`: the state machine checks the user's
    permissions against the auth state of the entry's own log position, so a permission
    revoked by an earlier entry is enforced. Commands without it come from an open
    cluster (auth disabled when the request was admitted) or from the node itself
    (lease expiry), and are not checked."""

    user: str
    command: Put | Delete | Txn | CoordinationCommand | AuthCommand

    def __post_init__(self) -> None:
        if not isinstance(self.user, str) or not self.user:
            raise ValueError("the user of a command is a non-empty string")
        if type(self.command) in (AsUser, SetSettings):
            raise ValueError(f"{type(self.command).__name__} is never proposed for a user")

    @property
    def session(self) -> SessionRef | None:
        """The command's own: the session is the client's, whichever user it acts for."""
        return self.command.session


Command: TypeAlias = Put | Delete | Txn | SetSettings | CoordinationCommand | AuthCommand | AsUser


def encode_command(cmd: Command) -> bytes:
    """Raises ValueError (UnicodeEncodeError) for a key that is not valid UTF-8, e.g. a lone
    surrogate: such a key could never be decoded back on the other replicas."""
    fields: list[Any]
    if type(cmd) is Put:
        fields = [_PUT, cmd.key, cmd.value, cmd.prev_version]
        if cmd.lease or cmd.fence is not None:
            fields = [_PUT_EXT, *fields[1:], cmd.prev_revision, cmd.lease, *_fence(cmd.fence)]
        elif cmd.prev_revision is not None:
            fields = [_PUT_REV, cmd.key, cmd.value, cmd.prev_version, cmd.prev_revision]
    elif type(cmd) is Delete:
        fields = [_DELETE, cmd.key, cmd.prev_version]
        if cmd.fence is not None:
            fields = [_DELETE_EXT, *fields[1:], cmd.prev_revision, *_fence(cmd.fence)]
        elif cmd.prev_revision is not None:
            fields = [_DELETE_REV, cmd.key, cmd.prev_version, cmd.prev_revision]
    elif type(cmd) is Txn:
        fields = [
            _TXN,
            [(c.key, int(c.target), int(c.op), c.operand) for c in cmd.compares],
            [_encode_op(op) for op in cmd.success],
            [_encode_op(op) for op in cmd.failure],
        ]
        if cmd.fence is not None:
            fields = [_TXN_FENCED, *fields[1:], *_fence(cmd.fence)]
    elif type(cmd) is SetSettings:
        limits = (cmd.session_ttl_entries, cmd.max_sessions, cmd.history_revisions)
        return pack([_SETTINGS, *limits, cmd.only_if_unset])
    elif type(cmd) is LeaseGrant:
        fields = [_LEASE_GRANT, cmd.ttl]
    elif type(cmd) is LeaseRevoke:
        fields = [_LEASE_REVOKE, cmd.lease]
    elif type(cmd) is LockAcquire:
        fields = [_LOCK_ACQUIRE, cmd.name, cmd.lease, cmd.value]
    elif type(cmd) is LockRelease:
        fields = [_LOCK_RELEASE, cmd.name, cmd.token]
    elif type(cmd) is Proclaim:
        fields = [_PROCLAIM, cmd.name, cmd.token, cmd.value]
    elif type(cmd) in AUTH_COMMANDS:
        return pack(auth_fields(cmd))  # type: ignore[arg-type]
    elif type(cmd) is AsUser:
        return pack([_AS_USER, cmd.user, encode_command(cmd.command)])
    else:
        raise TypeError(f"not a command: {type(cmd).__name__}")
    s = cmd.session
    if s is not None:
        fields += (s.client_id, s.seq, s.first_outstanding)
    return pack(fields)  # a reused Packer, not packb's fresh 256 KiB buffer


def decode_command(data: bytes) -> Command:
    """The inverse of encode_command; anything else raises CommandDecodeError."""
    try:
        fields = msgpack.unpackb(data, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise CommandDecodeError(f"command is not valid msgpack: {exc}") from None
    if type(fields) is not tuple or not fields:
        raise CommandDecodeError("command is not a non-empty msgpack array")
    tag, n = fields[0], len(fields)
    if not is_int(tag):
        raise CommandDecodeError(f"command tag is {type(tag).__name__}, not an integer")
    try:
        if tag == _PUT and n in (4, 7):
            session = SessionRef(*fields[4:]) if n == 7 else None
            return Put(fields[1], fields[2], fields[3], session)
        if tag == _DELETE and n in (3, 6):
            session = SessionRef(*fields[3:]) if n == 6 else None
            return Delete(fields[1], fields[2], session)
        if tag == _PUT_REV and n in (5, 8):
            session = SessionRef(*fields[5:]) if n == 8 else None
            return Put(fields[1], fields[2], fields[3], session, fields[4])
        if tag == _DELETE_REV and n in (4, 7):
            session = SessionRef(*fields[4:]) if n == 7 else None
            return Delete(fields[1], fields[2], session, fields[3])
        if tag == _TXN and n in (4, 7):
            session = SessionRef(*fields[4:]) if n == 7 else None
            return _decode_txn(fields[1:4], session, None)
        width, build = _BUILDERS.get(tag, (0, None))
        if build is not None and n in (width, width + 3):
            session = SessionRef(*fields[width:]) if n > width else None
            return build(fields[1:width], session)
        if tag == _SETTINGS and n == 5:
            return SetSettings(*fields[1:])
        if tag == _AS_USER and n == 3 and type(fields[2]) is bytes:
            return AsUser(fields[1], decode_command(fields[2]))  # type: ignore[arg-type]
        if tag in AUTH_TAGS:
            return decode_auth(fields)
    except (ValueError, TypeError) as exc:
        raise CommandDecodeError(f"malformed command: {exc}") from None
    raise CommandDecodeError(f"unknown command tag {tag} with {n} fields")


def _decode_txn(fields: Any, session: SessionRef | None, fence: Fence | None) -> Txn:
    compares = tuple(
        Compare(key, Target(target), Op(op), operand) for key, target, op, operand in fields[0]
    )
    success = tuple(_decode_op(*op) for op in fields[1])
    failure = tuple(_decode_op(*op) for op in fields[2])
    return Txn(compares, success, failure, session, fence)


def _fence(fence: Fence | None) -> tuple[str, int]:
    return ("", 0) if fence is None else (fence.lock, fence.token)


def _unfence(lock: str, token: int) -> Fence | None:
    return Fence(lock, token) if lock else None


_BUILDERS: dict[int, tuple[int, Any]] = {
    # tag: (fields before the session, tag included; builder from the fields after the tag)
    _PUT_EXT: (8, lambda f, s: Put(f[0], f[1], f[2], s, f[3], f[4], _unfence(f[5], f[6]))),
    _DELETE_EXT: (6, lambda f, s: Delete(f[0], f[1], s, f[2], _unfence(f[3], f[4]))),
    _TXN_FENCED: (6, lambda f, s: _decode_txn(f[:3], s, _unfence(f[3], f[4]))),
    _LEASE_GRANT: (2, lambda f, s: LeaseGrant(f[0], s)),
    _LEASE_REVOKE: (2, lambda f, s: LeaseRevoke(f[0], s)),
    _LOCK_ACQUIRE: (4, lambda f, s: LockAcquire(f[0], f[1], f[2], s)),
    _LOCK_RELEASE: (3, lambda f, s: LockRelease(f[0], f[1], s)),
    _PROCLAIM: (4, lambda f, s: Proclaim(f[0], f[1], f[2], s)),
}


def _encode_op(op: TxnOp) -> tuple[Any, ...]:
    if type(op) is TxnPut:
        # Without a lease the bytes stay what they always were.
        return (_OP_PUT, op.key, op.value, op.lease) if op.lease else (_OP_PUT, op.key, op.value)
    if type(op) is TxnDeleteRange:
        return (_OP_DELETE_RANGE, op.keys.start, op.keys.end)
    assert type(op) is TxnRange
    q = op.query
    after = None if q.after is None else (q.after.mod_revision, q.after.key)
    flags = (q.keys_only, q.count_only, q.newest_first)
    return (_OP_RANGE, q.keys.start, q.keys.end, q.limit, *flags, after)


def _decode_op(tag: int, *fields: Any) -> TxnOp:
    if tag == _OP_PUT and len(fields) in (2, 3):
        return TxnPut(*fields)
    if tag == _OP_DELETE_RANGE and len(fields) == 2:
        return TxnDeleteRange(KeyRange(*fields))
    if tag == _OP_RANGE and len(fields) == 7:
        start, end, limit, keys_only, count_only, newest_first, after = fields
        cursor = None if after is None else Cursor(*after)
        keys = KeyRange(start, end)
        return TxnRange(RangeQuery(keys, 0, limit, keys_only, count_only, newest_first, cursor))
    raise ValueError(f"unknown transaction operation {tag!r} with {len(fields)} fields")
