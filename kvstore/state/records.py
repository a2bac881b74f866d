"""A key's current record packed into one bytes object: the form the key space keeps.

Why not the KeyValue itself: at a million keys the per-key objects decide both the
memory and the event loop's stalls. A KeyValue (like any instance of a Python class) is
tracked by the cyclic garbage collector, so every collection of the generation holding
them walks all of them (measured: a full collection at 300,000 keys took 153 ms on the
loop, and a node's young generations fill with the keys written since the last freeze);
and it costs a record (80 B) plus an int object per revision (32 B) beside the value.
A bytes object is never tracked by the collector, and packing the three numbers in
front of the value costs 24 B instead. A KeyValue is made again, on demand, when a key
is read (`unpack`): reads and the history keep the KeyValue interface unchanged.

Layout: `<version:u64><create_revision:u64><mod_revision:u64><value>`, little-endian.
"""

from __future__ import annotations

import struct
from typing import Any

from kvstore.state.types import KeyValue, kv_fields

_META = struct.Struct("<QQQ")
_unpack_meta = _META.unpack_from
_pack_meta = _META.pack
META_BYTES = _META.size


def pack(value: bytes, version: int, create_revision: int, mod_revision: int) -> bytes:
    """The record of a key holding `value` (the key itself is kept beside it)."""
    return _pack_meta(version, create_revision, mod_revision) + value


def pack_kv(kv: KeyValue) -> bytes:
    return _pack_meta(kv.version, kv.create_revision, kv.mod_revision) + kv.value


def unpack(key: str, record: bytes) -> KeyValue:
    """The KeyValue of `key` whose record is `record`."""
    version, create, mod = _unpack_meta(record)
    return KeyValue(key, record[META_BYTES:], version, create, mod)


def from_wire(fields: Any) -> tuple[str, bytes]:
    """The record of a snapshot's `(key, value, version, create, mod)` (formats 1-6,
    types.encode_kv); ValueError on anything but a well-formed record."""
    key, value, version, create, mod = kv_fields(fields)
    try:
        return key, _pack_meta(version, create, mod) + value
    except struct.error:  # 2**64 and beyond
        raise ValueError(f"bad key record for {key!r}") from None
