"""kvstore.runtime.free_memory: memory freed by a snapshot goes back to the system.

glibc keeps freed heap memory below a block still in use; a node's RSS kept each
snapshot's transient peak that way. The test frees ~80 MB below one live block and
requires the RSS to drop by most of it once `release_free_memory` ran.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consensus.codec import encode_entry, encode_hard_state, encode_messages
from consensus.messages import AppendEntries, AppendEntriesResponse
from consensus.packing import BUFFER_BYTES
from consensus.types import Entry, HardState
from kvstore.runtime.free_memory import MMAP_THRESHOLD, release_free_memory, tune_malloc
from kvstore.state.commands import Put, encode_command

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


def _minor_faults() -> int:
    """Page faults of this process so far: each fresh mmap'd block faults when written."""
    after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(after_name[7])  # field 10, minflt


@pytest.mark.skipif(not STATUS.exists(), reason="needs /proc")
def test_encoding_a_write_maps_no_memory_at_the_pinned_threshold() -> None:
    """msgpack.packb allocates a fresh 256 KiB buffer per call: with the threshold pinned
    below it, each was an mmap, a munmap and a page fault (7.4 us instead of 0.56 us;
    1-1.5 per write on a node, +4.5 % node CPU per write). The encoders of a write's
    command, log entries, hard state and peer batches reuse Packers whose buffer stays
    below the threshold, so none of them maps fresh pages, however many run."""
    assert tune_malloc()
    assert BUFFER_BYTES + 4096 < MMAP_THRESHOLD  # the Packers' buffers come from the heap
    command = Put("key-00000001", b"x" * 256, None)
    entries = [Entry(7, 100 + i, encode_command(command)) for i in range(8)]
    append = AppendEntries(7, "n1", "n2", 99, 7, tuple(entries), 99)
    ack = AppendEntriesResponse(7, "n2", "n1", True, 107)

    def encode_a_write() -> None:
        encode_command(command)
        for entry in entries:
            encode_entry(entry)
        encode_hard_state(HardState(7, "n1", 107))
        encode_messages([append])
        encode_messages([ack, ack])

    encode_a_write()
    before = _minor_faults()
    for _ in range(500):
        encode_a_write()
    assert _minor_faults() - before < 100, "encoding maps fresh pages (one mmap per call?)"
