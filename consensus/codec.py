"""Wire and disk encoding of messages, entries and hard state (msgpack).

Every value is a msgpack array of positional fields; a message starts with a small
integer tag naming its type. Field names never travel, so a heartbeat is a dozen
bytes. Entries inside an AppendEntries travel as three columns (terms, types, data)
without their indices, which follow from `prev_log_index`: that keeps the hot path
to a few list comprehensions and one `pack` call (a reused Packer: consensus/packing.py).

Decoding is the trust boundary (bytes from a peer or from disk), so it checks every
field's type and count and turns any failure into `CodecError`. Encoding trusts the
core's typed dataclasses and checks only what the compact layout relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from operator import itemgetter
from typing import Any

from msgpack import unpackb as _unpackb

from consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    LeaderDurable,
    Message,
    ProposeRequest,
    ProposeResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from consensus.packing import pack, pack_each
from consensus.types import Entry, EntryType, HardState, Membership, SnapshotMeta
from consensus.wire_checks import (
    BOOL,
    OPT_STR,
    STR,
    UINT,
    CodecError,
    Kind,
    check_fields,
    describe,
    unpack,
)

__all__ = [
    "CodecError",
    "decode_entry",
    "decode_hard_state",
    "decode_messages",
    "decode_snapshot_meta",
    "encode_entry",
    "encode_hard_state",
    "encode_messages",
    "encode_snapshot_meta",
]


# Tags are part of the wire format: never renumber, only append.
_TAG_REQUEST_VOTE = 0
_TAG_REQUEST_VOTE_RESPONSE = 1
_TAG_APPEND_ENTRIES = 2
_TAG_APPEND_ENTRIES_RESPONSE = 3
_TAG_TIMEOUT_NOW = 4
_TAG_INSTALL_SNAPSHOT = 5
_TAG_READ_INDEX_REQUEST = 6
_TAG_READ_INDEX_RESPONSE = 7
_TAG_PROPOSE_REQUEST = 8
_TAG_PROPOSE_RESPONSE = 9
_TAG_COMMIT_ONLY = 10
"""A `commit_only` AppendEntries (no entries, prev == commit) in six fields. Older nodes refuse
the tag (400): they get a plain append (`encode_messages(..., commit_only=False)`) instead."""
_TAG_LEADER_DURABLE = 11

_ENTRY_TYPES: dict[int, EntryType] = {int(t): t for t in EntryType}


# --------------------------------------------------------------------------- encoding


def _encode_request_vote(m: RequestVote) -> list[Any]:
    return [
        _TAG_REQUEST_VOTE,
        m.term,
        m.sender,
        m.recipient,
        m.last_log_index,
        m.last_log_term,
        m.pre_vote,
        m.transfer,
    ]


def _encode_request_vote_response(m: RequestVoteResponse) -> list[Any]:
    return [_TAG_REQUEST_VOTE_RESPONSE, m.term, m.sender, m.recipient, m.granted, m.pre_vote]


def _encode_append_entries(m: AppendEntries) -> list[Any]:
    if not m.commit_only:
        return _encode_plain_append(m)
    if m.entries or m.prev_log_index != m.leader_commit:
        raise CodecError("a commit_only AppendEntries has no entries and prev == commit")
    index, index_term = m.prev_log_index, m.prev_log_term
    return [_TAG_COMMIT_ONLY, m.term, m.sender, m.recipient, index, index_term, m.read_seq]


def _encode_plain_append(m: AppendEntries) -> list[Any]:
    """Any append as tag 2 (a commit_only one then loses its flag: it gets answered)."""
    entries = m.entries
    if entries:
        _check_contiguous(entries, m.prev_log_index + 1)
    return [
        _TAG_APPEND_ENTRIES,
        m.term,
        m.sender,
        m.recipient,
        m.prev_log_index,
        m.prev_log_term,
        m.leader_commit,
        m.read_seq,
        [e.term for e in entries],
        [e.type for e in entries],
        [e.data for e in entries],
    ]


def _check_contiguous(entries: Sequence[Entry], first: int) -> None:
    """Indices are left off the wire, so they must be exactly first, first + 1, ..."""
    for offset, entry in enumerate(entries):
        if entry.index != first + offset:
            raise CodecError(
                f"AppendEntries entry {offset} has index {entry.index}, expected "
                f"{first + offset} (entries must follow prev_log_index without gaps)"
            )


def _encode_append_entries_response(m: AppendEntriesResponse) -> list[Any]:
    return [
        _TAG_APPEND_ENTRIES_RESPONSE,
        m.term,
        m.sender,
        m.recipient,
        m.success,
        m.match_index,
        m.conflict_term,
        m.conflict_index,
        m.read_seq,
    ]


def _encode_timeout_now(m: TimeoutNow) -> list[Any]:
    return [_TAG_TIMEOUT_NOW, m.term, m.sender, m.recipient]


def _snapshot_fields(meta: SnapshotMeta) -> list[Any]:
    membership = meta.membership
    return [meta.index, meta.term, list(membership.voters), list(membership.learners)]


def _encode_install_snapshot(m: InstallSnapshot) -> list[Any]:
    return [_TAG_INSTALL_SNAPSHOT, m.term, m.sender, m.recipient, *_snapshot_fields(m.snapshot)]


def _encode_read_index_request(m: ReadIndexRequest) -> list[Any]:
    return [_TAG_READ_INDEX_REQUEST, m.term, m.sender, m.recipient, list(m.request_ids)]


def _encode_read_index_response(m: ReadIndexResponse) -> list[Any]:
    return [_TAG_READ_INDEX_RESPONSE, m.term, m.sender, m.recipient, list(m.request_ids), m.index]


def _encode_propose_request(m: ProposeRequest) -> list[Any]:
    if len(m.request_ids) != len(m.datas):
        raise CodecError("ProposeRequest needs one request id per command")
    ids, datas = list(m.request_ids), list(m.datas)
    return [_TAG_PROPOSE_REQUEST, m.term, m.sender, m.recipient, ids, datas]


def _encode_propose_response(m: ProposeResponse) -> list[Any]:
    if len(m.request_ids) != len(m.indexes):
        raise CodecError("ProposeResponse needs one index per request id")
    ids, indexes = list(m.request_ids), list(m.indexes)
    return [_TAG_PROPOSE_RESPONSE, m.term, m.sender, m.recipient, ids, indexes, m.refused]


def _encode_leader_durable(m: LeaderDurable) -> list[Any]:
    return [_TAG_LEADER_DURABLE, m.term, m.sender, m.recipient, m.index]


_ENCODERS: dict[type, Callable[[Any], list[Any]]] = {
    RequestVote: _encode_request_vote,
    RequestVoteResponse: _encode_request_vote_response,
    AppendEntries: _encode_append_entries,
    AppendEntriesResponse: _encode_append_entries_response,
    TimeoutNow: _encode_timeout_now,
    InstallSnapshot: _encode_install_snapshot,
    ReadIndexRequest: _encode_read_index_request,
    ReadIndexResponse: _encode_read_index_response,
    ProposeRequest: _encode_propose_request,
    ProposeResponse: _encode_propose_response,
    LeaderDurable: _encode_leader_durable,
}
_PLAIN_ENCODERS = {**_ENCODERS, AppendEntries: _encode_plain_append}


def _pack(value: Any, what: str) -> bytes:
    # Reused Packers, one per concurrent caller: the storage thread and the event loop
    # encode concurrently (consensus/packing.py).
    try:
        return pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode {what}: {exc}") from exc


def encode_messages(msgs: Sequence[Message], commit_only: bool = True) -> bytes:
    """Encode a batch of messages as one msgpack array, so a sender pays one call per flush.
    `commit_only`: whether the recipient reads _TAG_COMMIT_ONLY (else plain appends)."""
    encoders = _ENCODERS if commit_only else _PLAIN_ENCODERS
    encoded = []
    for m in msgs:
        encoder = encoders.get(type(m))
        if encoder is None:
            raise CodecError(f"cannot encode {type(m).__name__}: not a consensus message")
        encoded.append(encoder(m))
    return _pack(encoded, "messages")


def encode_entry(e: Entry) -> bytes:
    """Encode one entry with its index, since on disk it stands alone."""
    return _pack(_entry_fields(e), "entry")


def encode_entries(entries: Iterable[Entry]) -> list[bytes]:
    """`encode_entry` of each entry, with one Packer for them all (a save stores every
    entry of a Ready)."""
    try:
        return pack_each(map(_entry_fields, entries))
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode entry: {exc}") from exc


def _entry_fields(e: Entry) -> list[Any]:
    return [e.term, e.index, e.type, e.data]


def encode_hard_state(hs: HardState) -> bytes:
    return _pack([hs.term, hs.vote, hs.commit], "hard state")


def encode_snapshot_meta(meta: SnapshotMeta) -> bytes:
    return _pack(_snapshot_fields(meta), "snapshot metadata")


# --------------------------------------------------------------------------- decoding

_Build = Callable[[list[Any]], Any]


class _Layout:
    """How one message type lies on the wire: its field names and kinds after the tag."""

    __slots__ = ("build", "kinds", "name", "names", "types", "uints")

    def __init__(self, cls: type, kinds: Sequence[Kind], build: _Build, names: Sequence[str] = ()):
        self.name = cls.__name__
        self.kinds = tuple(kinds)
        # The check every received message passes, in two C-level steps: the exact
        # field types as one tuple (every kind here is a single type), then the least
        # unsigned field (a layout always starts with the term, so there is one; the
        # first is named twice so the getter always yields a tuple).
        assert all(len(kind) == 1 for kind in self.kinds), cls
        self.types = tuple(kind[0] for kind in self.kinds)
        uints = [i for i, kind in enumerate(self.kinds) if kind is UINT]
        self.uints = itemgetter(*uints, uints[0])
        self.build = build
        given = list(names)
        names = given or [f.name for f in fields(cls)]
        if cls is AppendEntries and not given:  # entries travel as three columns at the end
            names.remove("entries")
            names.remove("commit_only")  # a tag of its own: _TAG_COMMIT_ONLY
            names += ["entry terms", "entry types", "entry data"]
        if cls is InstallSnapshot:  # the metadata travels flattened
            names.remove("snapshot")
            names += list(_SNAPSHOT_NAMES)
        self.names = tuple(names)
        assert len(self.names) == len(self.kinds), cls


def _build_append_entries(v: list[Any]) -> AppendEntries:
    term, sender, recipient, prev_index, prev_term, commit, read_seq, terms, types, datas = v
    entries = _decode_entry_columns(prev_index + 1, terms, types, datas)
    return AppendEntries(term, sender, recipient, prev_index, prev_term, entries, commit, read_seq)


def _build_commit_only(v: list[Any]) -> AppendEntries:
    term, sender, recipient, index, index_term, read_seq = v
    return AppendEntries(term, sender, recipient, index, index_term, (), index, read_seq, True)


def _decode_entry_columns(
    first: int, terms: list[Any], types: list[Any], datas: list[Any]
) -> tuple[Entry, ...]:
    """Rebuild entries from the three columns; the hot loop of a follower."""
    count = len(terms)
    if len(types) != count or len(datas) != count:
        raise CodecError(
            f"AppendEntries entry columns differ in length: {count} terms, "
            f"{len(types)} types, {len(datas)} data"
        )
    entry_types = _ENTRY_TYPES
    entries = []
    append = entries.append
    index = first
    for term, kind, data in zip(terms, types, datas, strict=True):
        if type(term) is not int or term < 0:
            raise CodecError(f"AppendEntries entry {index}: bad term {describe(term)}")
        if type(data) is not bytes:
            raise CodecError(
                f"AppendEntries entry {index}: data must be bytes, got {describe(data)}"
            )
        entry_type = entry_types.get(kind) if type(kind) is int else None
        if entry_type is None:
            raise CodecError(f"AppendEntries entry {index}: unknown entry type {describe(kind)}")
        append(Entry(term, index, data, entry_type))
        index += 1
    return tuple(entries)


_COLUMN: Kind = (list,)
_SNAPSHOT_NAMES = ("snapshot index", "snapshot term", "voters", "learners")
_SNAPSHOT_KINDS = (UINT, UINT, _COLUMN, _COLUMN)


def _build_snapshot_meta(v: list[Any]) -> SnapshotMeta:
    index, term, voters, learners = v
    for name, ids in (("voters", voters), ("learners", learners)):
        if any(type(node_id) is not str for node_id in ids):
            raise CodecError(f"snapshot {name} must be node id strings, got {describe(ids)}")
    return SnapshotMeta(index, term, Membership(tuple(voters), tuple(learners)))


def _build_install_snapshot(v: list[Any]) -> InstallSnapshot:
    term, sender, recipient, *meta = v
    return InstallSnapshot(term, sender, recipient, _build_snapshot_meta(meta))


def _column(what: str, values: list[Any], kind: type) -> tuple[Any, ...]:
    """A column of plain values (request ids, commands, indexes), checked one by one."""
    for value in values:
        if type(value) is not kind or (kind is int and value < 0):
            raise CodecError(f"{what} must hold {kind.__name__} values, got {describe(value)}")
    return tuple(values)


def _build_read_index_request(v: list[Any]) -> ReadIndexRequest:
    term, sender, recipient, ids = v
    return ReadIndexRequest(term, sender, recipient, _column("request ids", ids, bytes))


def _build_read_index_response(v: list[Any]) -> ReadIndexResponse:
    term, sender, recipient, ids, index = v
    return ReadIndexResponse(term, sender, recipient, _column("request ids", ids, bytes), index)


def _build_propose_request(v: list[Any]) -> ProposeRequest:
    term, sender, recipient, ids, datas = v
    if len(ids) != len(datas):
        raise CodecError(f"ProposeRequest has {len(ids)} request ids for {len(datas)} commands")
    return ProposeRequest(
        term, sender, recipient, _column("request ids", ids, bytes), _column("data", datas, bytes)
    )


def _build_propose_response(v: list[Any]) -> ProposeResponse:
    term, sender, recipient, ids, indexes, refused = v
    if len(ids) != len(indexes):
        raise CodecError(f"ProposeResponse has {len(ids)} request ids for {len(indexes)} indexes")
    return ProposeResponse(
        term,
        sender,
        recipient,
        _column("request ids", ids, bytes),
        _column("indexes", indexes, int),
        refused,
    )


_LAYOUTS: dict[int, _Layout] = {
    _TAG_REQUEST_VOTE: _Layout(
        RequestVote, [UINT, STR, STR, UINT, UINT, BOOL, BOOL], lambda v: RequestVote(*v)
    ),
    _TAG_REQUEST_VOTE_RESPONSE: _Layout(
        RequestVoteResponse, [UINT, STR, STR, BOOL, BOOL], lambda v: RequestVoteResponse(*v)
    ),
    _TAG_APPEND_ENTRIES: _Layout(
        AppendEntries,
        [UINT, STR, STR, UINT, UINT, UINT, UINT, _COLUMN, _COLUMN, _COLUMN],
        _build_append_entries,
    ),
    _TAG_APPEND_ENTRIES_RESPONSE: _Layout(
        AppendEntriesResponse,
        [UINT, STR, STR, BOOL, UINT, UINT, UINT, UINT],
        lambda v: AppendEntriesResponse(*v),
    ),
    _TAG_COMMIT_ONLY: _Layout(
        AppendEntries,
        [UINT, STR, STR, UINT, UINT, UINT],
        _build_commit_only,
        ("term", "sender", "recipient", "commit index", "commit term", "read_seq"),
    ),
    _TAG_TIMEOUT_NOW: _Layout(TimeoutNow, [UINT, STR, STR], lambda v: TimeoutNow(*v)),
    _TAG_INSTALL_SNAPSHOT: _Layout(
        InstallSnapshot, [UINT, STR, STR, *_SNAPSHOT_KINDS], _build_install_snapshot
    ),
    _TAG_READ_INDEX_REQUEST: _Layout(
        ReadIndexRequest, [UINT, STR, STR, _COLUMN], _build_read_index_request
    ),
    _TAG_READ_INDEX_RESPONSE: _Layout(
        ReadIndexResponse, [UINT, STR, STR, _COLUMN, UINT], _build_read_index_response
    ),
    _TAG_PROPOSE_REQUEST: _Layout(
        ProposeRequest, [UINT, STR, STR, _COLUMN, _COLUMN], _build_propose_request
    ),
    _TAG_PROPOSE_RESPONSE: _Layout(
        ProposeResponse, [UINT, STR, STR, _COLUMN, _COLUMN, STR], _build_propose_response
    ),
    _TAG_LEADER_DURABLE: _Layout(
        LeaderDurable, [UINT, STR, STR, UINT], lambda v: LeaderDurable(*v)
    ),
}


def _decode_message(position: int, raw: Any) -> Message:
    if type(raw) is not list or not raw:
        raise CodecError(f"message {position} must be a non-empty array, got {describe(raw)}")
    tag = raw[0]
    layout = _LAYOUTS.get(tag) if type(tag) is int else None
    if layout is None:
        raise CodecError(f"message {position} has unknown type tag {describe(tag)}")
    values = raw[1:]
    if tuple(map(type, values)) != layout.types or min(layout.uints(values)) < 0:
        # Only a bad message gets here; _check_fields says what is wrong with it.
        check_fields(f"message {position} ({layout.name})", layout.names, layout.kinds, values)
    return layout.build(values)


def decode_messages(data: bytes) -> list[Message]:
    """Decode what `encode_messages` produced; anything else raises CodecError."""
    raw = unpack(data, "messages")
    if type(raw) is not list:
        raise CodecError(f"messages must be an array, got {type(raw).__name__}")
    return [_decode_message(position, item) for position, item in enumerate(raw)]


_ENTRY_NAMES = ("term", "index", "type", "data")
_ENTRY_KINDS = (UINT, UINT, UINT, (bytes,))


def decode_entry(b: bytes) -> Entry:
    """Decode what `encode_entry` produced; anything else raises CodecError. Checks inline
    first: the generic ones, which name the fault, were 60 % of a decode (restarts: 3x)."""
    try:
        raw = _unpackb(b, raw=False, use_list=True, strict_map_key=True) if type(b) is bytes else 0
    except Exception:  # the generic path below says what is wrong
        raw = 0
    if type(raw) is list and len(raw) == 4:
        term, index, kind, data = raw
        ok = type(term) is type(index) is type(kind) is int and type(data) is bytes
        if ok and term >= 0 <= index and kind in _ENTRY_TYPES:
            return Entry(term, index, data, _ENTRY_TYPES[kind])
    raw = unpack(b, "entry")
    check_fields("entry", _ENTRY_NAMES, _ENTRY_KINDS, raw)
    term, index, kind, data = raw
    entry_type = _ENTRY_TYPES.get(kind)
    if entry_type is None:
        raise CodecError(f"entry {index} has unknown entry type {kind}")
    return Entry(term, index, data, entry_type)


_HARD_STATE_NAMES = ("term", "vote", "commit")
_HARD_STATE_KINDS = (UINT, OPT_STR, UINT)


def decode_hard_state(b: bytes) -> HardState:
    """Decode what `encode_hard_state` produced; anything else raises CodecError."""
    raw = unpack(b, "hard state")
    check_fields("hard state", _HARD_STATE_NAMES, _HARD_STATE_KINDS, raw)
    return HardState(*raw)


def decode_snapshot_meta(b: bytes) -> SnapshotMeta:
    """Decode what `encode_snapshot_meta` produced; anything else raises CodecError."""
    raw = unpack(b, "snapshot metadata")
    check_fields("snapshot metadata", _SNAPSHOT_NAMES, _SNAPSHOT_KINDS, raw)
    return _build_snapshot_meta(raw)
