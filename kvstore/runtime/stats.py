"""Counters and fixed-bucket histograms the runtime keeps for `GET /metrics`.

Plain integers and lists, no locks and no Prometheus objects: the event loop thread is
the only writer, and an observation on the write path must cost a fraction of a
microsecond (a `bisect` and two additions), not the lock and label lookup of a
prometheus_client Histogram. kvstore.api.metrics turns these into the exposition
format when Prometheus scrapes; everything that is a current value (term, indexes,
replication lag) is read from the runtime at that moment instead of being kept here.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from consensus.types import Entry, entries_size
from kvstore.runtime.gc_pauses import GcPauses

LATENCY_BOUNDS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Seconds; from a fast local fsync to the request timeout."""
SNAPSHOT_BOUNDS_S = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Entries per fsync: how well group commit batches concurrent writes."""
LEADER_HISTORY = 20
LOOP_LAG_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Buckets:
    """A histogram as Prometheus means it: `counts[i]` observations fell at or below
    `bounds[i]` and above the bound before it; the last slot is +Inf. Cumulative sums
    are made only when scraped."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, cumulative count)], ending with ("+Inf", total)."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class LoopLag:
    """How late the event loop ran (kvstore.runtime.loop_lag writes it, on the loop)."""

    __slots__ = ("buckets", "max_busy_s", "max_loop_cpu_s", "max_s")

    def __init__(self) -> None:
        self.buckets = Buckets(LOOP_LAG_BOUNDS_S)
        self.max_s = 0.0
        self.max_busy_s = 0.0
        """The worst stall counting only time the process was on a CPU (an upper bound of
        the node's own part: it includes its other threads)."""
        self.max_loop_cpu_s = 0.0
        """The worst stall counting only the event loop thread's own CPU time (a lower
        bound: it leaves out waits for the GIL)."""

    def observe(self, lag_s: float, busy_s: float, loop_cpu_s: float) -> None:
        self.buckets.observe(lag_s)
        self.max_s = max(self.max_s, lag_s)
        self.max_busy_s = max(self.max_busy_s, busy_s)
        self.max_loop_cpu_s = max(self.max_loop_cpu_s, loop_cpu_s)


@dataclass(frozen=True, slots=True)
class LeaderChange:
    """One change of the leader as this node saw it, for the status page."""

    at: float
    """time.time() when this node noticed it."""
    term: int
    leader: str | None
    cause: str


class RuntimeStats:
    """What the runtime counts as it goes (owned by NodeRuntime)."""

    def __init__(self) -> None:
        self.proposals = 0
        """Commands and membership changes this node proposed as leader."""
        self.applied_entries = 0
        """Committed entries applied to the state machine since the process started."""
        self.applied_bytes = 0
        """Their approximate log size (`Entry.size`): what decides when to snapshot."""
        self.commit_latency = Buckets(LATENCY_BOUNDS_S)
        """From propose to applied on the leader, for proposals that succeeded."""
        self.persist_seconds = Buckets(LATENCY_BOUNDS_S)
        """One synced write batch (a Ready's entries and hard state)."""
        self.persist_entries = Buckets(BATCH_BOUNDS)
        self.snapshot_seconds = Buckets(SNAPSHOT_BOUNDS_S)
        """Taking a snapshot: capture on the loop, serialize in a thread, store."""
        self.snapshot_install_seconds = Buckets(SNAPSHOT_BOUNDS_S)
        """Installing a snapshot received from the leader."""
        self.loop_lag = LoopLag()
        """Fed by kvstore.runtime.loop_lag while `kv serve` runs."""
        self.gc_pauses = GcPauses()
        """The garbage collector's pauses; installed while `kv serve` runs."""
        self.leader_changes = 0
        self.leader_history: deque[LeaderChange] = deque(maxlen=LEADER_HISTORY)

    def applied(self, entries: Sequence[Entry]) -> None:
        self.applied_entries += len(entries)
        self.applied_bytes += entries_size(entries)

    def persisted(self, seconds: float, entries: int) -> None:
        self.persist_seconds.observe(seconds)
        if entries:  # a hard-state-only sync (a vote, a commit index) is no batch
            self.persist_entries.observe(entries)

    def leader_changed(self, term: int, leader: str | None, cause: str) -> None:
        self.leader_changes += 1
        self.leader_history.append(LeaderChange(time.time(), term, leader, cause))
