"""The key-value state machine that every replica applies the committed log to.

It must be a pure function of the log: no I/O, no clock, no randomness, no iteration
over anything whose order could differ between replicas. Replicas that applied the same
entries therefore hold the same keys, revision and sessions, and `snapshot()` yields the
same bytes on each (the simulator and the tests compare replicas through that).

Exactly-once writes (Raft dissertation §6.3). A command may carry a
`SessionRef(client_id, seq, first_outstanding)`. Per client id the machine keeps a
session: the results of that client's requests with seq >= a floor, the floor being the
highest `first_outstanding` the client has sent (it has seen every answer below it).
The rules, applied in this order:

1. Idle sessions expire by log position, not time: a session last used at index `u` is
   dropped when an entry with index > u + session_ttl_entries is applied (any entry,
   NOOPs included), before that entry's command runs.
2. A request for a client id with no live session opens one only if its
   first_outstanding is 1 (the client has had no answer yet, so a concurrent client
   may send seq 1..n at once, in any order) and the id is not in the record of dropped
   sessions. Anything else answers `SessionExpiredResult()` and is not applied: a
   client that has had answers the machine no longer remembers lost its session, and
   applying could execute one of its requests twice. A client that gets
   SessionExpired must treat the outcome of that request as unknown and start over
   with a new client id.
3. In a live session the floor rises to the request's `first_outstanding` and results
   below it are forgotten. A seq below the floor answers SessionExpired (its answer
   was already delivered and forgotten; this is a stale duplicate). A seq with a stored
   result returns that result (even a failed compare-and-set) without applying. Any
   other seq is applied and its result stored. Requests of one session may apply out of
   order; each seq still applies at most once.
4. At most `max_results_per_session` results are stored per session; storing one more
   drops the lowest seq and raises the floor above it, so a late retry of it answers
   SessionExpired instead of being applied again.
5. At most `max_sessions` sessions live; opening one more drops the least recently used
   (lowest last-used index, ties by client id).

Every dropped session leaves its client id in a record of the last `max_sessions`
dropped ids, so that rule 2 catches a retry of seq 1 from a dropped session. The record
is bounded, so one residual case remains: seq 1 applied, its answer lost, the session
and then its record entry dropped (after at least session_ttl_entries entries or
max_sessions other sessions), and only then the retry. Clients retry within seconds, so
this needs a client to stall for that long; accept it or use a new client id per run.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgpack

from consensus.types import Entry, EntryType
from kvstore.commands import Command, Put, decode_command

DEFAULT_SESSION_TTL_ENTRIES = 1_000_000
DEFAULT_MAX_SESSIONS = 10_000
DEFAULT_MAX_RESULTS_PER_SESSION = 4096

_SNAPSHOT_FORMAT = 1


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    version: int
    """Writes to the key since it was (re)created: 1 after the first put."""
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: int
    version: int


@dataclass(frozen=True, slots=True)
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
class SessionExpiredResult:
    """The request was not applied now, and whether it was applied before is unknown."""


ApplyResult: TypeAlias = (
    PutResult | DeleteResult | NotFoundResult | VersionMismatchResult | SessionExpiredResult
)

_NOT_FOUND = NotFoundResult()
_SESSION_EXPIRED = SessionExpiredResult()


class ApplyOrderError(RuntimeError):
    """An entry arrived out of order: a bug in the driver, never a client's fault."""


class SnapshotError(ValueError):
    """Bytes given to restore() are not a snapshot this version wrote."""


class _Session:
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


class KVStateMachine:
    """Keys, the cluster-wide revision, and exactly-once sessions; see the module docstring."""

    def __init__(
        self,
        session_ttl_entries: int = DEFAULT_SESSION_TTL_ENTRIES,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_results_per_session: int = DEFAULT_MAX_RESULTS_PER_SESSION,
    ) -> None:
        for name, value in (
            ("session_ttl_entries", session_ttl_entries),
            ("max_sessions", max_sessions),
            ("max_results_per_session", max_results_per_session),
        ):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self._ttl = session_ttl_entries
        self._max_sessions = max_sessions
        self._max_results = max_results_per_session
        self._data: dict[str, KeyValue] = {}
        self._revision = 0
        self._applied_index = 0
        # Both kept in drop/use order so the oldest is first; see rules 1 and 5.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._dropped: OrderedDict[str, int] = OrderedDict()

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> KeyValue | None:
        return self._data.get(key)

    def has_session(self, client_id: str) -> bool:
        return client_id in self._sessions

    def apply(self, entry: Entry) -> ApplyResult | None:
        """Apply the next committed entry; None for a NOOP or a membership change.

        Raises ApplyOrderError unless entry.index == applied_index + 1, and
        CommandDecodeError for undecodable data; both leave the state untouched. A
        committed entry that cannot be decoded means version skew or corruption, and
        every replica fails on it alike, so stopping is safer than skipping it (skipping
        would let replicas that can decode it diverge).
        """
        index = entry.index
        if index != self._applied_index + 1:
            raise ApplyOrderError(
                f"entry index {index} applied after {self._applied_index}; "
                f"expected {self._applied_index + 1}"
            )
        command = decode_command(entry.data) if entry.type == EntryType.NORMAL else None
        self._applied_index = index
        self._expire_idle_sessions(index)
        if command is None:
            return None
        if command.session is None:
            return self._execute(command)
        return self._apply_in_session(command, index)

    def _expire_idle_sessions(self, index: int) -> None:
        sessions = self._sessions
        while sessions:
            client_id, session = next(iter(sessions.items()))
            if index - session.last_used <= self._ttl:
                return
            del sessions[client_id]
            self._record_dropped(client_id, index)

    def _record_dropped(self, client_id: str, index: int) -> None:
        self._dropped.pop(client_id, None)
        self._dropped[client_id] = index
        while len(self._dropped) > self._max_sessions:
            self._dropped.popitem(last=False)

    def _apply_in_session(self, command: Command, index: int) -> ApplyResult:
        ref = command.session
        assert ref is not None
        session = self._sessions.get(ref.client_id)
        if session is None:
            if ref.first_outstanding != 1 or ref.client_id in self._dropped:
                return _SESSION_EXPIRED
            session = self._open_session(ref.client_id, index)
        else:
            session.last_used = index
            self._sessions.move_to_end(ref.client_id)
            if ref.first_outstanding > session.floor:
                session.forget_below(ref.first_outstanding)
            if ref.seq < session.floor:
                return _SESSION_EXPIRED
            stored = session.results.get(ref.seq)
            if stored is not None:
                return stored
        result = self._execute(command)
        session.remember(ref.seq, result, self._max_results)
        return result

    def _open_session(self, client_id: str, index: int) -> _Session:
        session = _Session(floor=1, last_used=index, results={})
        self._sessions[client_id] = session
        while len(self._sessions) > self._max_sessions:
            oldest, _ = self._sessions.popitem(last=False)
            self._record_dropped(oldest, index)
        return session

    def _execute(self, command: Command) -> ApplyResult:
        current = self._data.get(command.key)
        current_version = 0 if current is None else current.version
        if type(command) is Put:
            if command.prev_version is not None and command.prev_version != current_version:
                return VersionMismatchResult(current_version)
            self._revision = revision = self._revision + 1
            if current is None:
                kv = KeyValue(command.key, command.value, 1, revision, revision)
            else:
                kv = KeyValue(
                    command.key,
                    command.value,
                    current.version + 1,
                    current.create_revision,
                    revision,
                )
            self._data[command.key] = kv
            return PutResult(revision, kv.version)
        # Delete: a missing key is NotFound whatever prev_version says.
        if current is None:
            return _NOT_FOUND
        if command.prev_version is not None and command.prev_version != current_version:
            return VersionMismatchResult(current_version)
        del self._data[command.key]
        self._revision += 1
        return DeleteResult(self._revision)

    def snapshot(self) -> bytes:
        """Everything, in a canonical order, so equal states give equal bytes."""
        data = self._data
        keys = [
            (kv.key, kv.value, kv.version, kv.create_revision, kv.mod_revision)
            for kv in (data[k] for k in sorted(data))
        ]
        sessions = [
            (
                client_id,
                s.floor,
                s.last_used,
                [(seq, *_encode_result(s.results[seq])) for seq in sorted(s.results)],
            )
            for client_id, s in self._sessions.items()
        ]
        dropped = list(self._dropped.items())
        state = (_SNAPSHOT_FORMAT, self._applied_index, self._revision, keys, sessions, dropped)
        return msgpack.packb(state, use_bin_type=True)

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a snapshot's; on SnapshotError nothing changes.

        The limits (ttl, max sessions) stay this machine's own; they are re-applied as
        entries arrive, so a snapshot from a differently configured node still works.
        """
        try:
            state = _parse_snapshot(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise SnapshotError(f"not a valid state machine snapshot: {exc}") from None
        (
            self._applied_index,
            self._revision,
            self._data,
            self._sessions,
            self._dropped,
        ) = state

    def fingerprint(self) -> str:
        """A digest of snapshot(): equal for replicas in the same state. Costs a snapshot."""
        return hashlib.sha256(self.snapshot()).hexdigest()


_RESULT_PUT, _RESULT_DELETE, _RESULT_NOT_FOUND, _RESULT_MISMATCH = range(4)


def _encode_result(result: ApplyResult) -> tuple[int, ...]:
    if type(result) is PutResult:
        return (_RESULT_PUT, result.revision, result.version)
    if type(result) is DeleteResult:
        return (_RESULT_DELETE, result.revision)
    if type(result) is NotFoundResult:
        return (_RESULT_NOT_FOUND,)
    if type(result) is VersionMismatchResult:
        return (_RESULT_MISMATCH, result.current_version)
    raise TypeError(f"cannot store result {result!r}")  # SessionExpired is never stored


def _decode_result(tag: int, *fields: int) -> ApplyResult:
    if tag == _RESULT_PUT:
        return PutResult(*_ints(fields, 2))
    if tag == _RESULT_DELETE:
        return DeleteResult(*_ints(fields, 1))
    if tag == _RESULT_NOT_FOUND and not fields:
        return _NOT_FOUND
    if tag == _RESULT_MISMATCH:
        return VersionMismatchResult(*_ints(fields, 1))
    raise ValueError(f"bad stored result {(tag, *fields)!r}")


def _ints(values: Any, count: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != count or any(type(v) is not int or v < 0 for v in values):
        raise ValueError(f"expected {count} non-negative integers, got {values!r}")
    return values


def _parse_snapshot(
    data: bytes,
) -> tuple[int, int, dict[str, KeyValue], OrderedDict[str, _Session], OrderedDict[str, int]]:
    try:
        state = msgpack.unpackb(data, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises many types for bad input
        raise ValueError(f"bad msgpack: {exc}") from None
    if type(state) is not tuple or len(state) != 6 or state[0] != _SNAPSHOT_FORMAT:
        raise ValueError("unknown snapshot format")
    _, applied_index, revision, keys, sessions, dropped = state
    applied_index, revision = _ints((applied_index, revision), 2)

    kvs: dict[str, KeyValue] = {}
    for key, value, *numbers in keys:
        if type(key) is not str or type(value) is not bytes or key in kvs:
            raise ValueError(f"bad key record for {key!r}")
        kvs[key] = KeyValue(key, value, *_ints(numbers, 3))

    parsed: list[tuple[str, _Session]] = []
    for client_id, floor, last_used, results in sessions:
        if type(client_id) is not str:
            raise ValueError(f"bad session id {client_id!r}")
        floor, last_used = _ints((floor, last_used), 2)
        stored = {seq: _decode_result(*fields) for seq, *fields in results}
        _ints(stored, len(stored))
        parsed.append((client_id, _Session(floor, last_used, stored)))
    # Least recently used first, as apply() keeps them (rule 5's tie break included).
    parsed.sort(key=lambda item: (item[1].last_used, item[0]))
    live = OrderedDict(parsed)
    if len(live) != len(parsed):
        raise ValueError("duplicate session id")

    gone: OrderedDict[str, int] = OrderedDict()
    for client_id, index in dropped:
        if type(client_id) is not str or client_id in gone:
            raise ValueError(f"bad dropped-session record {client_id!r}")
        gone[client_id] = _ints((index,), 1)[0]
    return applied_index, revision, kvs, live, gone
