"""The key-value state machine that every replica applies the committed log to.

It must be a pure function of the log: no I/O, no clock, no randomness, no iteration
over anything whose order could differ between replicas. Replicas that applied the same
entries therefore hold the same keys, revision and sessions, and `snapshot()` yields the
same bytes on each (the simulator and the tests compare replicas through that).

The keys live in a KeySpace (kvstore.state.keyspace: keys in byte order, the revision,
and the history of recent changes, kvstore.state.history); range reads are in
kvstore.state.range and transactions in kvstore.state.txn. Compare-and-set comes in two
kinds: `prev_revision` (the key's mod_revision, 0 = must not exist) is safe against a
delete and re-create in between (ABA); `prev_version` is kept for compatibility and is
not (a re-created key restarts at version 1).

Membership changes (CONF_CHANGE entries) feed the member directory
(`kvstore.members`): the addresses of added members and the ids of removed ones, so
that every replica, and every snapshot, agrees on where the members are.

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
is bounded, so one residual case remains: a request sent before the client had any
answer (first_outstanding 1: seq 1, or a later seq sent with it) applied, its answer
lost, the session and then its record entry dropped (after at least
session_ttl_entries entries or max_sessions other sessions), and only then the retry.
Clients retry within seconds, so this needs a client to stall for that long; accept it
or use a new client id per run.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from consensus.types import Entry, EntryType
from kvstore.state import txn as txn_executor
from kvstore.state.auth import AuthState
from kvstore.state.auth_check import refuse
from kvstore.state.auth_commands import AUTH_COMMANDS, apply_auth
from kvstore.state.commands import (
    AsUser,
    Command,
    Delete,
    Put,
    SetSettings,
    Txn,
    decode_command,
)
from kvstore.state.coordination import Coordination
from kvstore.state.history import DEFAULT_HISTORY_REVISIONS, History
from kvstore.state.keyrange import RangeQuery
from kvstore.state.keyspace import KeySpace
from kvstore.state.members import MemberAddress, MemberDirectory
from kvstore.state.range import run_range
from kvstore.state.snapshot import (
    ClusterSettings,
    ParsedState,
    Pause,
    SnapshotView,
    parse_snapshot,
)
from kvstore.state.snapshot_capture import SLICE_KEYS, KeyCapture
from kvstore.state.types import (
    NOT_FOUND,
    SESSION_EXPIRED,
    ApplyResult,
    DeleteResult,
    KeyValue,
    NotFoundResult,
    PutResult,
    RangeResult,
    RevisionMismatchResult,
    Session,
    SessionExpiredResult,
    TxnResult,
    VersionMismatchResult,
)

__all__ = [
    "DEFAULT_HISTORY_REVISIONS",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_SESSION_TTL_ENTRIES",
    "ApplyOrderError",
    "ApplyResult",
    "DeleteResult",
    "KVStateMachine",
    "KeyValue",
    "NotFoundResult",
    "PutResult",
    "RangeResult",
    "RevisionMismatchResult",
    "SessionExpiredResult",
    "SnapshotError",
    "TxnResult",
    "VersionMismatchResult",
]

DEFAULT_SESSION_TTL_ENTRIES = 1_000_000
DEFAULT_MAX_SESSIONS = 10_000
DEFAULT_MAX_RESULTS_PER_SESSION = 4096


class ApplyOrderError(RuntimeError):
    """An entry arrived out of order: a bug in the driver, never a client's fault."""


class SnapshotError(ValueError):
    """Bytes given to restore() are not a snapshot this version wrote."""


class KVStateMachine:
    """Keys, the cluster-wide revision, and exactly-once sessions; see the module docstring."""

    def __init__(
        self,
        session_ttl_entries: int = DEFAULT_SESSION_TTL_ENTRIES,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_results_per_session: int = DEFAULT_MAX_RESULTS_PER_SESSION,
        history_revisions: int = DEFAULT_HISTORY_REVISIONS,
    ) -> None:
        """The limits given here hold only until the log carries a SetSettings entry;
        a replica of a real cluster takes the defaults (the same code constants on every
        node), never a node's own file. Tests and the simulator pass others."""
        for name, value in (
            ("session_ttl_entries", session_ttl_entries),
            ("max_sessions", max_sessions),
            ("max_results_per_session", max_results_per_session),
            ("history_revisions", history_revisions),
        ):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self._ttl = session_ttl_entries
        self._max_sessions = max_sessions
        self._max_results = max_results_per_session
        self._history_revisions = history_revisions
        self._initial_limits = ClusterSettings(session_ttl_entries, max_sessions, history_revisions)
        self._settings: ClusterSettings | None = None
        self._space = KeySpace(History(history_revisions))
        self._applied_index = 0
        # Both kept in drop/use order so the oldest is first; see rules 1 and 5.
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._dropped: OrderedDict[str, int] = OrderedDict()
        self._directory = MemberDirectory()
        self._coordination = Coordination()
        self._auth = AuthState()

    @property
    def auth(self) -> AuthState:
        """Users, roles, the enabled flag (read them; only apply() changes them)."""
        return self._auth

    @property
    def coordination(self) -> Coordination:
        """Leases, locks and elections (read them; only apply() changes them)."""
        return self._coordination

    @property
    def revision(self) -> int:
        return self._space.revision

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def __len__(self) -> int:
        return len(self._space)

    def get(self, key: str) -> KeyValue | None:
        return self._space.get(key)

    def range(self, query: RangeQuery) -> RangeResult:
        """A range read (kvstore.state.range); raises Compacted / FutureRevision."""
        return run_range(self._space, query)

    def read_txn(self, txn: Txn) -> TxnResult:
        """A transaction without writes, served without the log (after a ReadIndex when
        it must be linearizable): running it changes nothing."""
        if txn.writes:
            raise ValueError("a transaction that writes must go through the log")
        return txn_executor.execute(self._space, txn)

    @property
    def history(self) -> History:
        """The retained change events (kvstore.state.history), e.g. for watches."""
        return self._space.history

    @property
    def settings(self) -> ClusterSettings | None:
        """The cluster settings the log set (None: none yet, the defaults apply)."""
        return self._settings

    def has_session(self, client_id: str) -> bool:
        return client_id in self._sessions

    @property
    def member_addresses(self) -> Mapping[str, MemberAddress]:
        """Addresses of the members added through the log (founders' are in cluster.toml)."""
        return self._directory.addresses

    @property
    def removed_members(self) -> frozenset[str]:
        """Ids removed through the log and not added again since."""
        return frozenset(self._directory.removed)

    def reset_members(self) -> None:
        """Forget the member directory: only for seeding a NEW cluster from a backup
        (`kv snapshot restore`), whose members are the new cluster.toml's nodes."""
        self._directory = MemberDirectory()

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
        if entry.type == EntryType.CONF_CHANGE:
            self._directory.apply(entry.data)
        self._applied_index = index
        self._expire_idle_sessions(index)
        if command is None:
            return None
        user = None
        if type(command) is AsUser:
            user, command = command.user, command.command
        if type(command) is SetSettings:
            if not (command.only_if_unset and self._settings is not None):
                limits = (command.session_ttl_entries, command.max_sessions)
                self._use(ClusterSettings(*limits, command.history_revisions))
            return None
        if command.session is None:
            return self._execute(command, index, user)
        return self._apply_in_session(command, index, user)

    def _use(self, settings: ClusterSettings | None) -> None:
        """Put the log's settings (None: the initial limits) in force, alike everywhere."""
        self._settings = settings
        limits = settings or self._initial_limits
        self._ttl, self._max_sessions = limits.session_ttl_entries, limits.max_sessions
        self._history_revisions = limits.history_revisions
        self._space.history.window = limits.history_revisions
        self._space.history.trim(self._space.revision)

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

    def _apply_in_session(self, command: Command, index: int, user: str | None) -> ApplyResult:
        ref = command.session
        assert ref is not None
        session = self._sessions.get(ref.client_id)
        if session is None:
            if ref.first_outstanding != 1 or ref.client_id in self._dropped:
                return SESSION_EXPIRED
            session = self._open_session(ref.client_id, index)
        else:
            session.last_used = index
            self._sessions.move_to_end(ref.client_id)
            if ref.first_outstanding > session.floor:
                session.forget_below(ref.first_outstanding)
            if ref.seq < session.floor:
                return SESSION_EXPIRED
            stored = session.results.get(ref.seq)
            if stored is not None:
                return stored
        result = self._execute(command, index, user)
        session.remember(ref.seq, result, self._max_results)
        return result

    def _open_session(self, client_id: str, index: int) -> Session:
        session = Session(floor=1, last_used=index, results={})
        self._sessions[client_id] = session
        while len(self._sessions) > self._max_sessions:
            oldest, _ = self._sessions.popitem(last=False)
            self._record_dropped(oldest, index)
        return session

    def _execute(self, command: Command, index: int, user: str | None) -> ApplyResult:
        """Run a command; one proposed for a user who may not run it (by the auth
        state at this log position) answers permission_denied and changes nothing."""
        coordination = self._coordination
        if user is not None and self._auth.enabled:
            refused = refuse(self._auth, user, command, self._lease_keys)
            if refused is not None:
                return refused
        if type(command) in AUTH_COMMANDS:
            return apply_auth(self._auth, command, index)  # type: ignore[arg-type]
        if type(command) is not Put and type(command) is not Delete and type(command) is not Txn:
            return coordination.execute(command, index, self._delete_keys)
        refused = coordination.refuse_write(command)
        if refused is not None:
            return refused
        before = self._space.revision
        result = self._write(command)
        if self._space.revision != before:
            # A put or delete that wrote touched its own key alone: no search of the
            # history for it (a bisect per write); a transaction's keys are its events.
            if type(command) is Txn:
                events = self._space.history.events_since(before)
                coordination.written_txn(command, result, (event.kv.key for event in events))
            else:
                coordination.written_key(command)
        return result

    def _lease_keys(self, lease_id: int) -> list[str]:
        """A lease's keys in order (the order decides which key a refusal names)."""
        found = self._coordination.leases.get(lease_id)
        return [] if found is None else sorted(found.keys)

    def _delete_keys(self, keys: Sequence[str]) -> tuple[int, int]:
        """Delete `keys` (a lease's) in one revision; returns (revision, how many existed)."""
        space = self._space
        revision = space.revision + 1
        deleted = sum(space.delete(key, revision) for key in keys)
        if deleted:
            space.commit(revision)
        return space.revision, deleted

    def _write(self, command: Put | Delete | Txn) -> ApplyResult:
        if type(command) is Txn:
            return txn_executor.execute(self._space, command)
        space = self._space
        current = space.get(command.key)
        if type(command) is Delete and current is None:
            return NOT_FOUND  # a missing key is NotFound whatever the preconditions say
        if command.prev_version is not None or command.prev_revision is not None:
            mismatch = _precondition_failure(command, current)
            if mismatch is not None:
                return mismatch
        revision = space.revision + 1
        if type(command) is Put:
            kv = space.put_over(command.key, command.value, revision, current)
            space.commit(revision)
            return PutResult(revision, kv.version)
        space.delete(command.key, revision)
        space.commit(revision)
        return DeleteResult(revision)

    def snapshot(self) -> bytes:
        """Everything, in a canonical order, so equal states give equal bytes."""
        return self.snapshot_view().serialize()

    def begin_snapshot(self, slice_keys: int = SLICE_KEYS) -> tuple[SnapshotView, KeyCapture]:
        """The state now without its keys, and a KeyCapture that reads the keys as they
        are now a slice at a time while applies go on (kvstore.runtime.compaction)."""
        capture = KeyCapture(self._space, lambda: self._space, slice_keys)
        return self.snapshot_view(with_keys=False), capture

    def snapshot_view(self, *, with_keys: bool = True) -> SnapshotView:
        """A consistent picture of the state now (O(keys) pointer copies);
        `.serialize()` gives the snapshot bytes and may run in another thread."""
        return SnapshotView.capture(
            self._applied_index,
            self._space,
            self._sessions,
            self._dropped,
            self._directory,
            self._settings,
            self._coordination,
            self._auth,
            with_keys=with_keys,
        )

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a snapshot's; on SnapshotError nothing changes.

        The cluster settings travel in the snapshot (format 4); a snapshot without
        them (older formats, or a log that never set any) keeps the initial limits.
        """
        self.install(self.parse(data))

    @staticmethod
    def parse(data: bytes, pause: Pause | None = None) -> ParsedState:
        """Decode snapshot bytes without touching any machine (safe in a worker thread,
        so a large snapshot does not stall the event loop: `pause` between chunks, as
        kvstore.state.snapshot says); raises SnapshotError."""
        try:
            return parse_snapshot(data) if pause is None else parse_snapshot(data, pause)
        except (ValueError, TypeError, KeyError) as exc:
            raise SnapshotError(f"not a valid state machine snapshot: {exc}") from None

    def install(self, state: ParsedState) -> None:
        """Swap in a state made by `parse` (one step, on the thread that applies)."""
        (
            self._applied_index,
            self._space,
            self._sessions,
            self._dropped,
            self._directory,
            settings,
            self._coordination,
            self._auth,
        ) = state
        self._use(settings)

    def fingerprint(self) -> str:
        """A digest of snapshot(): equal for replicas in the same state. Costs a snapshot."""
        return hashlib.sha256(self.snapshot()).hexdigest()


def _precondition_failure(
    command: Put | Delete, current: KeyValue | None
) -> VersionMismatchResult | RevisionMismatchResult | None:
    """The answer of a failed compare-and-set, None when the preconditions hold."""
    version = 0 if current is None else current.version
    if command.prev_version is not None and command.prev_version != version:
        return VersionMismatchResult(version)
    mod_revision = 0 if current is None else current.mod_revision
    if command.prev_revision is not None and command.prev_revision != mod_revision:
        return RevisionMismatchResult(mod_revision)
    return None
