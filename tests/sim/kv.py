"""The real key-value state machine in the simulator (issue 4: session expiry is
deterministic across replicas; issue 14: so are leases, lock queues and fences).

In KV mode (`SimConfig.kv`) every node applies its committed entries to a real
`KVStateMachine` with tiny limits, so sessions expire (by log position) and are evicted
(least recently used) all the time. Proposals become encoded KV commands on a few keys
(puts and deletes, with prev_version or prev_revision, and transactions with compares,
puts, delete-ranges and reads; lease grants and revokes, puts attached to leases, lock
acquires and releases, and fenced writes), most in a session, and some are RETRIES: the same
(client, seq) proposed again as a new entry, as a client does after a timeout. Payloads
that are not commands (the liveness phase's) reach the KV machine as NOOPs at their index,
so indexes stay aligned.

The checks (`Checkers.on_kv_apply` / `on_kv_snapshot`): nodes that applied up to the same
index hold the same `fingerprint()` (keys, revision, sessions, leases and lock queues),
snapshots hold it too, and a retried (client, seq) is executed at most once: a later
entry with it returns the stored result or SessionExpired and leaves the revision and
the lease and lock tables alone.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from consensus import Entry, EntryType
from kvstore.state.commands import (
    Command,
    CommandDecodeError,
    Compare,
    Delete,
    Fence,
    LeaseGrant,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Op,
    Put,
    SessionRef,
    Target,
    Txn,
    TxnDeleteRange,
    TxnOp,
    TxnPut,
    TxnRange,
    decode_command,
    encode_command,
)
from kvstore.state.keyrange import KeyRange, RangeQuery
from kvstore.state.machine import KVStateMachine

SESSION_TTL_ENTRIES = 20
MAX_SESSIONS = 3
MAX_RESULTS_PER_SESSION = 4
HISTORY_REVISIONS = 8
"""Tiny, so the history is trimmed all the time (and snapshots carry a trimmed one)."""
KEYS = ("a", "b", "c", "d")
LOCKS = ("L", "M")
MAX_CLIENTS = 5
"""More live clients than MAX_SESSIONS, so LRU eviction happens."""


def new_kv() -> KVStateMachine:
    return KVStateMachine(
        session_ttl_entries=SESSION_TTL_ENTRIES,
        max_sessions=MAX_SESSIONS,
        max_results_per_session=MAX_RESULTS_PER_SESSION,
        history_revisions=HISTORY_REVISIONS,
    )


def as_command(data: bytes) -> Command | None:
    try:
        return decode_command(data)
    except CommandDecodeError:
        return None


def kv_entry(entry: Entry) -> tuple[Entry, Command | None]:
    """The entry the KV machine applies: a non-command NORMAL payload becomes a NOOP."""
    if entry.type is not EntryType.NORMAL:
        return entry, None
    command = as_command(entry.data)
    if command is None:
        return Entry(entry.term, entry.index, b"", EntryType.NOOP), None
    return entry, command


@dataclass
class _Client:
    cid: str
    seq: int = 0
    first: int = 1


class KVWorkload:
    """Client commands for proposals; its own rng, so schedules do not shift."""

    def __init__(self, seed: object) -> None:
        self.rng = random.Random(f"kv-workload-{seed}")
        self.clients: list[_Client] = []
        self.made = 0
        self.values = 0
        self.proposed = 0
        self.grants: deque[int] = deque(maxlen=6)
        self.acquires: deque[int] = deque(maxlen=6)
        self.recent: deque[bytes] = deque(maxlen=6)
        """Recently proposed session commands: the ones a client may retry."""

    def next(self) -> bytes:
        rng = self.rng
        self.proposed += 1
        if self.recent and rng.random() < 0.3:
            return rng.choice(self.recent)  # a retry after a timeout: same (client, seq)
        key = rng.choice(KEYS)
        prev_version = rng.choice((None, None, None, 0, 1, 2))
        prev_revision = rng.choice((None, None, None, 0, 1, 5, 9))
        session = self._session() if rng.random() < 0.8 else None
        command: Command
        roll = rng.random()
        if roll < 0.2:
            command = Txn(
                tuple(self._compare() for _ in range(rng.randint(0, 2))),
                self._branch(),
                self._branch(),
                session,
                self._fence(),
            )
        elif roll < 0.45:
            command = self._coordination(session)
        elif roll < 0.6:
            command = Delete(key, prev_version, session, prev_revision, self._fence())
        else:
            self.values += 1
            value = f"v{self.values}".encode()
            lease = self._id(self.grants) if rng.random() < 0.3 else 0
            command = Put(key, value, prev_version, session, prev_revision, lease, self._fence())
        data = encode_command(command)
        if session is not None:
            self.recent.append(data)
        return data

    def _id(self, landmarks: deque[int]) -> int:
        """A lease id or lock token: both are entry indexes, which this workload cannot
        know, so it guesses near where it proposed a grant or an acquire (an index is
        about its proposal's number, shifted by NOOPs and lost proposals)."""
        rng = self.rng
        if landmarks and rng.random() < 0.8:
            return max(1, rng.choice(landmarks) + rng.choice((0, 0, 0, -1, 1, 2)))
        return rng.randint(max(1, self.proposed - 20), self.proposed + 3)

    def _fence(self) -> Fence | None:
        if self.rng.random() < 0.2:
            return Fence(self.rng.choice(LOCKS), self._id(self.acquires))
        return None

    def _coordination(self, session: SessionRef | None) -> Command:
        """Leases, lock queues and releases (elections are the same queues)."""
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 0:
            self.grants.append(self.proposed)
            return LeaseGrant(rng.randint(1, 30), session)
        if kind == 1:
            return LeaseRevoke(self._id(self.grants), session)
        if kind == 2:
            self.acquires.append(self.proposed)
            value = f"c{self.values}".encode()
            return LockAcquire(rng.choice(LOCKS), self._id(self.grants), value, session)
        return LockRelease(rng.choice(LOCKS), self._id(self.acquires), session)

    def _compare(self) -> Compare:
        rng = self.rng
        key, op = rng.choice(KEYS), rng.choice(list(Op))
        target = rng.choice(list(Target))
        if target is Target.VALUE:
            return Compare(key, target, op, f"v{rng.randint(0, self.values)}".encode())
        if target is Target.EXISTS:
            return Compare(key, target, rng.choice((Op.EQ, Op.NE)), rng.random() < 0.5)
        return Compare(key, target, op, rng.randint(0, 6))

    def _branch(self) -> tuple[TxnOp, ...]:
        """Up to three operations; puts on distinct keys that no delete in it covers."""
        rng = self.rng
        ops: list[TxnOp] = []
        puts = rng.sample(KEYS, rng.randint(0, 2))
        for key in puts:
            self.values += 1
            lease = self._id(self.grants) if rng.random() < 0.2 else 0  # maybe ended
            ops.append(TxnPut(key, f"v{self.values}".encode(), lease))
        keys = KeyRange.single(rng.choice(KEYS)) if rng.random() < 0.5 else KeyRange("b", "d")
        if rng.random() < 0.4:
            ops.append(TxnRange(RangeQuery(keys, limit=rng.randint(0, 2))))
        elif rng.random() < 0.5 and not any(k in keys for k in puts):
            ops.append(TxnDeleteRange(keys))
        rng.shuffle(ops)
        return tuple(ops)

    def _session(self) -> SessionRef:
        rng = self.rng
        if len(self.clients) < MAX_CLIENTS and (not self.clients or rng.random() < 0.2):
            self.clients.append(self._new_client())
        elif rng.random() < 0.04:
            # A client that got SessionExpired starts over with a new id.
            self.clients[rng.randrange(len(self.clients))] = self._new_client()
        client = rng.choice(self.clients)
        client.seq += 1
        client.first = max(client.first, rng.randint(max(1, client.seq - 2), client.seq))
        return SessionRef(client.cid, client.seq, client.first)

    def _new_client(self) -> _Client:
        self.made += 1
        return _Client(f"c{self.made}")
