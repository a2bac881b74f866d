"""A key's current record packed into one bytes object: the form the key space keeps.

Why not the KeyValue itself: at a million keys the per-key objects decide both the
memory and the event loop's stalls. A KeyValue (like any instance of a Python class) is
tracked by the cyclic garbage collector, so every collection of the generation holding
them walks all of them (measured: a full collection at 300,000 keys took 153 ms on the
loop, and a node's young generations fill with the keys written since the last freeze);
and it costs a record (80 B) plus an int object per revision (32 B) beside the value.
A bytes object is never tracked by the collector, and packing the three numbers in
front of the value costs 13 B instead. A KeyValue is made again, on demand, when a key
is read (`unpack`): reads and the history keep the KeyValue interface unchanged.

Layout: a tag byte, the version, create and mod revision, then the value, little-endian:
- tag 0: the three numbers as u32 (13 bytes before the value), for every record whose
  numbers are below 2**32 (any store before its four-billionth write);
- tag 1: as u64 (25 bytes), beyond that.
Why the short form: Python's allocator rounds every object up to 16 bytes, so at the
issue's 256 B values a record of 24 + 256 B took 320 B and one of 13 + 256 B takes 304
(16 MB less at a million keys, against a goal of RSS at most twice the raw values).
`pack` always picks tag 0 when the numbers fit, so equal states give equal bytes.

Snapshot format 7 kept records as `<version:u64><create:u64><mod:u64><value>` (no tag);
`from_format_7` converts them when an older snapshot is read.
"""

from __future__ import annotations

import struct
from operator import itemgetter
from typing import Any

from kvstore.state.types import KeyValue, kv_fields

_SHORT = struct.Struct("<BIII")
_LONG = struct.Struct("<BQQQ")
_FORMAT_7 = struct.Struct("<QQQ")
_pack_short, _pack_long = _SHORT.pack, _LONG.pack
_unpack_short, _unpack_long = _SHORT.unpack_from, _LONG.unpack_from
_SHORT_LIMIT = 1 << 32
MIN_BYTES = _SHORT.size
"""The shortest well-formed record (tag 0, empty value)."""
_first_byte = itemgetter(0)


def pack(value: bytes, version: int, create_revision: int, mod_revision: int) -> bytes:
    """The record of a key holding `value` (the key itself is kept beside it)."""
    if (version | create_revision | mod_revision) < _SHORT_LIMIT:
        return _pack_short(0, version, create_revision, mod_revision) + value
    return _pack_long(1, version, create_revision, mod_revision) + value


def pack_kv(kv: KeyValue) -> bytes:
    return pack(kv.value, kv.version, kv.create_revision, kv.mod_revision)


def unpack(key: str, record: bytes) -> KeyValue:
    """The KeyValue of `key` whose record is `record`."""
    if record[0]:
        _, version, create, mod = _unpack_long(record)
        return KeyValue(key, record[_LONG.size :], version, create, mod)
    _, version, create, mod = _unpack_short(record)
    return KeyValue(key, record[_SHORT.size :], version, create, mod)


def well_formed(records: tuple[bytes, ...]) -> bool:
    """Whether every one of a snapshot chunk's records (bytes, checked by the caller) has
    a known tag and is long enough for it: C-level calls only, except for the rare chunk
    holding a long-form record."""
    if min(map(len, records)) < MIN_BYTES:
        return False
    tags = set(map(_first_byte, records))
    if tags <= {0}:
        return True
    return tags <= {0, 1} and all(len(r) >= _LONG.size for r in records if r[0])


def from_format_7(record: bytes) -> bytes:
    """A record of snapshot format 7 (`<QQQ>` then the value) in this layout; ValueError
    when it is too short to hold its three numbers."""
    try:
        return pack(record[_FORMAT_7.size :], *_FORMAT_7.unpack_from(record))
    except struct.error:
        raise ValueError("a key record shorter than its three revisions") from None


def from_wire(fields: Any) -> tuple[str, bytes]:
    """The record of a snapshot's `(key, value, version, create, mod)` (formats 1-6,
    types.encode_kv); ValueError on anything but a well-formed record."""
    key, value, version, create, mod = kv_fields(fields)
    try:
        return key, pack(value, version, create, mod)
    except (struct.error, TypeError):  # 2**64 and beyond, or a negative number
        raise ValueError(f"bad key record for {key!r}") from None
