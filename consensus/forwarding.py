"""What a follower does for its own clients through the leader: read indexes and
proposals, carried as messages on the peer link instead of a second client request.

Reads (the follower side of ReadIndex, §6.4 of the dissertation): the reads asked
since the last request travel to the leader in one ReadIndexRequest; the leader answers
with its commit index once a quorum of its term confirmed it after the reads began
(and only after committing an entry of its term): at once when the asker and the
leader are a quorum, else after its next heartbeat round; the follower serves each read
once it has applied that index. A read whose request or answer is lost is failed by
the driver when the leadership it was asked under changes, or at its deadline.

One ReadIndexRequest is in flight at a time: reads asked meanwhile wait for its answer
(or for a leader change, or for two heartbeat intervals without one: a request lost with a
broken link) and then share the next request. Under load a request per Ready carried
one or two reads, and each cost a frame, a write and a read system call and a Ready
on both nodes; paced, a request carries every read asked during one round trip. Safe
as before: each read still gets the leader's answer to a request sent after it began.

Proposals: commands queued between two Readys travel in one ProposeRequest; the leader
proposes each as if its own client had, and answers where it put it (index and term)
or that it refused it. The follower's driver then waits until it applies that index
itself: the entry there decides the outcome (its own term: applied; another: never
committed), exactly as for a leader's own proposal. Commands still queued when the
leader changes are refused here, since they were certainly never sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from consensus.config import Config
from consensus.errors import NotLeader
from consensus.leader import Leadership
from consensus.messages import (
    Message,
    ProposeRequest,
    ProposeResponse,
    ReadIndexRequest,
    ReadIndexResponse,
)
from consensus.types import ForwardedProposal, NodeId, ReadState

NOT_LEADER = "not_leader"
"""Why a proposal was refused when its recipient does not lead (any more)."""


class Forwarding:
    def __init__(
        self,
        config: Config,
        send: Callable[[Message], None],
        serve_reads: Callable[[Iterable[ReadState]], None],
        leader: Callable[[], NodeId | None],
    ) -> None:
        """`leader`: whom a follower asks now (None: nobody, so requests are refused)."""
        self.id = config.node_id
        self._retry_ticks = 2 * config.heartbeat_tick
        """How long a read request may go unanswered before the next one goes out."""
        self._leader = leader
        self._send = send
        self._serve_reads = serve_reads
        self._reads: list[bytes] = []
        self._asked: bytes | None = None
        """A request id of the ReadIndexRequest in flight (None: none is)."""
        self._asked_ticks = 0
        self._proposals: list[tuple[bytes, bytes]] = []
        self._outcomes: list[ForwardedProposal] = []

    def has_ready(self) -> bool:
        return bool((self._reads and self._asked is None) or self._proposals or self._outcomes)

    def tick(self) -> None:
        """A request unanswered for `retry_ticks` no longer holds back the next one."""
        if self._asked is not None:
            self._asked_ticks += 1
            if self._asked_ticks >= self._retry_ticks:
                self._asked = None

    # --- the follower's clients ----------------------------------------------------------

    def read(self, request_id: bytes, leadership: Leadership | None) -> None:
        """On the leader a ReadIndex round of its own; on a follower queued for the
        leader. Raises NotLeader when no leader is known."""
        if leadership is not None:
            leadership.read_index(request_id)
        elif self._leader() is None:
            raise NotLeader(None)
        else:
            self._reads.append(request_id)

    def unsent(self, request_id: bytes) -> bool:
        """Whether `request_id` is the newest read queued for the next request: a read
        that began now may still share its answer (the leader answers after receiving
        the request, so after both began)."""
        return bool(self._reads) and self._reads[-1] == request_id

    def propose(self, request_id: bytes, data: bytes, leadership: Leadership | None) -> None:
        """On the leader proposed at once (the outcome is known now); on a follower
        queued for the leader. Raises NotLeader, or ProposalDropped on a leader."""
        if leadership is not None:
            entry = leadership.propose(data)
            self._outcomes.append(ForwardedProposal(request_id, entry.index, entry.term))
        elif self._leader() is None:
            raise NotLeader(None)
        else:
            self._proposals.append((request_id, data))

    def flush(self, term: int) -> None:
        """Send what was queued since the last Ready to `leader`, one message per kind.
        With no leader (it changed meanwhile) the proposals are refused: never sent."""
        leader = self._leader()
        if leader is None or leader == self.id:
            self.abandon()
            return
        if self._reads and self._asked is None:
            self._send(ReadIndexRequest(term, self.id, leader, tuple(self._reads)))
            self._asked, self._asked_ticks = self._reads[0], 0
            self._reads = []
        self._send_proposals(term, leader)

    def proposals_now(self, term: int) -> tuple[Message, ...]:
        """The queued proposals' ProposeRequest, handed out now rather than with the next
        Ready (by a driver with no Ready in hand: a request promises nothing durable).
        With no leader they are refused in the next Ready, as `flush` does."""
        leader = self._leader()
        if leader is None or leader == self.id:
            self.abandon()
            return ()
        sent: list[Message] = []
        self._send_proposals(term, leader, sent.append)
        return tuple(sent)

    def _send_proposals(
        self, term: int, leader: NodeId, send: Callable[[Message], None] | None = None
    ) -> None:
        if self._proposals:
            ids = tuple(rid for rid, _ in self._proposals)
            datas = tuple(data for _, data in self._proposals)
            (send or self._send)(ProposeRequest(term, self.id, leader, ids, datas))
            self._proposals = []

    def abandon(self) -> None:
        """The leader changed before the queue went out: its reads are failed by the
        driver (their leadership changed), its proposals were never proposed."""
        self._reads = []
        self._asked = None
        self._outcomes.extend(
            ForwardedProposal(rid, 0, 0, NOT_LEADER) for rid, _ in self._proposals
        )
        self._proposals = []

    def take_outcomes(self) -> tuple[ForwardedProposal, ...]:
        outcomes = tuple(self._outcomes)
        self._outcomes = []
        return outcomes

    # --- messages ------------------------------------------------------------------------

    def step(self, msg: Message, leadership: Leadership | None, term: int) -> None:
        """Requests are served by a leader whatever term the follower asked in: a read
        index is confirmed by a quorum of the leader's own term after it arrived, and a
        proposal is only data. Answers are taken whatever their term: a read index is
        valid once confirmed (the driver drops answers to reads it already failed), and
        an index and term name one entry for good."""
        if type(msg) is ReadIndexRequest:
            if leadership is not None:
                leadership.read_index_for(msg)
        elif type(msg) is ProposeRequest:
            if leadership is not None:
                leadership.propose_for(msg)
            else:
                zeros = (0,) * len(msg.request_ids)
                self._send(
                    ProposeResponse(term, self.id, msg.sender, msg.request_ids, zeros, NOT_LEADER)
                )
        elif type(msg) is ReadIndexResponse:
            if self._asked in msg.request_ids:
                self._asked = None
            self._serve_reads(ReadState(rid, msg.index) for rid in msg.request_ids)
        elif type(msg) is ProposeResponse:
            for rid, index in zip(msg.request_ids, msg.indexes, strict=True):
                outcome = (msg.term, "") if index else (0, msg.refused)
                self._outcomes.append(ForwardedProposal(rid, index, *outcome))
