"""The msgpack codec: every value survives a round trip, and bytes from a peer or a disk
can never make decoding fail with anything but CodecError."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.codec import (
    CodecError,
    decode_entry,
    decode_hard_state,
    decode_messages,
    decode_snapshot_meta,
    encode_entries,
    encode_entry,
    encode_hard_state,
    encode_messages,
    encode_snapshot_meta,
)
from consensus.errors import ConsensusError
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
from consensus.types import Entry, EntryType, HardState, Membership, SnapshotMeta

MESSAGE_TYPES = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    TimeoutNow,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    ProposeRequest,
    ProposeResponse,
    LeaderDurable,
)

uints = st.integers(min_value=0, max_value=2**64 - 1)
small_uints = st.integers(min_value=0, max_value=1000)
node_ids = st.text(max_size=10)
entry_types = st.sampled_from(EntryType)


@st.composite
def entries_after(draw: st.DrawFn, prev_index: int) -> tuple[Entry, ...]:
    """Entries as a leader sends them: contiguous from prev_index + 1."""
    count = draw(st.integers(min_value=0, max_value=8))
    return tuple(
        Entry(draw(uints), prev_index + 1 + offset, draw(st.binary(max_size=64)), draw(entry_types))
        for offset in range(count)
    )


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    prev_index = draw(st.one_of(small_uints, uints))
    return AppendEntries(
        term=draw(uints),
        sender=draw(node_ids),
        recipient=draw(node_ids),
        prev_log_index=prev_index,
        prev_log_term=draw(uints),
        entries=draw(entries_after(prev_index)),
        leader_commit=draw(uints),
        read_seq=draw(uints),
    )


@st.composite
def commit_only_appends(draw: st.DrawFn) -> AppendEntries:
    """What Leadership._bump_commit sends: no entries, prev_log_index == leader_commit."""
    index = draw(st.one_of(small_uints, uints))
    term, sender, recipient = draw(uints), draw(node_ids), draw(node_ids)
    return AppendEntries(term, sender, recipient, index, draw(uints), (), index, draw(uints), True)


def _plain(cls: type) -> st.SearchStrategy[Any]:
    """Any instance of a message type whose fields are all ints, bools and node ids."""
    hints = typing.get_type_hints(cls)
    kinds = {int: uints, bool: st.booleans(), str: node_ids}
    return st.builds(cls, **{f.name: kinds[hints[f.name]] for f in fields(cls)})


request_ids = st.lists(st.binary(max_size=8), max_size=5).map(tuple)

snapshot_metas = st.builds(
    SnapshotMeta,
    uints,
    uints,
    st.builds(Membership, st.lists(node_ids, max_size=5).map(tuple), st.lists(node_ids).map(tuple)),
)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(InstallSnapshot, uints, node_ids, node_ids, snapshot_metas),
    _plain(RequestVote),
    _plain(RequestVoteResponse),
    append_entries(),
    commit_only_appends(),
    _plain(AppendEntriesResponse),
    _plain(TimeoutNow),
    _plain(LeaderDurable),
    st.builds(ReadIndexRequest, uints, node_ids, node_ids, request_ids),
    st.builds(ReadIndexResponse, uints, node_ids, node_ids, request_ids, uints),
    st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=64)), max_size=5).flatmap(
        lambda pairs: st.builds(
            ProposeRequest,
            uints,
            node_ids,
            node_ids,
            st.just(tuple(p[0] for p in pairs)),
            st.just(tuple(p[1] for p in pairs)),
        )
    ),
    st.lists(st.tuples(st.binary(max_size=8), uints), max_size=5).flatmap(
        lambda pairs: st.builds(
            ProposeResponse,
            uints,
            node_ids,
            node_ids,
            st.just(tuple(p[0] for p in pairs)),
            st.just(tuple(p[1] for p in pairs)),
            node_ids,
        )
    ),
)
entries = st.builds(Entry, uints, uints, st.binary(max_size=200), entry_types)
hard_states = st.builds(HardState, uints, st.none() | node_ids, uints)

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


def assert_well_typed(value: Any) -> None:
    """What decoding returns must match its declared field types exactly (no bool for
    an int, no str for bytes), or the core would misbehave far from the bad input."""
    assert type(value) in (*MESSAGE_TYPES, Entry, HardState)
    hints = typing.get_type_hints(type(value))
    for f in fields(value):
        field_value = getattr(value, f.name)
        hint = hints[f.name]
        if f.name == "entries":
            for entry in field_value:
                assert_well_typed(entry)
        elif f.name in ("request_ids", "datas"):
            assert all(type(item) is bytes for item in field_value)
        elif f.name == "indexes":
            assert all(type(item) is int for item in field_value)
        elif hint is SnapshotMeta:
            assert type(field_value.index) is int and type(field_value.term) is int
            members = field_value.membership.voters + field_value.membership.learners
            assert all(type(node_id) is str for node_id in members)
        elif hint is EntryType:
            assert type(field_value) is EntryType
        elif hint in (int, bool, str, bytes):
            assert type(field_value) is hint, (f.name, field_value)
        else:  # HardState.vote
            assert field_value is None or type(field_value) is str


# --------------------------------------------------------------------------- round trips


@given(st.lists(messages, max_size=6))
def test_messages_round_trip(msgs: list[Message]) -> None:
    decoded = decode_messages(encode_messages(msgs))
    assert decoded == msgs
    for message in decoded:
        assert_well_typed(message)


@pytest.mark.parametrize(
    "strategy", [_plain(t) for t in MESSAGE_TYPES[:6] if t not in (AppendEntries, InstallSnapshot)]
)
@given(data=st.data())
def test_each_fixed_message_type_round_trips(strategy: Any, data: st.DataObject) -> None:
    message = data.draw(strategy)
    assert decode_messages(encode_messages([message])) == [message]


@given(entries)
def test_entry_round_trip(entry: Entry) -> None:
    decoded = decode_entry(encode_entry(entry))
    assert decoded == entry
    assert_well_typed(decoded)


@given(st.lists(entries, max_size=5))
def test_entries_encode_each_as_one_entry_does(batch: list[Entry]) -> None:
    assert encode_entries(batch) == [encode_entry(entry) for entry in batch]


@given(hard_states)
def test_hard_state_round_trip(hard_state: HardState) -> None:
    decoded = decode_hard_state(encode_hard_state(hard_state))
    assert decoded == hard_state
    assert_well_typed(decoded)


def test_encoding_is_compact() -> None:
    heartbeat = AppendEntries(5, "n1", "n2", 100, 5, (), 99, 7)
    assert len(encode_messages([heartbeat])) <= 20
    batch = tuple(Entry(5, 101 + i, bytes(100)) for i in range(64))
    full = AppendEntries(5, "n1", "n2", 100, 5, batch, 99, 7)
    # Per entry: 100 data bytes, a 2-byte bin header, one byte each for term and type.
    assert len(encode_messages([full])) <= 64 * 104 + 30


# --------------------------------------------------------------------------- encoding errors


def test_encoding_entries_with_a_gap_is_refused() -> None:
    gap = (Entry(1, 11), Entry(1, 13))
    with pytest.raises(CodecError, match="expected 12"):
        encode_messages([AppendEntries(1, "a", "b", 10, 1, gap, 0)])


def test_encoding_entries_not_following_prev_log_index_is_refused() -> None:
    with pytest.raises(CodecError, match="follow prev_log_index"):
        encode_messages([AppendEntries(1, "a", "b", 10, 1, (Entry(1, 10),), 0)])


def test_encoding_a_non_message_is_refused() -> None:
    with pytest.raises(CodecError, match="not a consensus message"):
        encode_messages([Entry(1, 1)])  # type: ignore[list-item]


def test_codec_error_is_a_consensus_error() -> None:
    assert issubclass(CodecError, ConsensusError)


# --------------------------------------------------------------------------- hostile input


def _decoders() -> list[Any]:
    return [decode_messages, decode_entry, decode_hard_state]


def _decodes_or_codec_error(decode: Any, data: Any) -> None:
    try:
        result = decode(data)
    except CodecError as exc:
        assert str(exc)
        return
    for value in result if isinstance(result, list) else [result]:
        assert_well_typed(value)


@pytest.mark.parametrize("decode", _decoders())
@given(data=st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_codec_error(decode: Any, data: bytes) -> None:
    _decodes_or_codec_error(decode, data)


@pytest.mark.parametrize("decode", _decoders())
@given(value=msgpack_values)
def test_wrong_shapes_never_raise_anything_but_codec_error(decode: Any, value: Any) -> None:
    _decodes_or_codec_error(decode, msgpack.packb(value))


@given(msgs=st.lists(messages, min_size=1, max_size=3), data=st.data())
def test_truncated_messages_are_rejected(msgs: list[Message], data: st.DataObject) -> None:
    encoded = encode_messages(msgs)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(CodecError):
        decode_messages(encoded[:cut])


@given(entry=entries, data=st.data())
def test_truncated_entries_are_rejected(entry: Entry, data: st.DataObject) -> None:
    encoded = encode_entry(entry)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(CodecError):
        decode_entry(encoded[:cut])


@given(msgs=st.lists(messages, min_size=1, max_size=3), data=st.data())
def test_flipped_bytes_never_raise_anything_but_codec_error(
    msgs: list[Message], data: st.DataObject
) -> None:
    encoded = bytearray(encode_messages(msgs))
    position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    _decodes_or_codec_error(decode_messages, bytes(encoded))


@given(message=messages, data=st.data())
def test_any_field_replaced_by_any_value_is_caught(message: Message, data: st.DataObject) -> None:
    """Structure-aware fuzzing: keep the shape, swap one field for an arbitrary value."""
    raw = msgpack.unpackb(encode_messages([message]))
    position = data.draw(st.integers(min_value=0, max_value=len(raw[0]) - 1))
    raw[0][position] = data.draw(msgpack_values)
    _decodes_or_codec_error(decode_messages, msgpack.packb(raw))


def _raw(message: Message) -> list[Any]:
    return msgpack.unpackb(encode_messages([message]))[0]


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"", "cannot decode messages"),
        (b"\xc1", "cannot decode messages"),  # a byte msgpack never uses
        (msgpack.packb([]) + b"\x00", "cannot decode messages"),  # trailing garbage
        (msgpack.packb({"a": 1}), "must be an array"),
        (msgpack.packb([[]]), "non-empty array"),
        (msgpack.packb([7]), "non-empty array"),
        (msgpack.packb([[99, 1, "a", "b"]]), "unknown type tag 99"),
        (msgpack.packb([[True, 1, "a", "b"]]), "unknown type tag True"),
        (msgpack.packb([[4, 1, "a"]]), "TimeoutNow.*must have 3 fields, got 2"),
        (msgpack.packb([[4, 1, "a", "b", 0]]), "TimeoutNow.*must have 3 fields, got 4"),
        (msgpack.packb([[4, "1", "a", "b"]]), "'term' must be int, got str"),
        (msgpack.packb([[4, True, "a", "b"]]), "'term' must be int, got bool"),
        (msgpack.packb([[4, -1, "a", "b"]]), "'term' must not be negative"),
        (msgpack.packb([[4, 1.0, "a", "b"]]), "'term' must be int, got float"),
        (msgpack.packb([[4, 1, b"a", "b"]]), "'sender' must be str, got bytes"),
        (msgpack.packb([[1, 1, "a", "b", 1, False]]), "'granted' must be bool, got int"),
    ],
)
def test_malformed_messages_are_named(payload: bytes, complaint: str) -> None:
    with pytest.raises(CodecError, match=complaint):
        decode_messages(payload)


def test_append_entries_columns_are_checked() -> None:
    good = _raw(AppendEntries(1, "a", "b", 10, 1, (Entry(1, 11, b"x"), Entry(1, 12)), 0))
    cases = [
        (8, [1], "differ in length"),
        (9, [0, 7], "entry 12: unknown entry type 7"),
        (9, [0, False], "entry 12: unknown entry type False"),
        (10, [b"x", "y"], "entry 12: data must be bytes"),
        (8, [1, -1], "entry 12: bad term -1"),
        (8, "not a column", "'entry terms' must be list"),
    ]
    for position, column, complaint in cases:
        raw = list(good)
        raw[position] = column
        with pytest.raises(CodecError, match=complaint):
            decode_messages(msgpack.packb([raw]))


@pytest.mark.parametrize(
    ("decode", "value", "complaint"),
    [
        (decode_entry, [1, 2, 0], "must have 4 fields"),
        (decode_entry, [1, 2, 5, b""], "unknown entry type 5"),
        (decode_entry, [1, 2, 0, "text"], "'data' must be bytes"),
        # the inline checks (decode_entry's fast path) refuse what the generic ones do
        (decode_entry, [True, 2, 0, b""], "'term' must be int, got bool"),
        (decode_entry, [1, -2, 0, b""], "'index' must not be negative"),
        (decode_entry, [1, 2, False, b""], "'type' must be int, got bool"),
        (decode_entry, [1, 2, -1, b""], "'type' must not be negative"),
        (decode_entry, [1, 2, 0, b"", 5], "must have 4 fields"),
        (decode_entry, {"a": 1, "b": 2, "c": 0, "d": b""}, "must be an array"),
        (decode_hard_state, [1, 2, 3], "'vote' must be str or NoneType"),
        (decode_hard_state, (1, None), "must have 3 fields"),
        (decode_hard_state, 5, "must be an array"),
    ],
)
def test_malformed_entries_and_hard_states_are_named(decode: Any, value: Any, complaint: str):
    with pytest.raises(CodecError, match=complaint):
        decode(msgpack.packb(value))


@pytest.mark.parametrize("decode", _decoders())
@pytest.mark.parametrize("data", ["text", None, 42, [1, 2]])
def test_non_bytes_input_is_a_codec_error(decode: Any, data: Any) -> None:
    with pytest.raises(CodecError, match="expected bytes"):
        decode(data)


@pytest.mark.parametrize("decode", _decoders())
def test_bytes_like_input_is_accepted(decode: Any) -> None:
    encoded = {
        decode_messages: encode_messages([TimeoutNow(1, "a", "b")]),
        decode_entry: encode_entry(Entry(1, 2, b"x")),
        decode_hard_state: encode_hard_state(HardState(1, "a", 2)),
    }[decode]
    assert decode(bytearray(encoded)) == decode(memoryview(encoded)) == decode(encoded)


@given(snapshot_metas)
def test_snapshot_metadata_round_trips(meta: SnapshotMeta) -> None:
    assert decode_snapshot_meta(encode_snapshot_meta(meta)) == meta


@given(commit_only_appends())
def test_a_commit_only_append_is_plain_for_a_peer_that_predates_the_flag(
    msg: AppendEntries,
) -> None:
    """Such a peer decodes tag 2 only: it gets the append it always got (and answers it)."""
    unflagged = dataclasses.replace(msg, commit_only=False)
    assert encode_messages([msg], commit_only=False) == encode_messages([unflagged])
    assert decode_messages(encode_messages([msg], commit_only=False)) == [unflagged]
    assert len(encode_messages([msg])) < len(encode_messages([unflagged]))


def test_a_commit_only_append_with_entries_or_another_commit_is_refused() -> None:
    entry = Entry(1, 6, b"x")
    for msg in (
        AppendEntries(1, "a", "b", 5, 1, (entry,), 5, 0, True),
        AppendEntries(1, "a", "b", 5, 1, (), 4, 0, True),
    ):
        with pytest.raises(CodecError, match="commit_only"):
            encode_messages([msg])


@given(messages)
def test_messages_are_values_equal_and_hashed_by_their_fields(msg: Message) -> None:
    """Not frozen (see consensus.messages), but still values: a decoded copy is equal to
    the original, hashes alike, and is a different object."""
    (copy,) = decode_messages(encode_messages([msg]))
    assert copy == msg and hash(copy) == hash(msg) and copy is not msg
    assert {msg, copy} == {msg}
