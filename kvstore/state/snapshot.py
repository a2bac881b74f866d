"""The state machine's snapshot bytes: a view of immutable records, serialized later in
another thread.

Why a view: serializing 100,000 keys takes ~150 ms of CPU; doing it on the event loop
would stall every write for that long. Key records are immutable bytes, so a list of them in key
order is a consistent picture of the keys; sessions are mutable, so they are encoded at
capture time (they are few and small). `capture` takes the keys all at once (O(keys) on
the caller's thread: fine for tests and the simulator); a running node takes them a
slice at a time while applies continue (kvstore.state.snapshot_capture) and swaps them
in with `with_keys`.

Format 4 is a msgpack array `[4, applied_index, revision, keys, sessions, dropped,
members, removed, compact_revision, events, settings]`: format 3 plus the cluster
settings the log set (`[session_ttl_entries, max_sessions, history_revisions]`, or nil
when it set none). Format 3 is format 2 plus the retained change history
(kvstore.state.history). Format 2 (without the history) and format 1 (without the
member directory either) are still read; their history starts empty at their revision.
Format 5 adds `[leases, locks]` (kvstore.state.coordination) at the end; older formats
read as having none. Format 6 adds the auth state `[enabled, key, users, roles]`
(kvstore.state.auth) at the end; older formats read as auth disabled with no users.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from itertools import pairwise
from typing import Any, BinaryIO

import msgpack

from kvstore.state.auth import AuthState
from kvstore.state.coordination import Coordination
from kvstore.state.history import DEFAULT_HISTORY_REVISIONS, History
from kvstore.state.keyspace import KeySpace
from kvstore.state.members import MemberDirectory
from kvstore.state.records import from_wire, wire_fields
from kvstore.state.types import Session, decode_result, encode_result, ints

SNAPSHOT_FORMAT = 6
PACK_BATCH = 2000
_FORMATS = {1: 6, 2: 8, 3: 10, 4: 11, 5: 12, 6: 13}  # format -> array length


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Settings that decide apply results, as the log set them (a SetSettings entry)."""

    session_ttl_entries: int
    max_sessions: int
    history_revisions: int

    def to_wire(self) -> list[int]:
        return [self.session_ttl_entries, self.max_sessions, self.history_revisions]


@dataclass(frozen=True, slots=True)
class SnapshotView:
    """An immutable picture of a state machine; `serialize` may run in any thread."""

    applied_index: int
    revision: int
    keys: Sequence[str]
    """Every key, in key order."""
    records: Sequence[bytes]
    """Their packed records (kvstore.state.records), in the same order."""
    sessions: list[Any]
    dropped: list[tuple[str, int]]
    directory: MemberDirectory
    history: History
    settings: ClusterSettings | None
    coordination: tuple[list[Any], list[Any]]
    auth: list[Any]

    @classmethod
    def capture(
        cls,
        applied_index: int,
        space: KeySpace,
        sessions: OrderedDict[str, Session],
        dropped: OrderedDict[str, int],
        directory: MemberDirectory,
        settings: ClusterSettings | None,
        coordination: Coordination,
        auth: AuthState,
        *,
        with_keys: bool = True,
    ) -> SnapshotView:
        """Everything but the keys is copied now; the keys too unless `with_keys` is
        False (then they come later, through `with_keys`)."""
        encoded = [
            (
                client_id,
                s.floor,
                s.last_used,
                [(seq, *encode_result(s.results[seq])) for seq in sorted(s.results)],
            )
            for client_id, s in sessions.items()
        ]
        return cls(
            applied_index,
            space.revision,
            list(space.keys) if with_keys else [],
            [space.records[k] for k in space.keys] if with_keys else [],
            encoded,
            list(dropped.items()),
            directory.copy(),
            space.history.copy(),
            settings,
            coordination.copy_wire(),
            auth.to_wire(),  # now: users and roles change in place
        )

    def with_keys(self, keys: Sequence[str], records: Sequence[bytes]) -> SnapshotView:
        """This view with `keys` (in key order) and their `records` as its keys."""
        return replace(self, keys=keys, records=records)

    def serialize(self) -> bytes:
        """Everything, in a canonical order, so equal states give equal bytes."""
        out = BytesIO()
        self.write_to(out)
        return out.getvalue()

    def write_to(self, out: BinaryIO) -> int:
        """Write the bytes of `serialize` to `out` a batch at a time; the count written.

        The key array is packed a batch at a time: one `packb` of 100,000 keys holds
        the GIL for ~40 ms, which the event loop (in another thread) would feel as a
        stall; batches of PACK_BATCH keys let it in between. Written as they are packed,
        so a snapshot never exists twice in memory. The bytes are the same as one
        `packb` of the whole array."""
        keys, records = self.keys, self.records
        packer = msgpack.Packer(use_bin_type=True)
        members, removed = self.directory.to_wire()
        compact_revision, events = self.history.to_wire()
        written = out.write(
            packer.pack_array_header(_FORMATS[SNAPSHOT_FORMAT])
            + packer.pack(SNAPSHOT_FORMAT)
            + packer.pack(self.applied_index)
            + packer.pack(self.revision)
            + packer.pack_array_header(len(keys))
        )
        for start in range(0, len(keys), PACK_BATCH):
            end = start + PACK_BATCH
            batch = list(map(wire_fields, keys[start:end], records[start:end]))
            header = len(packer.pack_array_header(len(batch)))
            written += out.write(packer.pack(batch)[header:])
        parts = [packer.pack(v) for v in (self.sessions, self.dropped, members, removed)]
        settings = None if self.settings is None else self.settings.to_wire()
        parts += [packer.pack(compact_revision), packer.pack(events), packer.pack(settings)]
        parts += [packer.pack(self.coordination), packer.pack(self.auth)]
        return written + out.write(b"".join(parts))


ParsedState = tuple[
    int,
    KeySpace,
    OrderedDict[str, Session],
    OrderedDict[str, int],
    MemberDirectory,
    ClusterSettings | None,
    Coordination,
    AuthState,
]


def parse_snapshot(data: bytes) -> ParsedState:
    """Decode and check snapshot bytes; raises ValueError/TypeError/KeyError on garbage.
    Pure, so it may run in a worker thread before the state is swapped in. The history
    gets the default window; the machine that installs the state sets its own."""
    # Read with an Unpacker, a key at a time: one `unpackb` of 100,000 keys holds the
    # GIL for tens of ms, and a joining node's event loop must keep answering the leader.
    # Read from a BytesIO, which shares `data`'s buffer: `feed` would copy all of it.
    unpacker = msgpack.Unpacker(
        BytesIO(data), raw=False, use_list=False, max_buffer_size=max(1, len(data))
    )
    try:
        length = unpacker.read_array_header()
        fmt = unpacker.unpack()
        if type(fmt) is not int or _FORMATS.get(fmt) != length:
            raise ValueError("unknown snapshot format")
        applied_index, revision = ints((unpacker.unpack(), unpacker.unpack()), 2)
        kvs, ordered = _read_keys(unpacker)
        sessions, dropped, *rest = (unpacker.unpack() for _ in range(length - 4))
        _expect_end(unpacker)
    except msgpack.UnpackException as exc:  # OutOfData and friends are not ValueErrors
        raise ValueError(f"bad msgpack: {exc}") from None
    directory = MemberDirectory.from_wire(*rest[:2]) if fmt >= 2 else MemberDirectory()
    if fmt >= 3:
        history = History.from_wire(DEFAULT_HISTORY_REVISIONS, *rest[2:4])
        if history.compact_revision > revision:
            raise ValueError("history compacted beyond the snapshot's revision")
    else:
        history = History(DEFAULT_HISTORY_REVISIONS, revision)
    limits = rest[4] if fmt >= 4 else None
    settings = None if limits is None else ClusterSettings(*ints(limits, 3))
    if settings is not None and min(settings.to_wire()) < 1:
        raise ValueError(f"bad cluster settings {limits!r}")

    parsed: list[tuple[str, Session]] = []
    for client_id, floor, last_used, results in sessions:
        if type(client_id) is not str:
            raise ValueError(f"bad session id {client_id!r}")
        floor, last_used = ints((floor, last_used), 2)
        stored = {seq: decode_result(*fields) for seq, *fields in results}
        ints(stored, len(stored))
        parsed.append((client_id, Session(floor, last_used, stored)))
    # Least recently used first, as apply() keeps them (rule 5's tie break included).
    parsed.sort(key=lambda item: (item[1].last_used, item[0]))
    live = OrderedDict(parsed)
    if len(live) != len(parsed):
        raise ValueError("duplicate session id")

    gone: OrderedDict[str, int] = OrderedDict()
    for client_id, index in dropped:
        if type(client_id) is not str or client_id in gone:
            raise ValueError(f"bad dropped-session record {client_id!r}")
        gone[client_id] = ints((index,), 1)[0]
    if any(a > b for a, b in pairwise(ordered)):
        ordered.sort()  # this version writes keys in order; accept any order all the same
    space = KeySpace(history, revision, kvs, ordered)
    coordination = Coordination.from_wire(*rest[5]) if fmt >= 5 else Coordination()
    auth = AuthState.from_wire(rest[6]) if fmt >= 6 else AuthState()
    return applied_index, space, live, gone, directory, settings, coordination, auth


def _read_keys(unpacker: msgpack.Unpacker) -> tuple[dict[str, bytes], list[str]]:
    records: dict[str, bytes] = {}
    ordered: list[str] = []
    unpack, append = unpacker.unpack, ordered.append
    for _ in range(unpacker.read_array_header()):
        key, record = from_wire(unpack())
        if key in records:
            raise ValueError(f"duplicate key record {key!r}")
        records[key] = record
        append(key)
    return records, ordered


def _expect_end(unpacker: msgpack.Unpacker) -> None:
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        return
    raise ValueError("trailing data after the snapshot")
