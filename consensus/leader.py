"""The leader's side of Raft: proposals, replication with flow control, commitment,
heartbeats, CheckQuorum, leadership transfer and ReadIndex rounds.

A `Leadership` exists only while its node leads: RaftNode creates one when it wins an
election and drops it when it steps down, so leader-only state (per-member progress,
heartbeat timers, the transfer target, read rounds) cannot outlive its term, and every
role change resets it by construction; the term is fixed at creation. It shares the
node's log and is given everything else: the membership (kept up to date by the
node), a callback for outgoing messages and one for reads that became safe to serve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from consensus import quorum
from consensus.config import Config
from consensus.durable_note import notes_to_send
from consensus.errors import DropReason, ProposalDropped
from consensus.log import RaftLog
from consensus.membership import (
    ConfChange,
    ConfChangeType,
    InvalidConfChange,
    encode_conf_change,
    removal_of,
    validate,
)
from consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    Message,
    ProposeRequest,
    ProposeResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
)
from consensus.progress import PeerProgress, Progress, ProgressState, heartbeats_per_timeout
from consensus.read_index import ReadIndexQueue
from consensus.types import Entry, EntryType, Membership, NodeId, ReadState


class Leadership:
    def __init__(
        self,
        node_id: NodeId,
        term: int,
        config: Config,
        log: RaftLog,
        membership: Membership,
        send: Callable[[Message], None],
        serve_reads: Callable[[Iterable[ReadState]], None],
        read_seq: int = 0,
    ) -> None:
        """`read_seq` is the last read round number this node used in earlier terms:
        numbering continues from it, so a round number in a trace names one round."""
        self.id = node_id
        self.term = term
        self._config = config
        self._log = log
        self._membership = membership
        self._send = send
        self._serve_reads = serve_reads
        self._heartbeat_elapsed = 0
        self._election_elapsed = 0
        self._transferee: NodeId | None = None
        self._reads = ReadIndexQueue(read_seq)
        self._replication_pending = False
        self._commit_told = log.committed
        """The commit index every follower in REPLICATE was last sent (see flush)."""
        self._noted = 0
        """The last durable index told in a LeaderDurable note."""
        self._forwarded: dict[NodeId, int] = {}
        """The last index proposed for each follower's clients: notes go only there."""
        self._removed_at = removal_of(node_id, log.slice(log.committed + 1, log.last_index() + 1))
        """An inherited change removing this leader: no proposals until it commits (then
        it steps down), so its log ends where a remaining voter's can (tests/sim/FINDINGS)."""
        # Any change in the log but not yet in effect counts as pending (one at a time).
        self._pending_conf_index = log.last_index()
        self._progress: dict[NodeId, Progress] = {}
        next_index = log.last_index() + 1
        for peer in membership.members():
            progress = Progress(next_index, config)
            progress.recent_active = True
            self._progress[peer] = progress
        if node_id in self._progress:
            self._progress[node_id].become_replicate()

    # --- what the node reads ------------------------------------------------------------

    @property
    def read_seq(self) -> int:
        """The last read round number used (see __init__)."""
        return self._reads.seq

    def progress(self) -> dict[NodeId, PeerProgress]:
        """Every member's replication progress. The leader's own entry reports its
        durable log, which is what counts towards commitment."""
        result = {peer: progress.public() for peer, progress in self._progress.items()}
        if self.id in result:
            stable, end = self._log.last_stable_index(), self._log.last_index() + 1
            replicate = ProgressState.REPLICATE.value
            result[self.id] = PeerProgress(stable, end, replicate, recent_active=True)
        return result

    def has_ready(self) -> bool:
        """Work that `flush` would turn into messages."""
        return (
            self._replication_pending
            or self._reads.round_due()
            or self._log.committed > self._commit_told
        )

    # --- inputs from the node -----------------------------------------------------------

    def tick(self) -> bool:
        """Advance the heartbeat and CheckQuorum timers; returns False when the leader
        must step down because no quorum answered for an election timeout."""
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._config.election_tick:
            self._election_elapsed = 0
            if self._config.check_quorum and not self._quorum_recently_active():
                return False
            self._transferee = None  # a transfer not done in an election timeout failed
        if self._heartbeat_elapsed >= self._config.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()
        self._reads.tick()
        return True

    def propose(self, data: bytes) -> Entry:
        if self._transferee is not None or self._removed_at > self._log.committed:
            to = self._transferee or "a remaining voter (this leader is being removed)"
            raise ProposalDropped(
                DropReason.TRANSFERRING_LEADERSHIP, f"leadership is being transferred to {to}"
            )
        uncommitted = self._log.last_index() - self._log.committed
        if uncommitted >= self._config.max_uncommitted_entries:
            raise ProposalDropped(
                DropReason.TOO_MANY_UNCOMMITTED,
                f"{uncommitted} entries await commitment; followers are not keeping up",
            )
        entry = Entry(self.term, self._log.last_index() + 1, data)
        self.append(entry)
        return entry

    def propose_conf_change(self, change: ConfChange) -> Entry:
        """One change at a time, and only once this leader has committed an entry of its
        term (otherwise an uncommitted change of an earlier leader could still take
        effect beside ours). The leader cannot remove itself: transfer leadership first."""
        if self._transferee is not None:
            raise ProposalDropped(
                DropReason.TRANSFERRING_LEADERSHIP,
                f"leadership is being transferred to {self._transferee}",
            )
        if not self.committed_in_term():
            raise ProposalDropped(
                DropReason.TERM_NOT_COMMITTED,
                "the leader has not committed an entry of its term yet",
            )
        if self._pending_conf_index > self._log.applied:
            raise ProposalDropped(
                DropReason.CONF_CHANGE_PENDING,
                "another membership change is still in progress",
            )
        if change.type is ConfChangeType.REMOVE and change.node_id == self.id:
            raise InvalidConfChange("the leader cannot remove itself; transfer leadership first")
        validate(self._membership, change)
        entry = Entry(
            self.term,
            self._log.last_index() + 1,
            encode_conf_change(change),
            EntryType.CONF_CHANGE,
        )
        self._pending_conf_index = entry.index
        self.append(entry)
        return entry

    def append(self, entry: Entry) -> None:
        """Append now, replicate at the next `flush`: proposals that arrive together
        then travel in one AppendEntries per follower instead of one each."""
        self._log.append([entry])
        self._replication_pending = True

    def read_index(self, request_id: bytes) -> None:
        self._reads.request(request_id, self._read_point(), self.committed_in_term())

    def read_index_for(self, msg: ReadIndexRequest) -> None:
        """A follower's reads join the next round exactly like our own (the same rule on
        committing in term first); the answer goes back once a quorum confirmed it.
        Unless the request, of our term, completes the quorum with us (three voters):
        then our commit index is answered at once (why that is safe: consensus.read_index)."""
        committed, in_term = self._read_point(), self.committed_in_term()
        if in_term and msg.term == self.term and self._with_leader_a_quorum(msg.sender):
            self._reads.answered_at_once(msg.sender)
            self._send(
                ReadIndexResponse(self.term, self.id, msg.sender, msg.request_ids, committed)
            )
            return
        for request_id in msg.request_ids:
            self._reads.request(request_id, committed, in_term, origin=msg.sender)

    def propose_for(self, msg: ProposeRequest) -> None:
        """Propose a follower's commands as if our own clients had sent them, and tell it
        where each went (or why it was refused, so it knows it was never proposed)."""
        indexes = []
        refused = ""
        for data in msg.datas:
            try:
                indexes.append(self.propose(data).index)
            except ProposalDropped as exc:
                indexes.append(0)
                refused = exc.reason.value
        self._forwarded[msg.sender] = max(indexes, default=0)
        self._send(
            ProposeResponse(
                self.term, self.id, msg.sender, msg.request_ids, tuple(indexes), refused
            )
        )

    def transfer(self, to: NodeId) -> None:
        """Hand leadership to `to` (§3.10): catch it up, then tell it to campaign now.
        Proposals are refused meanwhile; the transfer is abandoned after one election
        timeout."""
        if to == self.id or to not in self._membership.voters or self._transferee == to:
            return
        self._transferee = to
        self._election_elapsed = 0
        if self._progress[to].match == self._log.last_index():
            self._send(TimeoutNow(self.term, self.id, to))
        else:
            self._send_append(to)

    def step(self, msg: AppendEntriesResponse) -> None:
        progress = self._progress.get(msg.sender)
        if progress is None:
            return  # from a node removed while its answer was on the way
        progress.recent_active = True
        if msg.read_seq > progress.read_ack:
            progress.read_ack = msg.read_seq
            self._release_confirmed_reads()
        if msg.success:
            self._handle_append_success(msg.sender, progress, msg.match_index)
        elif progress.says_log_ends_below_match(msg.conflict_term, msg.conflict_index):
            # Its log ends below what it acknowledged (a damaged disk), or this is an old
            # rejection overtaken by the acknowledgement. Probe at the match index: a
            # rejection of that probe proves the loss, and replication restarts from the
            # follower's real end instead of spinning on rejections taken as stale.
            if progress.probe_rejected(msg.match_index):
                progress.rewind(msg.conflict_index - 1)
            else:
                progress.become_probe()
            self._send_append(msg.sender)
        elif not progress.is_stale_rejection(msg.match_index):
            next_index = self._next_after_rejection(msg, progress)
            progress.become_probe()
            progress.next = next_index
            self._send_append(msg.sender)

    def flush(self) -> None:
        """Called when the node builds a Ready: `replicate`, then start a heartbeat round
        for the reads that arrived meanwhile."""
        self.replicate()
        if self._reads.round_due():
            seq = self._reads.open_round()
            if self._membership.voters == (self.id,):
                self._release_confirmed_reads()
            else:
                self._send_read_round(seq)
        self._reads.flushed()

    def replicate(self) -> None:
        """Entries appended since the last Ready, and a new commit index (`flush`, and
        `early_messages` for a driver with no Ready in hand)."""
        if self._replication_pending:
            self._replication_pending = False
            for peer in (p for p in self._progress if p != self.id):
                while self._send_append(peer, send_if_empty=False):
                    pass
        self.tell_commit()

    def tell_commit(self) -> None:
        """Followers learn a new commit index now, not with the next append or heartbeat:
        a follower serving reads (read index) or answering forwarded writes waits for it.
        Whoever got entries in this flush has it already; the others get an empty append
        (`_bump_commit`). Called by `flush`, and by the node while its Ready persists."""
        if self._log.committed <= self._commit_told:
            return
        self._commit_told = self._log.committed
        for peer in (p for p in self._progress if p != self.id):
            self._bump_commit(peer, self._progress[peer])

    def _bump_commit(self, peer: NodeId, progress: Progress) -> None:
        """Tell `peer` the commit index as far as it was sent the log: an empty append
        at the last entry sent to it (the commit index, if lower), unless it knows it;
        `commit_only`: it answers only a rejection. Also on every acknowledgement: a
        follower whose answer arrives after the commit was told to the others learns it
        then, not at the next heartbeat (as etcd-io/raft's CanBumpCommit; a forwarded
        write waited 25 ms at the tail without it). Not only as far as it acknowledged,
        which would cost a follower answering a forwarded write one more round trip when
        the other two made the entry durable first (it still applies only what its own
        disk holds). REPLICATE only: the link delivers in order, so a follower that lost
        an append rejects this one and is probed."""
        if progress.state is not ProgressState.REPLICATE:
            return
        known = min(self._log.committed, progress.next - 1)
        if known > progress.commit_sent and known >= self._log.first_index() - 1:
            self._send_append_entries(peer, known, (), known, self._reads.seq, commit_only=True)

    def entries_persisted(self) -> None:
        """The driver made our own entries durable: they may complete a quorum now, and
        voters holding some unacknowledged may learn so (consensus.durable_note)."""
        self._maybe_commit()
        settled = self._pending_conf_index <= self._log.applied  # every change in effect
        waiting = self._forwarded
        for note in notes_to_send(self.id, self.term, self._log, settled, waiting, self._progress):
            self._send(note)
            self._noted = note.index

    def membership_changed(self, membership: Membership) -> None:
        """A change took effect (the node steps down instead when it left the voters):
        forget removed members, start replicating to new ones, and recount the quorum."""
        self._membership = membership
        members = membership.members()
        for peer in list(self._progress):
            if peer not in members:
                del self._progress[peer]
        for peer in (m for m in members if m not in self._progress):  # in order: replayable
            progress = Progress(self._log.last_index() + 1, self._config)
            progress.recent_active = True
            self._progress[peer] = progress
            self._replication_pending = True
        self._maybe_commit()

    # --- commitment ---------------------------------------------------------------------

    def committed_in_term(self) -> bool:
        return self._log.term(self._log.committed) == self.term

    def _maybe_commit(self) -> None:
        """Figure 8: only an entry of the leader's own term is committed by counting
        replicas; earlier entries are committed indirectly with it. Reads that waited
        for the first commit of the term are released with it."""
        match = {peer: pr.match for peer, pr in self._progress.items()}
        # The leader's own copy counts once it is durable (it may go out to followers
        # before its fsync ends), so two followers can commit without waiting for it.
        match[self.id] = self._log.last_stable_index()
        index = quorum.committed_index(self._membership.voters, match)
        if index > self._log.committed and self._log.term(index) == self.term:
            self._log.commit_to(index)
            self._reads.term_committed(self._read_point())

    def _read_point(self) -> int:
        """A read index: the commit index, or beyond it what a follower may have
        committed on a note of ours and answered already (consensus.durable_note)."""
        return max(self._log.committed, self._noted)

    def _quorum_recently_active(self) -> bool:
        """CheckQuorum: a leader that heard from no quorum for an election timeout
        steps down, so a partitioned leader stops serving and clients move on."""
        active = [p for p, pr in self._progress.items() if pr.recent_active or p == self.id]
        for peer, progress in self._progress.items():
            progress.recent_active = peer == self.id
        return quorum.has_quorum(self._membership.voters, active)

    # --- replication ----------------------------------------------------------------------

    def _handle_append_success(self, peer: NodeId, progress: Progress, match: int) -> None:
        if progress.maybe_update(match):
            state = progress.state
            snapshot_done = (
                state is ProgressState.SNAPSHOT and progress.match >= progress.pending_snapshot
            )
            if state is ProgressState.PROBE or snapshot_done:
                progress.become_replicate()
            self._maybe_commit()
        if self._transferee == peer and progress.match == self._log.last_index():
            self._send(TimeoutNow(self.term, self.id, peer))
        while self._send_append(peer, send_if_empty=False):
            pass
        self._bump_commit(peer, progress)

    def _next_after_rejection(self, msg: AppendEntriesResponse, progress: Progress) -> int:
        next_index = msg.conflict_index
        if msg.conflict_term:
            ours = self._log.last_index_of_term(msg.conflict_term, msg.match_index)
            if ours is not None:
                next_index = ours + 1
        return max(min(next_index, msg.match_index), progress.match + 1)

    def _send_append(self, peer: NodeId, send_if_empty: bool = True) -> bool:
        """Send the next batch to `peer` unless flow control says wait; returns whether
        anything was sent."""
        progress = self._progress[peer]
        if progress.is_paused():
            return False
        if progress.next < self._log.first_index():
            self._send_snapshot(peer, progress)
            return False
        entries = self._log.entries(progress.next, self._config.max_batch_bytes)
        if not entries and not send_if_empty and progress.state is ProgressState.REPLICATE:
            return False
        self._send_append_entries(
            peer, progress.next - 1, tuple(entries), self._log.committed, self._reads.seq
        )
        progress.sent(entries)
        return bool(entries)

    def _send_append_entries(
        self,
        peer: NodeId,
        prev_index: int,
        entries: tuple[Entry, ...],
        leader_commit: int,
        read_seq: int,
        commit_only: bool = False,
    ) -> None:
        self._progress[peer].commit_sent = leader_commit
        self._send(
            AppendEntries(
                term=self.term,
                sender=self.id,
                recipient=peer,
                prev_log_index=prev_index,
                prev_log_term=self._log.term(prev_index),
                entries=entries,
                leader_commit=leader_commit,
                read_seq=read_seq,
                commit_only=commit_only,
            )
        )

    def _send_snapshot(self, peer: NodeId, progress: Progress) -> None:
        """The entries this follower needs are compacted: send the snapshot instead."""
        snapshot = self._log.storage.snapshot_meta()
        if snapshot is None:
            raise AssertionError("log is compacted but storage holds no snapshot")
        self._send(InstallSnapshot(self.term, self.id, peer, snapshot))
        progress.become_snapshot(snapshot.index)

    def _send_read_round(self, seq: int) -> None:
        """Ask for round `seq` only as many voters as complete a quorum with us: first
        those this Ready answers a read index (the round shares their answer's frame,
        its acknowledgement their next request's), then those that echoed a round last
        (if one is gone, the next heartbeat, sent to every peer with the newest round
        number, confirms the round). A round is no heartbeat: it neither counts towards
        a stalled pipeline nor resends probes."""
        voters = [p for p in self._membership.voters if p != self.id and p in self._progress]
        answered = self._reads.answered
        voters.sort(key=lambda p: (p in answered, self._progress[p].read_ack), reverse=True)
        needed = quorum.quorum_size(len(self._membership.voters)) - 1
        for peer in voters[:needed]:
            match = self._progress[peer].match
            prev_index = match if match >= self._log.first_index() - 1 else 0
            commit = min(self._log.committed, prev_index)
            self._send_append_entries(peer, prev_index, (), commit, seq)

    def _broadcast_heartbeat(self) -> None:
        """Heartbeats name the follower's known match point, which it always holds, so
        they never trigger a rejection. A follower whose replication made no progress
        for an election timeout while appends were in flight lost one: it is probed
        again. (A shorter window would rewind healthy pipelines whose round trip, or
        fsync, is longer than a heartbeat interval.)"""
        last_index = self._log.last_index()
        stall_limit = heartbeats_per_timeout(self._config)
        for peer, progress in self._progress.items():
            if peer == self.id:
                continue
            progress.heartbeat(last_index, stall_limit)
            if progress.state is ProgressState.PROBE:
                progress.probe_sent = False
                self._send_append(peer)
            # (0, 0) matches every log: used when the match point is inside the snapshot.
            prev_index = progress.match if progress.match >= self._log.first_index() - 1 else 0
            commit = min(self._log.committed, prev_index)
            self._send_append_entries(peer, prev_index, (), commit, self._reads.seq)

    # --- ReadIndex ----------------------------------------------------------------------

    def _with_leader_a_quorum(self, peer: NodeId) -> bool:
        """Whether this leader and `peer` (counted only if it votes) are a quorum."""
        return quorum.has_quorum(self._membership.voters, (self.id, peer))

    def _release_confirmed_reads(self) -> None:
        def confirmed(seq: int) -> bool:
            acked = [p for p, pr in self._progress.items() if p == self.id or pr.read_ack >= seq]
            return quorum.has_quorum(self._membership.voters, acked)

        local, remote = self._reads.confirm(confirmed)
        if local:
            self._serve_reads(local)
        for (origin, index), request_ids in remote.items():
            if origin in self._progress:  # a follower removed meanwhile asks no more
                self._reads.answer_sent(origin)
                self._send(ReadIndexResponse(self.term, self.id, origin, tuple(request_ids), index))
