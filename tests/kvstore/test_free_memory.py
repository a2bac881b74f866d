"""kvstore.runtime.free_memory: memory freed by a snapshot goes back to the system.

glibc keeps freed heap memory below a block still in use; a node's RSS kept each
snapshot's transient peak that way. The test frees ~80 MB below one live block and
requires the RSS to drop by most of it once `release_free_memory` ran.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import pytest

from kvstore.runtime.free_memory import MMAP_THRESHOLD, release_free_memory, tune_malloc

STATUS = Path("/proc/self/status")


def _rss_mb() -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", STATUS.read_text())
    assert match is not None
    return int(match.group(1)) / 1024


@pytest.mark.skipif(not STATUS.exists(), reason="needs /proc")
def test_freed_heap_memory_below_a_live_block_is_returned() -> None:
    blocks = [bytes(4000) + b"%d" % i for i in range(20_000)]  # malloc'd, not pymalloc'd
    kept = blocks[-1]
    del blocks
    held = _rss_mb()
    assert release_free_memory()  # glibc, as on every supported platform
    assert _rss_mb() < held - 50
    assert kept.startswith(bytes(4000))


@pytest.mark.skipif(not STATUS.exists(), reason="needs /proc")
def test_once_tuned_freed_large_blocks_go_back_at_once() -> None:
    """Untuned, freeing one 16 MiB block raises glibc's mmap threshold to 16 MiB, so the
    1 MiB blocks after it come from the heap, and freed between live blocks they stay
    in the RSS until a trim. Tuned, each has pages of its own, given back when freed."""
    assert tune_malloc()  # glibc, as on every supported platform
    first = bytearray(16 << 20)
    del first
    blocks, kept = [], []
    for _ in range(60):
        blocks.append(bytearray(1 << 20))
        kept.append(bytearray(256 << 10))  # live blocks between them
    held = _rss_mb()
    del blocks
    assert _rss_mb() < held - 40
    assert len(kept) == 60


def test_the_pinned_threshold_keeps_msgpack_buffers_on_the_heap() -> None:
    """Every msgpack.packb allocates a Packer buffer (256 KiB in msgpack 1.1) and frees
    it at once, several times per write. At or above the pinned threshold each one was
    an mmap, a munmap and a page fault (measured in a fresh process: 7.4 us per packb
    against 0.56 us below it; on a node 1-1.5 mmap and munmap per write), so the
    threshold must stay above that buffer."""
    signature = msgpack.Packer.__doc__ or ""
    found = re.search(r"buf_size=(0x[0-9a-fA-F]+|[0-9]+)", signature)
    assert found is not None, "msgpack's Packer no longer names its buffer size"
    assert int(found.group(1), 0) + 4096 < MMAP_THRESHOLD
