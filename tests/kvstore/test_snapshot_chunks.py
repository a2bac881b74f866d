"""Snapshot formats 7 and 8 (kvstore.state.snapshot): keys in chunks of CHUNK_KEYS, each
packed and unpacked by one msgpack call, so a worker thread holds the GIL ~1 ms at a time;
format 8's records in the short tagged layout (kvstore.state.records).

What must hold: a chunk is never longer than CHUNK_KEYS and the serializer pauses after
each (the bound on each GIL hold); the bytes are canonical; a format-6 snapshot (one
array per key) or a format-7 one (records as three u64) of the same state still restores
to the same state; malformed chunks are
refused, never half-installed.
"""

from __future__ import annotations

import struct
from io import BytesIO

import msgpack
import pytest

from consensus.types import Entry
from kvstore.state import records
from kvstore.state import snapshot as snapshot_module
from kvstore.state.commands import Delete, Put, encode_command
from kvstore.state.machine import KVStateMachine, SnapshotError
from kvstore.state.snapshot import CHUNK_KEYS

KEYS = 2 * CHUNK_KEYS + 5


def _filled(keys: int = KEYS) -> KVStateMachine:
    sm = KVStateMachine()
    for i in range(keys):
        sm.apply(Entry(1, i + 1, encode_command(Put(f"k{i:06d}", b"v%d" % i))))
    sm.apply(Entry(1, keys + 1, encode_command(Put("k000001", b"again"))))
    sm.apply(Entry(1, keys + 2, encode_command(Delete("k000002"))))
    return sm


def _as_format_6(data: bytes) -> bytes:
    """The same state written as format 6: one `[key, value, version, create, mod]`
    array per key (what every node wrote before format 7)."""
    fields = msgpack.unpackb(data, raw=False)
    assert fields[0] == 8
    per_key = []
    for keys, recs in fields[3]:
        for key, record in zip(keys, recs, strict=True):
            kv = records.unpack(key, record)
            per_key.append([key, kv.value, kv.version, kv.create_revision, kv.mod_revision])
    return msgpack.packb([6, fields[1], fields[2], per_key, *fields[4:]], use_bin_type=True)


def _as_format_7(data: bytes) -> bytes:
    """The same state written as format 7: chunks whose records are
    `<version:u64><create:u64><mod:u64><value>` (what every node wrote before format 8)."""
    fields = msgpack.unpackb(data, raw=False)
    assert fields[0] == 8
    chunks = []
    for keys, recs in fields[3]:
        kvs = [records.unpack(key, record) for key, record in zip(keys, recs, strict=True)]
        old = [
            struct.pack("<QQQ", kv.version, kv.create_revision, kv.mod_revision) + kv.value
            for kv in kvs
        ]
        chunks.append([keys, old])
    return msgpack.packb([7, fields[1], fields[2], chunks, *fields[4:]], use_bin_type=True)


def test_keys_are_written_in_chunks_of_at_most_chunk_keys_with_a_pause_after_each() -> None:
    sm = _filled()
    pauses: list[int] = []
    out = BytesIO()
    sm.snapshot_view().write_to(out, lambda: pauses.append(out.tell()))
    fields = msgpack.unpackb(out.getvalue(), raw=False)
    assert [len(keys) for keys, _ in fields[3]] == [CHUNK_KEYS, CHUNK_KEYS, 4]
    assert len(pauses) == 3 and pauses == sorted(set(pauses))
    assert out.getvalue() == sm.snapshot()


def test_a_parse_pauses_after_each_chunk_and_restores_the_same_state() -> None:
    sm = _filled()
    data = sm.snapshot()
    pauses: list[None] = []
    restored = KVStateMachine()
    restored.install(KVStateMachine.parse(data, lambda: pauses.append(None)))
    assert len(pauses) == 3
    assert restored.snapshot() == data
    assert restored.get("k000001").value == b"again" and restored.get("k000002") is None  # type: ignore[union-attr]


def test_a_format_6_snapshot_restores_to_the_same_state() -> None:
    data = _filled().snapshot()
    old = KVStateMachine()
    old.restore(_as_format_6(data))
    assert old.snapshot() == data


def test_a_format_7_snapshot_restores_to_the_same_state() -> None:
    data = _filled().snapshot()
    old = KVStateMachine()
    old.restore(_as_format_7(data))
    assert old.snapshot() == data
    assert old.get("k000001") == _filled().get("k000001")


def test_a_format_7_record_too_short_for_its_revisions_is_refused() -> None:
    fields = msgpack.unpackb(_as_format_7(_filled(3).snapshot()), raw=False)
    fields[3][0][1][0] = fields[3][0][1][0][:23]
    sm = _filled(5)
    before = sm.snapshot()
    with pytest.raises(SnapshotError):
        sm.restore(msgpack.packb(fields, use_bin_type=True))
    assert sm.snapshot() == before


def _with_chunks(chunks: list[object]) -> bytes:
    fields = msgpack.unpackb(_filled(3).snapshot(), raw=False)
    return msgpack.packb([*fields[:3], chunks, *fields[4:]], use_bin_type=True)


RECORD = records.pack(b"v", 1, 1, 1)


@pytest.mark.parametrize(
    "chunks",
    [
        [[["b", "a"], [RECORD, RECORD]]],  # out of order
        [[["a", "a"], [RECORD, RECORD]]],  # a key twice in a chunk
        [[["a", "b"], [RECORD, RECORD]], [["b"], [RECORD]]],  # twice across chunks
        [[["b"], [RECORD]], [["a"], [RECORD]]],  # chunks out of order
        [[["a"], [RECORD[:-2]]]],  # a record shorter than its three revisions
        [[["a"], [b"\x02" + RECORD[1:]]]],  # an unknown layout tag
        [[["a", "b"], [RECORD, b"\x01" + RECORD[1:]]]],  # too short for the long layout
        [[["a"], [RECORD, RECORD]]],  # lengths differ
        [[[], []]],  # an empty chunk
        [[[b"a"], [RECORD]]],  # a key that is not a string
        [[["a"], ["not bytes"]]],
        [[["a"], [RECORD], []]],
    ],
)
def test_a_malformed_chunk_is_refused_and_the_state_kept(chunks: list[object]) -> None:
    sm = _filled(5)
    before = sm.snapshot()
    with pytest.raises(SnapshotError):
        sm.restore(_with_chunks(chunks))
    assert sm.snapshot() == before


def test_the_well_formed_variant_of_those_chunks_is_accepted() -> None:
    sm = KVStateMachine()
    sm.restore(_with_chunks([[["a", "b"], [RECORD, RECORD]], [["c"], [RECORD]]]))
    assert [sm.get(k).value for k in "abc"] == [b"v"] * 3  # type: ignore[union-attr]


@pytest.mark.parametrize(("slice_keys", "chunk_keys"), [(1000, CHUNK_KEYS), (1000, 64)])
def test_captured_slices_of_any_length_are_written_as_the_same_chunks(
    slice_keys: int, chunk_keys: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys captured in slices shorter or (many times) longer than a chunk, with
    corrections falling in several of them, give the bytes of a snapshot taken at once,
    in chunks of exactly `chunk_keys`."""
    monkeypatch.setattr(snapshot_module, "CHUNK_KEYS", chunk_keys)
    sm = _filled()
    expected = sm.snapshot()
    view, capture = sm.begin_snapshot(slice_keys)
    index = KEYS + 2
    changes = iter(
        [Put("k000000", b"first"), Delete("k004096"), Put("k000002", b"back"), Put("z", b"")]
    )
    while not capture.step():
        for change in [next(changes, None)]:
            if change is not None:
                index += 1
                sm.apply(Entry(1, index, encode_command(change)))
    for change in changes:
        index += 1
        sm.apply(Entry(1, index, encode_command(change)))
    chunks, corrections = capture.finish()
    assert len(corrections) == 4
    data = view.with_keys(chunks, corrections).serialize()
    assert data == expected
    lengths = [len(keys) for keys, _ in msgpack.unpackb(data, raw=False)[3]]
    assert lengths == [chunk_keys] * (8196 // chunk_keys) + [8196 % chunk_keys]
