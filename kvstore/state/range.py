"""Range reads over a KeySpace, at the current revision or a retained past one.

At a past revision R the answer is the current keys with every change after R undone
(`History.state_at`): a small dict of keys whose state differs, merged into the sorted
key list. So a page at R costs O(log n + page + changes after R), and every page of a
paged read taken at the same R shows the same cut of the store, whatever was written
between the pages.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from itertools import islice

from kvstore.state.keyrange import RangeQuery
from kvstore.state.keyspace import KeySpace
from kvstore.state.records import unpack
from kvstore.state.types import KeyValue, RangeResult


def run_range(space: KeySpace, query: RangeQuery) -> RangeResult:
    """Raises Compacted / FutureRevision (kvstore.state.history) for an unreadable revision."""
    current = space.revision
    revision = query.revision or current
    space.history.check(revision, current)
    keys = query.keys
    changed = space.history.state_at(revision, keys.__contains__) if revision < current else {}
    lo, hi = space.bounds(keys)
    count = hi - lo + sum((then is not None) - (key in space) for key, then in changed.items())
    if query.count_only:
        return RangeResult(revision, (), count, False)
    if query.newest_first:
        found = _newest_first(space, lo, hi, changed, query)
    else:
        found = _in_key_order(space, lo, hi, changed, query)
    limit = query.limit
    page = list(islice(found, limit + 1 if limit else None))
    more = bool(limit) and len(page) > limit
    if more:
        page.pop()
    if query.keys_only:
        page = [
            KeyValue(kv.key, b"", kv.version, kv.create_revision, kv.mod_revision) for kv in page
        ]
    return RangeResult(revision, tuple(page), count, more)


def _in_key_order(
    space: KeySpace, lo: int, hi: int, changed: dict[str, KeyValue | None], query: RangeQuery
) -> Iterator[KeyValue]:
    after = query.after
    if after is not None:
        lo = max(lo, space.bounds_after(after.key))
    hi = max(lo, hi)
    extra = sorted(k for k in changed if after is None or k > after.key)
    get = space.get
    previous = None
    for key in heapq.merge(space.iter_from(lo, hi), extra):
        if key == previous:
            continue
        previous = key
        kv = changed[key] if key in changed else get(key)
        if kv is not None:
            yield kv


def _newest_first(
    space: KeySpace, lo: int, hi: int, changed: dict[str, KeyValue | None], query: RangeQuery
) -> Iterator[KeyValue]:
    records = space.records
    items = [unpack(k, records[k]) for k in space.iter_from(lo, hi) if k not in changed]
    items += [kv for kv in changed.values() if kv is not None]
    items.sort(key=lambda kv: (-kv.mod_revision, kv.key))
    after = query.after
    if after is None:
        return iter(items)
    mark = (-after.mod_revision, after.key)
    return (kv for kv in items if (-kv.mod_revision, kv.key) > mark)
