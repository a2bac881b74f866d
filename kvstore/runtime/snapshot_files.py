"""Snapshot bytes in a file of their own beside the LevelDB log.

Why not a LevelDB value (as before): a snapshot of a million keys is ~300 MB. As a value
it is written three times (LevelDB's log, then a table, then compactions), sits in the
memtable, and had to be written by the thread that owns the log. As a file it is
written once, by the compaction thread, streamed as it is serialized, and fsynced
before the log points at it; the log then only stores its name, size and CRC32
(kvstore.runtime.leveldb_storage), so replacing the snapshot is a small batch.

Files live in `<leveldb dir>/snapshots/` as `snapshot-<index>-<term>.bin`, written
under a `.tmp` name and renamed once complete and synced. Anything else there (a file
of an interrupted write, or of a snapshot already replaced) is removed when the log is
opened, and an old snapshot's file once the log no longer points at it.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from consensus.types import SnapshotMeta


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A complete, synced snapshot file: its name in the directory, size and CRC32."""

    name: str
    size: int
    crc: int


SYNC_EVERY_BYTES = 8 << 20
"""Flush the file to disk after every this many bytes written, not once at the end."""


class _Checksummed:
    """A write-only stream that counts and checksums what passes through it, and
    syncs the file every SYNC_EVERY_BYTES.

    Why sync along the way: with ext4's ordered data mode, the next log fsync commits
    the journal, which must first write every dirty block allocated since, so one
    300 MB file synced at the end made each node's log fsyncs wait for it (measured:
    100-1,000 ms fsyncs, followers silent for longer than the election timeout, the
    leader stepping down). Synced 8 MB at a time, a log fsync waits for 8 MB at most."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._unsynced = 0
        self.size = 0
        self.crc = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)
        self._unsynced += len(data)
        if self._unsynced >= SYNC_EVERY_BYTES:
            self._out.flush()
            os.fdatasync(self._out.fileno())
            self._unsynced = 0
        return len(data)


class SnapshotFiles:
    """The directory of snapshot files; writing may happen in any one thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, meta: SnapshotMeta, fill: Callable[[BinaryIO], object]) -> SnapshotFile:
        """Create the file of `meta`'s snapshot with what `fill` writes, durably."""
        self.directory.mkdir(exist_ok=True)
        name = f"snapshot-{meta.index}-{meta.term}.bin"
        tmp = self.directory / (name + ".tmp")
        with open(tmp, "wb") as raw:
            out = _Checksummed(raw)  # type: ignore[arg-type]
            fill(out)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, self.directory / name)
        self._sync_directory()
        return SnapshotFile(name, out.size, out.crc)

    def read(self, file: SnapshotFile) -> bytes:
        """The bytes of `file`; ValueError when they are not what was written."""
        data = (self.directory / file.name).read_bytes()
        if len(data) != file.size:
            raise ValueError(f"{file.name} holds {len(data)} bytes, not {file.size}")
        crc = zlib.crc32(data)
        if crc != file.crc:
            raise ValueError(f"{file.name}: checksum mismatch ({crc:#010x}, not {file.crc:#010x})")
        return data

    def keep_only(self, file: SnapshotFile | None) -> None:
        """Remove every file in the directory but `file`'s."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if file is None or path.name != file.name:
                path.unlink(missing_ok=True)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
