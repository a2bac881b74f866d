"""ReadIndex (Raft dissertation §6.4) with reads batched into heartbeat rounds.

Reads asked for while no round is open share the next round, so a burst of
linearizable reads costs one heartbeat round, not one per read. One round is in
flight at a time: reads asked meanwhile (they cannot join it, its heartbeats left
before they began) wait for it to be confirmed and then share the next one, so a
steady stream of reads costs one round per round trip, not one per Ready. A round with
sequence number s is confirmed when a quorum (the leader included) has echoed a
sequence >= s in the current term; every read of that round and of earlier ones
may then be served at the read index recorded when it was asked (see below).

A read has an origin: None for the leader's own clients, or the follower that asked
for it (ReadIndexRequest); either kind shares the same rounds.

A follower's request that completes a quorum with the leader needs no round
(Leadership.read_index_for answers it at once). Proof: every read in the request
began before the follower sent it, in the leader's term T (the request's term), and
the leader still leads T when it answers. A write acknowledged before such a read
began was committed in a term <= T (a leader of a later term needs the votes of a
quorum, each in that term before the write: the quorum includes the leader or the
follower, and both were still in T after the read began; terms never go back), so by
the leader of T or before T; its commit index covers both once it committed in T
(§6.4 step 1). With three voters a follower's read then costs two messages, not six.

A read index is the leader's commit index, or the last durable index it told the
followers in a `LeaderDurable` note if that is higher: a follower may have committed
(and answered a write) up to it before the leader counted the acknowledgements
(consensus.durable_note), and a read must see every write answered before it began.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from consensus.types import NodeId, ReadState

HOLD_MIN_ASKS = 8
"""Follower requests answered at once within a tick (the current one or the last whole
one) from which the leader's own round waits for the next of them (round_due): at that
rate one comes within about 1/8 of a tick. Below it a round goes out at once; waiting
there cost a leader's reads up to a tick each (10 ms by default, p50 0.38 -> 6.6 ms
with one follower serving a read every 20 ms) to save a frame now and then."""

PendingRead = tuple[NodeId | None, ReadState]
"""(origin, read): origin None for the leader's own reads, else the asking follower."""


@dataclass(slots=True)
class ReadRound:
    seq: int
    reads: list[PendingRead] = field(default_factory=list)


class ReadIndexQueue:
    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        """The number of the last round opened; the next one is seq + 1."""
        self._waiting_for_commit: list[tuple[NodeId | None, bytes]] = []
        self._unsent: list[PendingRead] = []
        self._rounds: list[ReadRound] = []
        self.answered: set[NodeId] = set()
        """Followers the leader sent a read index since its last Ready: a round asks
        them first (Leadership._send_read_round), so it shares their answer's frame."""
        self._asking = False
        """A follower's request was answered at once since the last round opened."""
        self._asks_this_tick = 0
        self._asks_last_tick = 0
        """Follower requests answered at once in the current tick and in the last one."""
        self._overdue = False
        """Reads have waited a tick for a round (see round_due)."""

    def request(
        self,
        request_id: bytes,
        commit_index: int,
        term_committed: bool,
        origin: NodeId | None = None,
    ) -> None:
        """Queue a read. Until the leader has committed an entry of its own term its
        commit index may be stale (§6.4 step 1), so the read waits for that first."""
        if term_committed:
            self._unsent.append((origin, ReadState(request_id, commit_index)))
        else:
            self._waiting_for_commit.append((origin, request_id))

    def term_committed(self, commit_index: int) -> None:
        """The leader's no-op committed: release reads that waited for it."""
        self._unsent.extend(
            (origin, ReadState(rid, commit_index)) for origin, rid in self._waiting_for_commit
        )
        self._waiting_for_commit.clear()

    def answered_at_once(self, follower: NodeId) -> None:
        """A follower's request was answered without a round (Leadership.read_index_for)."""
        self.answer_sent(follower)
        self._asking = True
        self._asks_this_tick += 1

    def answer_sent(self, follower: NodeId) -> None:
        """The leader sends `follower` a read index in this Ready (see `answered`)."""
        self.answered.add(follower)

    def flushed(self) -> None:
        """The Ready's messages are built: the answers sent in it are no longer news."""
        self.answered.clear()

    def tick(self) -> None:
        self._overdue = bool(self._unsent)
        self._asks_last_tick, self._asks_this_tick = self._asks_this_tick, 0

    def round_due(self) -> bool:
        """Reads wait for a round and none is in flight (see the module docstring; a
        round whose acknowledgements were lost is confirmed by the next heartbeat).
        While followers ask for read indexes often (HOLD_MIN_ASKS), a round also waits
        for the next of their requests (at most a tick): it then travels in the frame
        of that request's answer and is acknowledged in the frame of the follower's next
        request, instead of costing two frames, a write and a read system call and a
        Ready on both nodes of its own. Only timing changes (§6.4 steps 2-3: the round
        still begins after its reads, at the index recorded when they were asked, and is
        confirmed only by acknowledgements echoing its number; starting it later only
        delays them)."""
        if not self._unsent or self._rounds:
            return False
        often = max(self._asks_this_tick, self._asks_last_tick) >= HOLD_MIN_ASKS
        return bool(self.answered) or not (self._asking and often) or self._overdue

    def open_round(self) -> int:
        """Start a round for every unsent read; returns its sequence number."""
        self.seq += 1
        self._rounds.append(ReadRound(self.seq, self._unsent))
        self._unsent = []
        self._asking = self._overdue = False
        return self.seq

    def confirm(
        self, is_confirmed: Callable[[int], bool]
    ) -> tuple[list[ReadState], dict[tuple[NodeId, int], list[bytes]]]:
        """Release every round up to the newest one a quorum has confirmed: the leader's
        own reads, and the request ids of followers' reads by (origin, read index)."""
        confirmed_upto = -1
        for position, round_ in enumerate(self._rounds):
            if is_confirmed(round_.seq):
                confirmed_upto = position
        local: list[ReadState] = []
        remote: dict[tuple[NodeId, int], list[bytes]] = {}
        for round_ in self._rounds[: confirmed_upto + 1]:
            for origin, read in round_.reads:
                if origin is None:
                    local.append(read)
                else:
                    remote.setdefault((origin, read.index), []).append(read.request_id)
        del self._rounds[: confirmed_upto + 1]
        return local, remote
