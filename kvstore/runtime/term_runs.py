"""The term of every stored log entry, as runs of equal terms (for
kvstore.runtime.leveldb_storage, which answers the core's many term questions from
memory).

Why runs, not one number per entry: terms change only at elections, so the log since
the last snapshot is a handful of runs, while an array of one 8-byte term per entry
grew with the log tail: at a million keys a node snapshots once the log reaches half
the snapshot's size, ~470,000 entries of 256 B values (3.6 MiB of terms), against a
goal of RSS at most twice the raw data.

Never changed where a reader can see it: the storage's writer thread publishes a new
TermRuns, and a reader holding the old one sees a consistent log. The common change,
appending entries of the newest run's term, shares the old object's tuples.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from consensus.types import Entry


class TermRuns:
    """Terms of the entries base..last; `base` is the snapshot's index (0: none) and its
    term comes first. Run i covers starts[i] up to the next run's start."""

    __slots__ = ("base", "last", "last_start", "last_term", "starts", "terms")

    def __init__(self, base: int, last: int, starts: tuple[int, ...], terms: tuple[int, ...]):
        self.base = base
        self.last = last
        self.starts = starts
        self.terms = terms
        self.last_start = starts[-1]
        """Where the newest run starts: most questions are about it (see `term`)."""
        self.last_term = terms[-1]

    @staticmethod
    def of(base: int, base_term: int) -> TermRuns:
        """The terms of an empty log after a snapshot at `base` of term `base_term`."""
        return TermRuns(base, base, (base,), (base_term,))

    def term(self, index: int) -> int:
        """The term of entry `index`, base <= index <= last (the caller checks)."""
        if index >= self.last_start:
            return self.last_term
        return self.terms[bisect_right(self.starts, index) - 1]

    def replaced(self, entries: Sequence[Entry]) -> TermRuns:
        """The terms once `entries` (consecutive, the first at most last + 1 and above
        base) overwrote everything from their first index on."""
        first = entries[0].index
        starts, terms = self.starts, self.terms
        if first <= self.last_start:  # the overwrite reaches into older runs: cut them
            keep = bisect_left(starts, first)
            starts, terms = starts[:keep], terms[:keep]
        new_starts: list[int] = []
        new_terms: list[int] = []
        current = terms[-1]  # the run holding `base` is always kept: first > base
        for entry in entries:
            if entry.term != current:
                current = entry.term
                new_starts.append(entry.index)
                new_terms.append(current)
        if new_starts:
            starts, terms = starts + tuple(new_starts), terms + tuple(new_terms)
        return TermRuns(self.base, entries[-1].index, starts, terms)

    def after_snapshot(self, index: int, term: int) -> TermRuns:
        """The terms once a snapshot at `index` (term `term`, within base..last and
        holding that term) replaced the entries up to it; the entries after it stay."""
        keep = bisect_right(self.starts, index)
        return TermRuns(index, self.last, (index, *self.starts[keep:]), (term, *self.terms[keep:]))
