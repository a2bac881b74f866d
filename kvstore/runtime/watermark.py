"""The committed watermark: a lower bound of this node's commit index and term, kept
in a small file beside LevelDB's own files.

Why outside LevelDB: LevelDB recovers a damaged or truncated `.log` by dropping what
it cannot read, whole write batches at a time: entries AND the hard state written with
them. The log it then opens looks consistent, only shorter, and nothing inside it can
tell that entries this node acknowledged (and votes it cast) are gone. A file written
apart (fsynced, then renamed into place) still says how far the log had been
committed; a log that ends below it has lost a promise, and the node must not start.

It is written after the batch it describes is durable, at most every `interval_s`
(and at close), so it may lag the log but never lead it: committed entries are never
truncated and terms never go down, so a log that is intact is always at or above it.
"""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

from consensus.types import HardState

FILE_NAME = "COMMITTED"
"""Inside the LevelDB directory: LevelDB leaves files it does not name alone, and the
two are wiped together."""


class WatermarkError(ValueError):
    """The watermark file exists but is not one this code wrote."""


class CommitWatermark:
    """`read()` what was recorded; `advance()` after every synced batch; `flush()` at
    close. Only one thread calls `advance`/`flush` at a time (the storage's writer)."""

    def __init__(self, directory: Path, interval_s: float) -> None:
        self._path = directory / FILE_NAME
        self._interval = interval_s
        self._written = (0, 0)
        self._latest = (0, 0)
        self._last_write = float("-inf")

    @property
    def path(self) -> Path:
        return self._path

    def read(self) -> tuple[int, int]:
        """(term, commit) as last recorded; (0, 0) when there is no file yet."""
        try:
            text = self._path.read_text()
        except FileNotFoundError:
            return (0, 0)
        fields = text.split()
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            raise WatermarkError(f"unreadable watermark file {self._path}")
        term, commit, crc = (int(f) for f in fields)
        if zlib.crc32(f"{term} {commit}".encode()) != crc:
            raise WatermarkError(f"watermark file {self._path} fails its checksum")
        self._written = self._latest = (term, commit)
        return term, commit

    def advance(self, hard_state: HardState) -> None:
        """`hard_state` is durable now; record it if the interval has passed."""
        latest = (hard_state.term, hard_state.commit)
        if latest > self._latest:
            self._latest = latest
        if self._latest != self._written and time.monotonic() - self._last_write >= self._interval:
            self.flush()

    def flush(self) -> None:
        if self._latest == self._written:
            return
        term, commit = self._latest
        body = f"{term} {commit}"
        tmp = self._path.with_name(FILE_NAME + ".tmp")
        with open(tmp, "w") as f:
            f.write(f"{body} {zlib.crc32(body.encode())}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        self._written = self._latest
        self._last_write = time.monotonic()
