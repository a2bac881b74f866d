"""Giving the memory a finished snapshot used back to the system (glibc's malloc_trim).

Why: taking a snapshot allocates tens of MB for a moment (the captured keys in chunks,
the serializer's buffers) and frees them; glibc keeps freed heap memory for reuse, so
each node's RSS kept a snapshot's transient peak for good, on top of the state itself
(issue 17's goal is RSS at most twice the raw values). `malloc_trim(0)` returns every
free page of every arena. It runs in a worker thread: ctypes releases the GIL for the
call, so the event loop does not wait for it. On a C library without it (musl), this
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any


def _find(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """glibc's function `name`, or None on a C library without it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None
    function = getattr(libc, name, None)
    if function is None:
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_TRIM = _find("malloc_trim", ctypes.c_size_t)
_MALLOPT = _find("mallopt", ctypes.c_int, ctypes.c_int)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 << 10
"""Blocks from this size up get pages of their own, given back when freed (at 1M keys,
128 KiB kept each node's RSS 10-17 MiB lower than 512 KiB). Above the buffer of the
Packers encoding runs with (consensus/packing.py): a fresh `msgpack.packb` allocates a
256 KiB buffer and frees it at once, so per write (commands, log entries, peer batches)
each would be an mmap, a munmap and page faults (+4.5 % node CPU per write)."""
ARENA_MAX = 2
"""Heaps (arenas) malloc keeps, however many threads allocate."""


def tune_malloc() -> bool:
    """Once, at start: make glibc keep less freed memory; True if this C library can.

    Why: glibc raises its mmap threshold to the size of each large block freed (up to
    32 MiB); from then on blocks below that size (snapshot chunks, peer batches, a
    node's big tables) come from the heap and, freed, stay in the RSS as holes until a
    trim (measured: 60 freed 1 MiB blocks held 60 MiB after one 4 MiB block was freed;
    none with the threshold pinned). Pinning it turns that adjustment off. And each
    thread that allocates (persist, snapshot, LevelDB's own) may get an arena of its
    own, each keeping its own free memory; two are enough for a node's few threads."""
    if _MALLOPT is None:
        return False
    pinned = _MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(pinned and _MALLOPT(_M_ARENA_MAX, ARENA_MAX))


def release_free_memory() -> bool:
    """Return free heap memory to the system; True if this C library can."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
