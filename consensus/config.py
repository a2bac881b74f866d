"""Static settings of one Raft node. Times are in ticks; the driver decides how long a tick is."""

from __future__ import annotations

from dataclasses import dataclass

from consensus.types import NodeId


@dataclass(frozen=True, slots=True)
class Config:
    node_id: NodeId
    voters: tuple[NodeId, ...]
    """The initial voters, used while storage holds no snapshot. Empty for a node that
    joins an existing cluster: it learns the membership from the leader."""
    election_tick: int = 10
    """A follower campaigns after a random timeout in [election_tick, 2 * election_tick)."""
    heartbeat_tick: int = 1
    max_inflight: int = 64
    """AppendEntries messages in flight per follower before the leader waits for acks."""
    max_batch_bytes: int = 1 << 20
    """Upper bound on the entry bytes of one AppendEntries."""
    max_inflight_bytes: int = 2 << 20
    """Entry bytes in flight per follower before the leader waits for acks (as etcd's
    MaxInflightBytes). Without it a follower far behind (a new node after its snapshot)
    got the whole window at once, 64 batches of 1 MiB read, decoded and encoded in one
    turn: at a million keys that stalled the leader's loop for a second, its followers
    elected another leader, which did the same. A batch always goes out when none is
    in flight, so a limit below max_batch_bytes slows catching up but never stops it."""
    max_uncommitted_entries: int = 8192
    """Back-pressure: proposals are refused while this many entries await commitment,
    so a leader whose followers fall behind does not grow its log without bound."""
    check_quorum: bool = True
    pre_vote: bool = True

    def __post_init__(self) -> None:
        if self.voters and self.node_id not in self.voters:
            raise ValueError(f"node {self.node_id!r} is not among the voters {self.voters}")
        if len(set(self.voters)) != len(self.voters):
            raise ValueError(f"duplicate voters in {self.voters}")
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 1 <= heartbeat_tick < election_tick")
        limits = (self.max_inflight, self.max_inflight_bytes, self.max_batch_bytes)
        if min(*limits, self.max_uncommitted_entries) < 1:
            raise ValueError(
                "max_inflight, max_inflight_bytes, max_batch_bytes, max_uncommitted_entries"
                " must be >= 1"
            )
