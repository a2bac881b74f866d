"""Nodes take their snapshots at different indexes (kvstore.runtime.snapshots).

Every node applies the same log; by the log-bytes bound alone all of them serialized
the whole state at the same index at once, which starved the loops under load. These
tests drive `snapshot_due` as the runtime does (a check after every batch applied) for
a fill of a million keys followed by three million overwrites, and check both promises:
snapshots of different nodes are far apart, and no node's log outgrows the bound."""

from __future__ import annotations

import itertools

from kvstore.runtime.snapshots import LOG_TO_SNAPSHOT_RATIO, snapshot_due

EVERY = 10_000
ENTRY_BYTES = 300
"""A 256-byte put in the log, with its key and framing."""
KEY_BYTES = 290
"""The same key in a snapshot."""
BATCH = 100
"""Entries applied between two checks (a Ready's worth)."""


def simulate(ids: tuple[str, ...], keys: int, overwrites: int) -> tuple[dict[str, list[int]], int]:
    """Each node's snapshot indexes, and the most log bytes any node held past its
    bound (max(EVERY entries, ratio * last snapshot)) at a check."""
    taken: dict[str, list[int]] = {node: [] for node in ids}
    last = dict.fromkeys(ids, 0)
    last_bytes = dict.fromkeys(ids, 0)
    log = dict.fromkeys(ids, 0)
    worst = 0
    for index in range(BATCH, keys + overwrites + 1, BATCH):
        for node in ids:
            log[node] += BATCH * ENTRY_BYTES
            bound = max(LOG_TO_SNAPSHOT_RATIO * last_bytes[node], EVERY * ENTRY_BYTES)
            worst = max(worst, int(log[node] - bound))
            if snapshot_due(index, last[node], EVERY, log[node], last_bytes[node], node, ids):
                taken[node].append(index)
                last[node], last_bytes[node], log[node] = index, min(index, keys) * KEY_BYTES, 0
    return taken, worst


def test_three_nodes_snapshot_far_apart_through_a_fill_and_after_it() -> None:
    ids = ("n1", "n2", "n3")
    taken, worst = simulate(ids, 1_000_000, 3_000_000)
    # Two nodes' snapshots are at least P // 3 apart, P >= index / 12: at 1M keys
    # 43,690 entries (~9 s of writes at 5,000/s, three times what a snapshot takes).
    ordered = sorted((index, node) for node, indexes in taken.items() for index in indexes)
    for (a, node_a), (b, node_b) in itertools.pairwise(ordered):
        if node_a != node_b and a > 5 * EVERY:
            assert b - a >= a / 40, f"{node_a} at {a} and {node_b} at {b}"
    # ...no node's log ever outgrew its bound by more than the batch in hand...
    assert worst <= BATCH * ENTRY_BYTES, worst
    # ...at a cost: up to half as many snapshots again as a lone node takes.
    alone, _ = simulate(("n1",), 1_000_000, 3_000_000)
    assert max(map(len, taken.values())) <= 1.5 * len(alone["n1"]), (taken, alone)


def test_at_the_same_log_the_ranks_come_due_a_third_of_the_grid_apart() -> None:
    """Last snapshot at 400,000 of 120 MB (the bound 200,000 entries on): the three
    ranks come due at different indexes, P // 3 apart (P = 65,536 here), all between
    half the bound and the bound."""
    ids, last, last_bytes = ("a", "b", "c"), 400_000, 120_000_000
    due_at = {}
    for node in ids:
        index = last + EVERY
        log = (index - last) * ENTRY_BYTES
        while not snapshot_due(index, last, EVERY, log, last_bytes, node, ids):
            index, log = index + 1, log + ENTRY_BYTES
        due_at[node] = index
    ordered = sorted(due_at.values())
    assert [b - a for a, b in itertools.pairwise(ordered)] == [21_846, 21_845], due_at
    assert last + 100_000 <= ordered[0] and ordered[-1] <= last + 200_000, due_at


def test_a_lone_node_and_a_node_outside_the_membership_follow_the_bound_alone() -> None:
    """Nothing to stagger against: the rule is the bound (and the floor), as before."""
    last, last_bytes = 400_000, 120_000_000
    needed = int(LOG_TO_SNAPSHOT_RATIO * last_bytes)
    for me, members in (("n1", ("n1",)), ("n9", ("n1", "n2", "n3"))):
        assert not snapshot_due(last + 150_000, last, EVERY, needed - 1, last_bytes, me, members)
        assert snapshot_due(last + 150_000, last, EVERY, needed, last_bytes, me, members)
