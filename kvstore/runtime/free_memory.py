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


def _find_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _find_trim()


def release_free_memory() -> bool:
    """Return free heap memory to the system; True if this C library can."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
