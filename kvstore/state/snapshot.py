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

Format 7 (written since issue 17's million keys) stores the keys as chunks instead of one
`[key, value, version, create, mod]` array per key: `keys` is an array of chunks
`[[key, ...], [record, ...]]` of CHUNK_KEYS keys each (the last one shorter, none empty),
keys strictly ascending across all chunks, each record in the key space's own packed
layout (kvstore.state.records: version, create and mod revision as little-endian u64,
then the value). Why: the per-key form needed a Python call per key both ways (a
million calls, ~1 s of GIL per snapshot at a million keys, taken from the event loop by
the serializing thread); a chunk is packed or unpacked by one msgpack call of ~1 ms.
Format 8 is format 7 with each record in the key space's tagged short layout (a tag byte
and three u32 where they fit: 16 B less per key at 256 B values); a format-7 chunk's
records are converted when read (a Python call per key, for a snapshot written before
the upgrade only). Formats 1-7 are still read; a node on older code refuses format 8 as
an unknown format, so every node is upgraded before a snapshot is sent.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from itertools import pairwise
from operator import lt
from typing import Any, BinaryIO

import msgpack

from kvstore.state.auth import AuthState
from kvstore.state.coordination import Coordination
from kvstore.state.history import DEFAULT_HISTORY_REVISIONS, History
from kvstore.state.keyspace import KeySpace
from kvstore.state.members import MemberDirectory
from kvstore.state.records import from_format_7, from_wire, pack_kv, well_formed
from kvstore.state.types import KeyValue, Session, decode_result, encode_result, ints

SNAPSHOT_FORMAT = 8
CHUNK_KEYS = 4096
"""Keys per chunk of formats 7 and 8: packing or unpacking one holds the GIL for ~1 ms."""
_FORMATS = {1: 6, 2: 8, 3: 10, 4: 11, 5: 12, 6: 13, 7: 13, 8: 13}  # format -> array length

Pause = Callable[[], None]
"""Called between chunks by a serializer or parser in a worker thread, to hand the GIL
to the event loop (kvstore.runtime.compaction.yield_gil); a no-op elsewhere."""


def _no_pause() -> None:
    return None


KeyChunk = tuple[tuple[str, ...], tuple[bytes, ...]]
"""Keys in order and their packed records (kvstore.state.records), as tuples: a tuple of
strings and bytes only is untracked by the garbage collector the first time it
survives a collection, so a million captured keys are not walked by every young
collection (lists of them were: 30 ms each at 300,000 keys, measured)."""


def key_chunk(space: KeySpace, lo: int, hi: int) -> KeyChunk:
    """The keys `space.keys[lo:hi]` and their records."""
    keys = tuple(space.keys[lo:hi])
    return keys, tuple(map(space.records.__getitem__, keys))


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
    chunks: Sequence[KeyChunk]
    """Every key with its record, in key order, in chunks of any length (none empty)."""
    sessions: list[Any]
    dropped: list[tuple[str, int]]
    directory: MemberDirectory
    history: History
    settings: ClusterSettings | None
    coordination: tuple[list[Any], list[Any]]
    auth: list[Any]
    fixes: tuple[tuple[str, bytes | None], ...] = ()
    """Corrections to `chunks`, in key order: a key's record at the snapshot's index, or
    None when it was absent then (kvstore.state.snapshot_capture); applied as the keys
    are written, so the corrected lists are never built."""

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
            [key_chunk(space, lo, lo + CHUNK_KEYS) for lo in range(0, len(space), CHUNK_KEYS)]
            if with_keys
            else [],
            encoded,
            list(dropped.items()),
            directory.copy(),
            space.history.copy(),
            settings,
            coordination.copy_wire(),
            auth.to_wire(),  # now: users and roles change in place
        )

    def with_keys(
        self, chunks: Sequence[KeyChunk], corrections: Mapping[str, KeyValue | None]
    ) -> SnapshotView:
        """This view with the keys of `chunks` (in key order), each key in
        `corrections` replaced by its value there (absent when None)."""
        fixes = sorted(
            (key, None if kv is None else pack_kv(kv)) for key, kv in corrections.items()
        )
        return replace(self, chunks=chunks, fixes=tuple(fixes))

    def serialize(self) -> bytes:
        """Everything, in a canonical order, so equal states give equal bytes."""
        out = BytesIO()
        self.write_to(out)
        return out.getvalue()

    def write_to(self, out: BinaryIO, pause: Pause = _no_pause) -> int:
        """Write the bytes of `serialize` to `out` a chunk at a time; the count written.

        Each chunk of CHUNK_KEYS keys is one msgpack call of ~1 ms (no Python code per
        key), written as it is packed (a snapshot never exists twice in memory), and
        `pause` is called after each: the serializing thread and the event loop share
        the GIL, and a thread that takes it back at once makes the loop wait for the
        interpreter's 5 ms switch interval at each of its turns."""
        packer = msgpack.Packer(use_bin_type=True)
        members, removed = self.directory.to_wire()
        compact_revision, events = self.history.to_wire()
        total = self.key_count()
        written = out.write(
            packer.pack_array_header(_FORMATS[SNAPSHOT_FORMAT])
            + packer.pack(SNAPSHOT_FORMAT)
            + packer.pack(self.applied_index)
            + packer.pack(self.revision)
            + packer.pack_array_header(-(-total // CHUNK_KEYS))
        )
        for keys, records in _rechunk(self._merged_pieces(), CHUNK_KEYS):
            chunk = packer.pack_array_header(2) + packer.pack(keys) + packer.pack(records)
            written += out.write(chunk)
            pause()
        parts = [packer.pack(v) for v in (self.sessions, self.dropped, members, removed)]
        settings = None if self.settings is None else self.settings.to_wire()
        parts += [packer.pack(compact_revision), packer.pack(events), packer.pack(settings)]
        parts += [packer.pack(self.coordination), packer.pack(self.auth)]
        return written + out.write(b"".join(parts))

    def key_count(self) -> int:
        """How many keys the snapshot holds: O(chunks + fixes log keys)."""
        chunks = self.chunks
        firsts = [keys[0] for keys, _ in chunks]
        total = sum(len(keys) for keys, _ in chunks)
        for key, record in self.fixes:
            total += record is not None
            i = bisect_right(firsts, key) - 1
            if i >= 0:
                keys = chunks[i][0]
                at = bisect_left(keys, key)
                total -= at < len(keys) and keys[at] == key
        return total

    def _merged_pieces(self) -> Iterator[tuple[Sequence[str], Sequence[bytes]]]:
        """The keys with the fixes applied, in key order, in pieces no longer than the
        chunks: each fix is applied in the chunk before whose successor it sorts."""
        chunks, fixes = self.chunks, self.fixes
        fix_keys = [key for key, _ in fixes]
        done = 0
        for i, (keys, records) in enumerate(chunks):
            last = i + 1 == len(chunks)
            upto = len(fixes) if last else bisect_left(fix_keys, chunks[i + 1][0][0], done)
            yield from _fixed(keys, records, fixes[done:upto])
            done = upto
        if not chunks:
            yield from _fixed((), (), fixes)


def _fixed(
    keys: Sequence[str], records: Sequence[bytes], fixes: Sequence[tuple[str, bytes | None]]
) -> Iterator[tuple[Sequence[str], Sequence[bytes]]]:
    """`keys` and `records` with `fixes` (in key order) applied, in pieces."""
    done = 0
    for key, record in fixes:
        at = bisect_left(keys, key, done)
        yield keys[done:at], records[done:at]
        done = at + 1 if at < len(keys) and keys[at] == key else at
        if record is not None:
            yield (key,), (record,)
    yield keys[done:], records[done:]


def _rechunk(
    pieces: Iterator[tuple[Sequence[str], Sequence[bytes]]], size: int
) -> Iterator[tuple[list[str], list[bytes]]]:
    """The pieces regrouped into chunks of exactly `size` keys (the last one shorter),
    so the bytes depend on the keys alone, not on where the corrections fell."""
    keys: list[str] = []
    records: list[bytes] = []
    for piece_keys, piece_records in pieces:
        keys += piece_keys
        records += piece_records
        while len(keys) >= size:
            yield keys[:size], records[:size]
            del keys[:size], records[:size]
    if keys:
        yield keys, records


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


def parse_snapshot(data: bytes, pause: Pause = _no_pause) -> ParsedState:
    """Decode and check snapshot bytes; raises ValueError/TypeError/KeyError on garbage.
    Pure, so it may run in a worker thread before the state is swapped in (`pause`
    between chunks of keys, as in `SnapshotView.write_to`). The history gets the default
    window; the machine that installs the state sets its own."""
    # Read with an Unpacker, a key (formats 1-6) or a chunk (7) at a time: one `unpackb`
    # of 100,000 keys holds the GIL for tens of ms, and a joining node's event loop must
    # keep answering the leader.
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
        kvs, ordered = _read_chunks(unpacker, pause, fmt) if fmt >= 7 else _read_keys(unpacker)
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


def _read_chunks(
    unpacker: msgpack.Unpacker, pause: Pause, fmt: int
) -> tuple[dict[str, bytes], list[str]]:
    """The keys of format 8 (each chunk checked and added with C-level calls only) or 7
    (its records converted to the short layout)."""
    records: dict[str, bytes] = {}
    ordered: list[str] = []
    for _ in range(unpacker.read_array_header()):
        chunk = unpacker.unpack()
        if type(chunk) is not tuple or len(chunk) != 2:
            raise ValueError("bad key chunk")
        keys, values = chunk
        if (
            type(keys) is not tuple
            or type(values) is not tuple
            or not keys
            or len(keys) != len(values)
            or set(map(type, keys)) != {str}
            or set(map(type, values)) != {bytes}
        ):
            raise ValueError("bad key chunk")
        if fmt == 7:
            values = tuple(map(from_format_7, values))
        elif not well_formed(values):
            raise ValueError("bad key chunk")
        if (ordered and keys[0] <= ordered[-1]) or not all(map(lt, keys, keys[1:])):
            raise ValueError("key chunks out of order or repeating a key")
        records.update(zip(keys, values, strict=True))
        ordered += keys
        pause()
    return records, ordered


def _expect_end(unpacker: msgpack.Unpacker) -> None:
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        return
    raise ValueError("trailing data after the snapshot")
