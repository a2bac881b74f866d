"""What a leader knows about each follower, and the flow control that follows from it.

A follower is PROBE while the leader does not know where their logs match: one
AppendEntries at a time, so a rejection costs one message. Once a response shows
a match it is REPLICATE: entries are pipelined optimistically, at most
`max_inflight` messages and `max_inflight_bytes` of entries unacknowledged, so a slow
or dead follower never makes the leader buffer without bound, and a follower far
behind gets a few batches per acknowledgement rather than the whole window at once.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from consensus.config import Config
from consensus.types import Entry, entries_size

SNAPSHOT_RETRY_TIMEOUTS = 3
"""Election timeouts a leader waits for a snapshot to be acknowledged before it asks
the driver to send it again (the driver resumes a transfer still under way)."""


def heartbeats_per_timeout(config: Config) -> int:
    """Heartbeat rounds in one election timeout (at least two): the unit in which a
    leader counts a stalled pipeline and a snapshot awaiting its acknowledgement."""
    return max(2, -(-config.election_tick // config.heartbeat_tick))


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"
    """The follower needs entries that were compacted: a snapshot is on its way, and
    nothing else is sent until it answers or the transfer is given up."""


@dataclass(frozen=True, slots=True)
class PeerProgress:
    """A read-only copy of what the leader knows about one member, for drivers and
    operators (e.g. to promote a learner once `match` reached the commit index)."""

    match: int
    """The highest index known to be stored on the member."""
    next: int
    """The next index the leader will send it."""
    state: str
    """"probe", "replicate" or "snapshot" (see ProgressState)."""
    recent_active: bool
    """Heard from since the last CheckQuorum round (every election timeout)."""


class Progress:
    __slots__ = (
        "commit_sent",
        "inflight",
        "inflight_bytes",
        "match",
        "match_at_heartbeat",
        "max_inflight",
        "max_inflight_bytes",
        "next",
        "pending_snapshot",
        "probe_sent",
        "read_ack",
        "recent_active",
        "snapshot_heartbeats",
        "stalled_heartbeats",
        "state",
    )

    def __init__(self, next_index: int, config: Config) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[tuple[int, int]] = deque()
        """(last index, entry bytes) of each AppendEntries not acknowledged yet."""
        self.inflight_bytes = 0
        self.max_inflight = config.max_inflight
        self.max_inflight_bytes = config.max_inflight_bytes
        self.recent_active = False
        self.read_ack = 0
        self.commit_sent = 0
        """The commit index of the last AppendEntries sent to this peer."""
        self.match_at_heartbeat = 0
        self.stalled_heartbeats = 0
        self.pending_snapshot = 0
        self.snapshot_heartbeats = 0

    def public(self) -> PeerProgress:
        return PeerProgress(self.match, self.next, self.state.value, self.recent_active)

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        full = len(self.inflight) >= self.max_inflight
        return full or self.inflight_bytes >= self.max_inflight_bytes

    def sent(self, entries: Sequence[Entry]) -> None:
        """Record an AppendEntries carrying `entries` (maybe none)."""
        if self.state is ProgressState.REPLICATE:
            if entries:
                size = entries_size(entries)
                self.next = entries[-1].index + 1
                self.inflight.append((entries[-1].index, size))
                self.inflight_bytes += size
        else:
            self.probe_sent = True

    def maybe_update(self, match: int) -> bool:
        """A success response for `match`; returns whether it told us anything new."""
        updated = match > self.match
        if updated:
            self.match = match
            self.probe_sent = False
        self.next = max(self.next, match + 1)
        while self.inflight and self.inflight[0][0] <= match:
            self.inflight_bytes -= self.inflight.popleft()[1]
        return updated

    def is_stalled(self, last_index: int) -> bool:
        """Appends are in flight, the follower lags, and nothing moved since the last
        heartbeat."""
        return bool(self.inflight) and self.match == self.match_at_heartbeat < last_index

    def heartbeat(self, last_index: int, stall_limit: int) -> None:
        """A heartbeat round: a pipeline stalled for `stall_limit` rounds, or a snapshot
        unacknowledged for SNAPSHOT_RETRY_TIMEOUTS times as many, is probed again."""
        if self.state is ProgressState.REPLICATE:
            if self.is_stalled(last_index):
                self.stalled_heartbeats += 1
                if self.stalled_heartbeats >= stall_limit:
                    self.become_probe()
            else:
                self.stalled_heartbeats = 0
            self.match_at_heartbeat = self.match
        elif self.state is ProgressState.SNAPSHOT:
            self.snapshot_heartbeats += 1
            if self.snapshot_heartbeats >= SNAPSHOT_RETRY_TIMEOUTS * stall_limit:
                self.become_probe()

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.stalled_heartbeats = 0
        self._forget_inflight()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_heartbeats = 0
        self._forget_inflight()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self._forget_inflight()

    def _forget_inflight(self) -> None:
        self.inflight.clear()
        self.inflight_bytes = 0

    def says_log_ends_below_match(self, conflict_term: int, conflict_index: int) -> bool:
        """A rejection saying the follower's log ends (at conflict_index - 1) below
        `match`. A durable follower never shrinks below what it acknowledged in this
        term, so this is a damaged disk, or an old rejection that reordering delivered
        after the acknowledgement; `probe_rejected` tells them apart."""
        return (
            self.state is not ProgressState.SNAPSHOT
            and conflict_term == 0
            and 0 < conflict_index <= self.match
        )

    def probe_rejected(self, rejected_index: int) -> bool:
        """The rejection answers our probe at the match index itself."""
        return self.state is ProgressState.PROBE and rejected_index == self.match == self.next - 1

    def rewind(self, last_index: int) -> None:
        """The follower's log really ends at `last_index`: probe from there."""
        self.match = last_index
        self.become_probe()

    def is_stale_rejection(self, rejected_index: int) -> bool:
        """A rejection of an index we already know matches, or not the one we probed,
        comes from a delayed or duplicated message and must not move `next` back."""
        if self.state is ProgressState.REPLICATE:
            return rejected_index <= self.match
        if self.state is ProgressState.SNAPSHOT:
            return True
        return rejected_index != self.next - 1
