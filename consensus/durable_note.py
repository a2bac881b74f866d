"""A follower's early commit: the leader's durable copy and its own are a majority.

Raft commits an entry of the leader's term once a majority of the configuration holds
it durably. The leader learns that by counting acknowledgements and then tells the
followers, which costs a write that landed on a follower one more round trip after the
follower's own fsync (its acknowledgement to the leader, the commit index back). When
the leader's copy and this follower's are a majority by themselves, the follower can
see the same fact on its own: the leader says how far its log is durable (a
`LeaderDurable` note, sent when its fsync ends) and the follower knows how far its own
is. Each condition below is needed (tests/sim checks every commit against the disks):
- only entries of the current term, which came from that term's leader (Raft §5.4.2,
  Figure 8): an entry of an older term on a majority may still be overwritten;
- both copies durable: a copy a crash can still lose does not count;
- one configuration on both sides: the leader sends the note only while its membership
  is settled (every change in its log in effect), and the follower uses it only while
  every change in its log up to the entry is in effect on it. Both then hold the
  configuration of the same log prefix (a change beyond the entry that the leader has
  in effect is committed, and so is everything before it). A membership change itself
  is never committed this way: a node learns a change's commit from the leader, which
  reveals it only once saved (`ready.hold_back_commit`);
- the two are a majority of that configuration (with three voters, any two are).
"""

from __future__ import annotations

from collections.abc import Mapping

from consensus import quorum
from consensus.log import RaftLog
from consensus.messages import LeaderDurable
from consensus.progress import Progress
from consensus.types import Membership, NodeId


def notes_to_send(
    node_id: NodeId,
    term: int,
    log: RaftLog,
    settled: bool,
    forwarded: Mapping[NodeId, int],
    progress: Mapping[NodeId, Progress],
) -> list[LeaderDurable]:
    """The leader's notes once its own entries became durable: to every follower whose
    clients wait for an entry not committed yet (`forwarded`: the last index proposed
    for each) and that has not acknowledged all it was sent, while the membership is
    `settled` (every change in its log in effect)."""
    durable = log.last_stable_index()
    if not settled or durable <= log.committed:
        return []
    return [
        LeaderDurable(term, node_id, peer, durable)
        for peer, last in forwarded.items()
        if last > log.committed and (pr := progress.get(peer)) and pr.match < pr.next - 1
    ]


class DurableNotes:
    """A follower's side: how far the leader of the current term is durable."""

    def __init__(self, node_id: NodeId, log: RaftLog) -> None:
        self._id = node_id
        self._log = log
        self._term = 0
        self._leader: NodeId = ""
        self._index = 0

    def heard(self, msg: LeaderDurable) -> None:
        """Remember the note (the node stepped it in its term, as a follower)."""
        if msg.term != self._term:
            self._term, self._index = msg.term, 0
        self._leader = msg.sender
        self._index = max(self._index, msg.index)

    def commit(self, term: int, membership: Membership, conf_index: int) -> None:
        """Commit what the note and our own durable log prove committed (see the module
        docstring); `conf_index` is the last membership change in effect here."""
        log = self._log
        if self._term != term:
            return
        index = min(self._index, log.last_stable_index())
        if index <= log.committed or log.term(index) != term:
            return
        if not quorum.has_quorum(membership.voters, (self._id, self._leader)):
            return
        if log.first_conf_change(max(conf_index, log.applied) + 1, index + 1) is None:
            log.commit_to(index)
