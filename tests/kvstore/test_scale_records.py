"""The key space at scale: per-key records the garbage collector never walks, and the
collector's pauses measured (kvstore.state.records, kvstore.runtime.gc_pauses)."""

from __future__ import annotations

import gc
import logging
import sys

import pytest

from kvstore.runtime.gc_pauses import GcPauses
from kvstore.state import keyspace, records
from kvstore.state.history import History
from kvstore.state.keyspace import KeySpace
from kvstore.state.types import KeyValue


def test_records_are_untracked_bytes_and_read_back_as_key_values() -> None:
    space = KeySpace(History(10))
    space.put("a", b"one", 1)
    space.commit(1)
    space.put("a", b"two", 2)
    space.commit(2)
    space.put("b", b"", 3)
    space.commit(3)
    for record in space.records.values():
        assert type(record) is bytes and not gc.is_tracked(record)
    assert space.get("a") == KeyValue("a", b"two", 2, 1, 2)
    assert space.get("b") == KeyValue("b", b"", 1, 3, 3)
    assert space.get("c") is None and "b" in space and len(space) == 2
    assert records.from_wire(("a", b"two", 2, 1, 2)) == ("a", space.records["a"])


def test_a_record_is_short_while_its_numbers_fit_in_u32_and_long_beyond() -> None:
    """The short layout is what saves memory (a 256 B value's record in Python's 304 B
    size class, not 320), and `pack` must pick it whenever it fits: equal states, equal
    snapshot bytes."""
    short = records.pack(b"x" * 256, 3, 2**32 - 2, 2**32 - 1)
    assert short[0] == 0 and len(short) == 13 + 256 and sys.getsizeof(short) <= 304
    long = records.pack(b"x", 1, 5, 2**32)
    assert long[0] == 1 and len(long) == 25 + 1
    assert records.unpack("k", short) == KeyValue("k", b"x" * 256, 3, 2**32 - 2, 2**32 - 1)
    assert records.unpack("k", long) == KeyValue("k", b"x", 1, 5, 2**32)
    assert records.well_formed((short, long)) and records.well_formed((records.pack(b"", 1, 1, 1),))
    assert not records.well_formed((short, long[:-2]))
    assert not records.well_formed((b"\x02" + short[1:],))


@pytest.mark.parametrize(
    "fields",
    [
        ("k", b"v", True, 1, 1),
        ("k", b"v", 1, -1, 1),
        ("k", b"v", 1, 1, 2**64),
        ("k", "v", 1, 1, 1),
        (b"k", b"v", 1, 1, 1),
        ("k", b"v", 1, 1),
        None,
    ],
)
def test_a_bad_key_record_is_refused(fields: object) -> None:
    with pytest.raises(ValueError):
        records.from_wire(fields)


def test_collections_are_timed_and_a_long_one_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    pauses = GcPauses(warn_s=0.0).install()
    try:
        with caplog.at_level(logging.WARNING, logger="kvstore.gc"):
            gc.collect()
    finally:
        pauses.remove()
    assert pauses.counts[2] >= 1 and pauses.max_s[2] > 0
    assert "garbage collection of generation 2 took" in caplog.text
    gc.collect()
    assert pauses.counts[2] == 1  # removed: no longer timed


def test_the_records_are_split_so_no_dict_holds_more_than_a_small_share() -> None:
    """A dict that grows copies all its entries in one step (34 ms at 699,051 keys,
    measured in one process): split by key hash, a step copies one shard's."""
    space = KeySpace(History(10))
    for i in range(20_000):
        space.put(f"key-{i:08d}", b"v", i + 1)
        space.commit(i + 1)
    shards = space.records._shards
    assert len(shards) == keyspace.SHARDS and max(map(len, shards)) < 20_000 / 16
    assert len(space.records) == len(space) == 20_000 and "key-00000007" in space
    assert sorted(space.records.values()) == sorted(space.records[k] for k in space.keys)
    assert space.records.pop("key-00000007") is not None and space.records.pop("nope") is None
    assert space.records.get("key-00000007") is None and len(space.records) == 19_999
