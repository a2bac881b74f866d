"""Values of the key-value state machine: keys, apply results and client sessions.

Kept apart from `kvstore.state.machine` so the snapshot codec (`kvstore.state.snapshot`)
and the range, txn and history modules can share them without an import cycle;
`kvstore.state.machine` re-exports them.

Revisions (as in etcd): the store's `revision` counts applied write commands (a
transaction that changes anything is one). Every key carries the revision that created
it (`create_revision`, reset when the key is deleted and created again), the revision of
its last change (`mod_revision`) and `version`, the number of writes since its creation.
`mod_revision` is what a compare-and-set without ABA compares: it never repeats for a
key, while `version` restarts at 1 on re-creation.

The values every replica builds for each write (KeyValue, history.Event, PutResult,
DeleteResult, and the commands Put and Delete) are equal and hashed by their fields like
the frozen dataclasses around them, but not frozen: a frozen dataclass's __init__ sets
each field through object.__setattr__ (0.65 against 0.19 us for a KeyValue; five such
objects per put on every replica). Never assign to one: the history, snapshots, the log
and readers share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(unsafe_hash=True, slots=True)  # built per write: see the module docstring
class KeyValue:
    key: str
    value: bytes
    version: int
    """Writes to the key since it was (re)created: 1 after the first put."""
    create_revision: int
    mod_revision: int


@dataclass(unsafe_hash=True, slots=True)  # built per write: see the module docstring
class PutResult:
    revision: int
    version: int


@dataclass(unsafe_hash=True, slots=True)  # built per write: see the module docstring
class DeleteResult:
    revision: int


@dataclass(frozen=True, slots=True)
class NotFoundResult:
    pass


@dataclass(frozen=True, slots=True)
class VersionMismatchResult:
    current_version: int
    """0 when the key does not exist."""


@dataclass(frozen=True, slots=True)
class RevisionMismatchResult:
    current_revision: int
    """The key's mod_revision; 0 when the key does not exist."""


@dataclass(frozen=True, slots=True)
class RangeResult:
    """Keys of a range read at `revision`; `count` is how many keys the whole range held
    (whatever the limit), `more` whether keys beyond the returned ones remain."""

    revision: int
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool


@dataclass(frozen=True, slots=True)
class DeleteRangeResult:
    revision: int
    deleted: int


OpResult: TypeAlias = PutResult | DeleteRangeResult | RangeResult


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Which branch ran (`succeeded`: the compares held, so `then` ran) and each of its
    operations' results, in order; `revision` is the store's revision after it."""

    succeeded: bool
    revision: int
    results: tuple[OpResult, ...]


@dataclass(frozen=True, slots=True)
class SessionExpiredResult:
    """The request was not applied now, and whether it was applied before is unknown."""


@dataclass(frozen=True, slots=True)
class LeaseGrantResult:
    lease: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseRevokeResult:
    revision: int
    """The revision after the lease's keys were deleted (unchanged when it had none)."""
    deleted: int


@dataclass(frozen=True, slots=True)
class LeaseNotFoundResult:
    """The lease a command names does not exist (it ended, or never was)."""

    lease: int


@dataclass(frozen=True, slots=True)
class LockResult:
    """A queue position: `token` is the caller's, `holder` the token at the head (0: free)."""

    token: int
    holder: int


@dataclass(frozen=True, slots=True)
class LockNotFoundResult:
    """The token is not (or no longer) queued for that lock."""


@dataclass(frozen=True, slots=True)
class FencedResult:
    """A fenced command was refused: its token does not hold the lock; `holder` does (0: free)."""

    holder: int


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The answer of an auth command ("" code: done), or a command refused for want of
    a permission (code "permission_denied") at its log position (kvstore.state.auth)."""

    code: str
    message: str


CoordinationResult: TypeAlias = (
    LeaseGrantResult
    | LeaseRevokeResult
    | LeaseNotFoundResult
    | LockResult
    | LockNotFoundResult
    | FencedResult
)

ApplyResult: TypeAlias = (
    PutResult
    | DeleteResult
    | NotFoundResult
    | VersionMismatchResult
    | RevisionMismatchResult
    | TxnResult
    | SessionExpiredResult
    | CoordinationResult
    | AuthResult
)

NOT_FOUND = NotFoundResult()
SESSION_EXPIRED = SessionExpiredResult()
LOCK_NOT_FOUND = LockNotFoundResult()


class Session:
    """Mutable on purpose: it changes on every request of its client."""

    __slots__ = ("floor", "last_used", "results")

    def __init__(self, floor: int, last_used: int, results: dict[int, ApplyResult]) -> None:
        self.floor = floor
        self.last_used = last_used
        self.results = results

    def forget_below(self, floor: int) -> None:
        self.floor = floor
        if self.results:
            for seq in [s for s in self.results if s < floor]:
                del self.results[seq]

    def remember(self, seq: int, result: ApplyResult, cap: int) -> None:
        self.results[seq] = result
        if len(self.results) > cap:
            lowest = min(self.results)
            del self.results[lowest]
            self.floor = max(self.floor, lowest + 1)


_RESULT_PUT, _RESULT_DELETE, _RESULT_NOT_FOUND, _RESULT_MISMATCH = range(4)
_RESULT_REV_MISMATCH, _RESULT_TXN = 4, 5
_OP_PUT, _OP_DELETE_RANGE, _OP_RANGE = range(3)
_COORDINATION_RESULTS: dict[type, int] = {
    # result type (all fields integers): its tag in a snapshot's session results
    LeaseGrantResult: 10,
    LeaseRevokeResult: 11,
    LeaseNotFoundResult: 12,
    LockResult: 13,
    LockNotFoundResult: 14,
    FencedResult: 15,
}
_COORDINATION_TAGS = {tag: cls for cls, tag in _COORDINATION_RESULTS.items()}
_RESULT_AUTH = 20


def encode_result(result: ApplyResult) -> tuple[Any, ...]:
    """The stored form of a session's result (in snapshots): a tag and its fields."""
    if type(result) is PutResult:
        return (_RESULT_PUT, result.revision, result.version)
    if type(result) is DeleteResult:
        return (_RESULT_DELETE, result.revision)
    if type(result) is NotFoundResult:
        return (_RESULT_NOT_FOUND,)
    if type(result) is VersionMismatchResult:
        return (_RESULT_MISMATCH, result.current_version)
    if type(result) is RevisionMismatchResult:
        return (_RESULT_REV_MISMATCH, result.current_revision)
    if type(result) is TxnResult:
        ops = [_encode_op_result(r) for r in result.results]
        return (_RESULT_TXN, int(result.succeeded), result.revision, ops)
    if type(result) is AuthResult:
        return (_RESULT_AUTH, result.code, result.message)
    tag = _COORDINATION_RESULTS.get(type(result))
    if tag is not None:
        return (tag, *(getattr(result, name) for name in result.__slots__))  # type: ignore[union-attr]
    raise TypeError(f"cannot store result {result!r}")  # SessionExpired is never stored


def _encode_op_result(result: OpResult) -> tuple[Any, ...]:
    if type(result) is PutResult:
        return (_OP_PUT, result.revision, result.version)
    if type(result) is DeleteRangeResult:
        return (_OP_DELETE_RANGE, result.revision, result.deleted)
    if type(result) is RangeResult:
        kvs = [encode_kv(kv) for kv in result.kvs]
        return (_OP_RANGE, result.revision, result.count, int(result.more), kvs)
    raise TypeError(f"not an operation result: {result!r}")


def _decode_op_result(tag: int, *fields: Any) -> OpResult:
    if tag == _OP_PUT:
        return PutResult(*ints(fields, 2))
    if tag == _OP_DELETE_RANGE:
        return DeleteRangeResult(*ints(fields, 2))
    if tag == _OP_RANGE and len(fields) == 4:
        revision, count, more = ints(fields[:3], 3)
        kvs = tuple(decode_kv(record) for record in fields[3])
        return RangeResult(revision, kvs, count, bool(more))
    raise ValueError(f"bad stored operation result {(tag, *fields)!r}")


def encode_kv(kv: KeyValue) -> tuple[str, bytes, int, int, int]:
    return (kv.key, kv.value, kv.version, kv.create_revision, kv.mod_revision)


def kv_fields(record: Any) -> tuple[str, bytes, int, int, int]:
    """A key record `(key, value, version, create, mod)` off the wire, checked inline
    without `ints` (restoring a million keys is mostly this call); ValueError on
    anything but a well-formed record."""
    try:
        key, value, version, create, mod = record
    except (TypeError, ValueError):
        raise ValueError(f"bad key record {record!r}") from None
    if (
        type(key) is not str
        or type(value) is not bytes
        or type(version) is not int
        or type(create) is not int
        or type(mod) is not int
        or min(version, create, mod) < 0
    ):
        raise ValueError(f"bad key record for {key!r}")
    return key, value, version, create, mod


def decode_kv(record: Any) -> KeyValue:
    key, value, version, create, mod = kv_fields(record)
    # One int object for both revisions of a never-rewritten key, as apply makes it.
    return KeyValue(key, value, version, create, create if mod == create else mod)


def decode_result(tag: int, *fields: Any) -> ApplyResult:
    if tag == _RESULT_PUT:
        return PutResult(*ints(fields, 2))
    if tag == _RESULT_DELETE:
        return DeleteResult(*ints(fields, 1))
    if tag == _RESULT_NOT_FOUND and not fields:
        return NOT_FOUND
    if tag == _RESULT_MISMATCH:
        return VersionMismatchResult(*ints(fields, 1))
    if tag == _RESULT_REV_MISMATCH:
        return RevisionMismatchResult(*ints(fields, 1))
    if tag == _RESULT_TXN and len(fields) == 3:
        succeeded, revision = ints(fields[:2], 2)
        ops = tuple(_decode_op_result(*op) for op in fields[2])
        return TxnResult(bool(succeeded), revision, ops)
    if tag == _RESULT_AUTH and len(fields) == 2 and all(type(f) is str for f in fields):
        return AuthResult(*fields)
    cls = _COORDINATION_TAGS.get(tag)
    if cls is not None:
        result: ApplyResult = cls(*ints(fields, len(cls.__slots__)))
        return result
    raise ValueError(f"bad stored result {(tag, *fields)!r}")


def ints(values: Any, count: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != count or any(type(v) is not int or v < 0 for v in values):
        raise ValueError(f"expected {count} non-negative integers, got {values!r}")
    return values
