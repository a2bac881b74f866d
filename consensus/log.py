"""The Raft log as the core sees it: stable entries in storage plus an unstable tail.

The unstable tail holds entries appended in memory that the driver has not yet
confirmed durable (via `advance`). Keeping the two apart is what lets the core
hand out exactly the entries that must be persisted next, while reading older
entries through the storage protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consensus.errors import CompactedError
from consensus.storage import Storage, limit_size
from consensus.types import Entry, EntryType, SnapshotMeta

CONF_SCAN_STEP = 1024
"""At most this many committed entries are read per `committed_change_not_handed_out`."""


@dataclass(unsafe_hash=True, slots=True)
class AppendResult:
    """A follower's verdict on an AppendEntries: the content of its answer (a value,
    never assigned to; plain rather than frozen for speed, see consensus.types)."""

    success: bool
    match_index: int
    """On success the last index known to match the leader; else the rejected index."""
    conflict_term: int = 0
    conflict_index: int = 0


class RaftLog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.pending_snapshot: SnapshotMeta | None = None
        """A snapshot from the leader that the driver has yet to install."""
        self._unstable: list[Entry] = []
        self._unstable_offset = storage.last_index() + 1
        self.committed = storage.initial_state().commit
        first = storage.first_index()
        self.applied = first - 1
        self._applying = self.applied
        if self.committed < self.applied:
            self.committed = self.applied
        self._conf_scanned = self.applied
        """Committed entries up to here were read for membership changes (they never change)."""
        self._conf_changes: list[int] = []
        """The membership changes found there, beyond what was handed out when found."""

    # --- reading -----------------------------------------------------------------

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self._unstable:
            return self._unstable[-1].index
        return self._unstable_offset - 1

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term of `index`, or 0 when the index is past the end of the log. Raises
        CompactedError for an index inside the snapshot (its own index is fine)."""
        if index == 0:
            return 0  # the empty prefix every log starts from, compacted or not
        if index >= self._unstable_offset:
            position = index - self._unstable_offset
            return self._unstable[position].term if position < len(self._unstable) else 0
        if self.pending_snapshot is not None:
            if index == self.pending_snapshot.index:
                return self.pending_snapshot.term
            raise CompactedError(f"index {index} is inside the snapshot being installed")
        if index > self.storage.last_index():
            return 0
        return self.storage.term(index)

    def match_term(self, index: int, term: int) -> bool:
        return index <= self.last_index() and self.term(index) == term

    def entries(self, lo: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries from `lo` to the end of the log, at most `max_bytes` (but at least one)."""
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi), reading storage for the stable part and memory for the rest."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted (first index {self.first_index()})")
        result: list[Entry] = []
        if lo < self._unstable_offset:
            result = self.storage.entries(lo, min(hi, self._unstable_offset), max_bytes)
            if len(result) < min(hi, self._unstable_offset) - lo:
                return result  # the byte limit cut the stable part already
        if hi > self._unstable_offset:
            start = max(lo, self._unstable_offset) - self._unstable_offset
            result = result + self._unstable[start : hi - self._unstable_offset]
        return limit_size(result, max_bytes)

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """The election restriction (§5.4.1): is a log ending at (last_index, last_term)
        at least as up to date as ours?"""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def first_index_of_term(self, index: int) -> int:
        """First index of the run of entries sharing the term of `index`, never going
        below the commit index + 1 (committed entries are never in conflict)."""
        term = self.term(index)
        floor = max(self.committed + 1, self.first_index())
        while index > floor and self.term(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int, at_most: int) -> int | None:
        """Last index <= at_most whose entry has `term`, if the log has any."""
        index = min(at_most, self.last_index())
        floor = self.first_index()
        while index >= floor:
            entry_term = self.term(index)
            if entry_term == term:
                return index
            if entry_term < term:
                return None
            index -= 1
        return None

    # --- writing -----------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that follow or overwrite the tail; never touches committed entries."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise AssertionError(f"append at {first} would overwrite committed {self.committed}")
        if first > self.last_index() + 1:
            raise AssertionError(f"append at {first} leaves a gap after {self.last_index()}")
        if first >= self._unstable_offset:
            del self._unstable[first - self._unstable_offset :]
        else:
            # Overwriting stable entries: the new tail starts here and will replace them on disk.
            self._unstable = []
            self._unstable_offset = first
        self._unstable.extend(entries)

    def append_checked(self, entries: Sequence[Entry]) -> None:
        """Receiver rule 3 and 4 of AppendEntries: skip entries we already hold, truncate
        at the first conflicting one and append the rest. A shorter, older message
        therefore never truncates a longer matching log."""
        for position, entry in enumerate(entries):
            if entry.index > self.last_index() or self.term(entry.index) != entry.term:
                self.append(entries[position:])
                return

    def maybe_append(
        self, prev_index: int, prev_term: int, entries: Sequence[Entry], leader_commit: int
    ) -> AppendResult:
        """The receiver side of AppendEntries (§5.3): append when our log holds the
        leader's (prev_index, prev_term), and learn the leader's commit index."""
        committed = self.committed
        if prev_index < committed:
            # Our committed prefix matches every current leader's log: skip the part of
            # the message it covers (a delayed or duplicated message) and keep the rest.
            if prev_index + len(entries) <= committed:
                return AppendResult(True, match_index=committed)
            entries = entries[committed - prev_index :]
            prev_index, prev_term = committed, self.term(committed)
        if self.match_term(prev_index, prev_term):
            last_new = prev_index + len(entries)
            self.append_checked(entries)
            self.commit_to(min(leader_commit, last_new))
            return AppendResult(True, match_index=last_new)
        # Conflict back-off: name the term we hold at prev_log_index and the first index
        # of that term, so the leader skips the whole term in one round trip.
        if prev_index > self.last_index():
            conflict_term, conflict_index = 0, self.last_index() + 1
        else:
            conflict_term = self.term(prev_index)
            conflict_index = self.first_index_of_term(prev_index)
        return AppendResult(False, prev_index, conflict_term, conflict_index)

    def maybe_restore(self, snapshot: SnapshotMeta) -> bool:
        """The receiver side of InstallSnapshot: replace the log by `snapshot` unless we
        hold its last entry already (then keep the log and just learn the commit).
        Returns whether the log was replaced; `committed` is the match point after."""
        if snapshot.index <= self.committed:
            return False
        if self.match_term(snapshot.index, snapshot.term):
            self.commit_to(snapshot.index)
            return False
        self.restore(snapshot)
        return True

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot from the leader; the driver installs it
        with the next Ready, and entries after it arrive by AppendEntries."""
        self.pending_snapshot = snapshot
        self._unstable = []
        self._unstable_offset = snapshot.index + 1
        self.committed = snapshot.index
        self._applying = snapshot.index

    def first_conf_change(self, lo: int, hi: int) -> int | None:
        """The index of the first membership change in [lo, hi) still in the log."""
        entries = self.slice(max(lo, self.first_index()), hi)
        return next((e.index for e in entries if e.type is EntryType.CONF_CHANGE), None)

    def snapshot_installed(self, snapshot: SnapshotMeta) -> None:
        if self.pending_snapshot == snapshot:
            self.pending_snapshot = None
        self.applied = max(self.applied, snapshot.index)
        self._applying = max(self._applying, snapshot.index)

    def commit_to(self, index: int) -> bool:
        index = min(index, self.last_index())
        if index > self.committed:
            self.committed = index
            return True
        return False

    # --- the Ready hand-off -------------------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        return list(self._unstable)

    def last_stable_index(self) -> int:
        """The last index the driver has confirmed durable."""
        return self._unstable_offset - 1

    def has_unstable(self) -> bool:
        return bool(self._unstable)

    def stable_to(self, index: int, term: int) -> None:
        """The driver made entries up to `index` durable. Ignored when the tail changed
        meanwhile (the entry at `index` is no longer the one that was persisted)."""
        if index < self._unstable_offset or self.term(index) != term:
            return
        del self._unstable[: index - self._unstable_offset + 1]
        self._unstable_offset = index + 1

    def committed_change_not_handed_out(self, after: int) -> bool:
        """A committed membership change beyond index `after` that the driver has not
        been given yet (so it has not taken effect), as far as is known.

        Asked at every campaign. After a restart the committed entries not yet handed out
        can be hundreds of thousands (a long log tail to apply again): reading them all
        at every election timeout stalled the loop for seconds. So committed entries are
        read once, at most CONF_SCAN_STEP per call, and a part not read yet counts as
        holding a change: such a node applies (and reads) before it campaigns, which a
        node that must serve linearizable reads does anyway."""
        lo = max(self._applying, self._conf_scanned) + 1
        hi = min(self.committed, lo + CONF_SCAN_STEP - 1)
        if hi >= lo:
            self._conf_changes += [
                e.index for e in self.slice(lo, hi + 1) if e.type is EntryType.CONF_CHANGE
            ]
        self._conf_scanned = max(lo - 1, hi)
        self._conf_changes = [i for i in self._conf_changes if i > self._applying]
        if self._conf_scanned < self.committed:
            return True
        return any(index > after for index in self._conf_changes)

    def has_next_committed(self) -> bool:
        return self.committed > self._applying

    def next_committed(self, max_bytes: int | None) -> list[Entry]:
        entries = self.slice(self._applying + 1, self.committed + 1, max_bytes)
        if entries:
            self._applying = entries[-1].index
        return entries

    def applied_to(self, index: int) -> None:
        self.applied = max(self.applied, index)
        self._applying = max(self._applying, index)
