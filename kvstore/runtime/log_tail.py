"""The newest entries of the log, cached in memory by kvstore.runtime.leveldb_storage so
that replication and apply read them without LevelDB (and its checksums and decoding)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from consensus.types import Entry, entry_sizes


@dataclass(slots=True)
class Tail:
    """The newest entries, [start, end). Never changed where a reader can see it: `save`
    publishes a new one, so a reader holding the old one sees a consistent slice (not
    frozen, for speed: one is built per save; never assign to a published one).

    Successive tails share one list (`items`, holding entry `offset` at position 0): a
    save that only appends (the steady state) extends it in place, past the end of every
    older tail, which therefore never sees the new entries, and moves `start` to trim
    the front. Copying the whole cache at every save (4,096 entries) cost a follower
    ~10 % of its loop time. An overwrite, and a dead front longer than the live part,
    start a new list (amortized: each entry is copied at most once more). `sums`, shared
    and extended alike, holds the running total of the entries' sizes (`sums[i]`: items
    before position i), so the bytes between any two positions, and the front to trim,
    take no walk over the entries (walking them cost a follower ~3 % of its loop time)."""

    start: int
    end: int
    items: list[Entry]
    offset: int
    sums: list[int]

    @staticmethod
    def of(start: int, entries: Sequence[Entry]) -> Tail:
        """A tail holding exactly `entries`, the first at index `start`."""
        items = list(entries)
        return Tail(start, start + len(items), items, start, _running_sizes(0, items))

    @property
    def nbytes(self) -> int:
        return self.sums[self.end - self.offset] - self.sums[self.start - self.offset]

    @property
    def entries(self) -> list[Entry]:
        return self.items[self.start - self.offset : self.end - self.offset]

    def get(self, lo: int, hi: int) -> list[Entry] | None:
        """Entries [lo, hi) if all of them are cached, else None."""
        if lo < self.start or hi > self.end:
            return None
        return self.items[lo - self.offset : hi - self.offset]

    def replaced(self, new: Sequence[Entry], max_entries: int, max_bytes: int) -> Tail:
        """The tail after `new` overwrote everything from new[0].index on, trimmed at the
        front to the limits."""
        first = new[0].index
        items, offset, start, sums = self.items, self.offset, self.start, self.sums
        if first == self.end and offset + len(items) == first:
            items.extend(new)  # only past every published tail's end: none of them sees it
            sums += _running_sizes(sums[-1], new)[1:]
        elif first >= start:
            items, offset = items[start - offset : first - offset] + list(new), start
            sums = _running_sizes(0, items)
        else:  # the overwrite reaches below the cache: nothing cached survives
            items, offset, start = list(new), first, first
            sums = _running_sizes(0, items)
        end = first + len(new)
        start = max(start, end - max_entries)
        low = sums[end - offset] - max_bytes  # the front goes until the rest fits
        if sums[start - offset] < low:
            start = offset + bisect_left(sums, low, start - offset, end - offset)
        if start - offset > end - start:  # more dead than live: drop the dead front
            items, sums = (
                items[start - offset : end - offset],
                sums[start - offset : end - offset + 1],
            )
            offset = start
        return Tail(start, end, items, offset, sums)


def _running_sizes(total: int, entries: Sequence[Entry]) -> list[int]:
    """[total, total + size of the first entry, ...]: one more item than `entries`
    (each `Entry.size()`, iterated in C)."""
    return list(accumulate(entry_sizes(entries), initial=total))
