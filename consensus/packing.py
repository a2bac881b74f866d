"""msgpack encoding with reused Packers: no 256 KiB buffer allocated and freed per value.

Why: `msgpack.packb` builds a Packer with a 256 KiB buffer for every call and frees it
at once, several times per write (the command, each log entry, the hard state, every
peer batch). A node pins malloc's mmap threshold below that size
(kvstore/runtime/free_memory.py) so that freed blocks go back to the system; each such
buffer was then an mmap, a munmap and page faults. A reused Packer keeps its buffer.

Packers are not thread-safe, and values are encoded on more than one thread (the event
loop, the persist worker, the snapshot writer, a backup), so a Packer is never shared:
`PackerPool.pack` takes one off a free list for the length of one call and puts it back
after (`list.pop` and `list.append` are atomic), and a caller finding the list empty
makes a new one. The list never holds more Packers than ever encoded at once. A Packer
whose buffer had to grow (a value over `BUFFER_BYTES`, such as a catch-up batch) is
dropped rather than kept, so one large value never pins a large buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgpack

__all__ = ["BUFFER_BYTES", "PackerPool", "pack", "pack_each"]

BUFFER_BYTES = 64 << 10
"""Each Packer's buffer: more than a write's values and most peer batches, and well
below the node's mmap threshold, so it comes from the heap."""


class _Packer(Protocol):
    def pack(self, obj: Any) -> bytes: ...


def _new_packer() -> _Packer:
    return msgpack.Packer(use_bin_type=True, buf_size=BUFFER_BYTES)


class PackerPool:
    """Packers for whoever encodes, each used by one caller at a time."""

    def __init__(
        self, new_packer: Callable[[], _Packer] = _new_packer, keep_up_to: int = BUFFER_BYTES
    ) -> None:
        self._new_packer = new_packer
        self._keep_up_to = keep_up_to
        self._free: list[_Packer] = []

    def pack(self, value: Any) -> bytes:
        """`msgpack.packb(value, use_bin_type=True)`, with a Packer nobody else holds.

        Raises what msgpack raises for a value it cannot encode (that Packer is then
        dropped, not put back)."""
        free = self._free
        packer = free.pop() if free else self._new_packer()
        data = packer.pack(value)
        if len(data) <= self._keep_up_to:  # its buffer never grew
            free.append(packer)
        return data

    def pack_each(self, values: Iterable[Any]) -> list[bytes]:
        """`pack` of each value, in order, with one Packer taken once for them all (a
        save encodes every entry of a Ready: one pool round trip, not one an entry)."""
        free = self._free
        packer = free.pop() if free else self._new_packer()
        out = [packer.pack(value) for value in values]
        if all(len(data) <= self._keep_up_to for data in out):  # its buffer never grew
            free.append(packer)
        return out

    def idle(self) -> int:
        """How many Packers wait for a caller: at most how many ever encoded at once."""
        return len(self._free)


_POOL = PackerPool()
pack = _POOL.pack
"""The process's pool: `pack(value)` wherever `msgpack.packb(value, use_bin_type=True)`
would run per write or per message."""
pack_each = _POOL.pack_each
