"""RaftNode: the Raft protocol as a pure state machine.

Inputs are `tick`, `step`, `propose`, `read_index` and `transfer_leadership`;
output is a `Ready` the driver persists, sends and applies before `advance`.
Term rules common to every role are applied once in `step`, then the message goes to
the handler of the current role (as etcd-io/raft does). Elections, the follower's
side and membership live here; the leader's side is a `consensus.leader.Leadership`,
which exists only while this node leads (the log, membership and outbox handed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from consensus import quorum
from consensus.config import Config
from consensus.durable_note import DurableNotes
from consensus.election_timer import ElectionTimer
from consensus.errors import NotLeader
from consensus.forwarding import Forwarding
from consensus.leader import Leadership
from consensus.log import RaftLog
from consensus.membership import ConfChange, apply_change, bootstrap_entry, decode_conf_change
from consensus.messages import (
    FORWARDING,
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    LeaderDurable,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    answer_to_stale,
)
from consensus.progress import PeerProgress
from consensus.ready import Ready, Status, hard_state_to_save, outgoing, while_persisting
from consensus.storage import Storage, is_pristine
from consensus.types import (
    Entry,
    EntryType,
    HardState,
    Membership,
    NodeId,
    RandomSource,
    ReadState,
    Role,
    SnapshotMeta,
)


class RaftNode:
    def __init__(self, config: Config, storage: Storage, rng: RandomSource) -> None:
        self.config = config
        self.id: NodeId = config.node_id
        self.log = RaftLog(storage)
        snapshot = storage.snapshot_meta()
        self.membership = snapshot.membership if snapshot else Membership(config.voters)
        self._conf_index = snapshot.index if snapshot else 0
        hard_state = storage.initial_state()
        self.term = hard_state.term
        self.vote: NodeId | None = hard_state.vote
        self._prev_hard_state = hard_state
        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        self._timer = ElectionTimer(config, rng)
        self._votes: dict[NodeId, bool] = {}
        self._leadership: Leadership | None = None
        """Present exactly while role is LEADER."""
        self._read_seq = 0
        """The last ReadIndex round number of this node's past terms (see Leadership)."""
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._forwarding = Forwarding(config, self._send, self._serve_reads, self._leader_to_ask)
        self._notes = DurableNotes(self.id, self.log)
        self._become_follower(self.term, None)
        if is_pristine(storage) and config.voters:
            self.term = 1  # the founders' identical first entry (membership.bootstrap_entry)
            self.log.append([bootstrap_entry(config.voters)])
            self.log.commit_to(1)
        self._apply_conf_changes(self.log.slice(self.log.first_index(), self.log.committed + 1))

    # --- public API ----------------------------------------------------------------

    @property
    def voters(self) -> tuple[NodeId, ...]:
        return self.membership.voters

    @property
    def promotable(self) -> bool:
        """Only voters campaign; learners, joining and removed nodes never do."""
        return self.id in self.membership.voters

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    def status(self) -> Status:
        return Status.of(self.id, self.role, self.term, self.leader_id, self.log, self.membership)

    def progress(self) -> Mapping[NodeId, PeerProgress]:
        """On the leader, every member's replication progress (its own entry: its
        durable log); empty on any other node. A copy: it does not change later."""
        return {} if self._leadership is None else self._leadership.progress()

    @property
    def pending_snapshot(self) -> SnapshotMeta | None:
        """The snapshot from the leader the driver must install: set once a stepped
        InstallSnapshot replaced the log, handed out as `Ready.snapshot`, cleared by
        `advance`; a driver keeps streamed state only for the snapshot named here."""
        return self.log.pending_snapshot

    def snapshot_meta(self) -> SnapshotMeta:
        """Metadata for a snapshot of the state applied so far, for the driver's
        compaction; valid right after `advance`, when membership matches `applied`."""
        applied = self.log.applied
        return SnapshotMeta(applied, self.log.term(applied), self.membership)

    def tick(self) -> None:
        if self._leadership is None:
            self._forwarding.tick()
            self._tick_election()
        elif not self._leadership.tick():
            self._become_follower(self.term, None)  # CheckQuorum failed

    def propose(self, data: bytes) -> Entry:
        """Append a NORMAL entry; its term and index identify the proposal. Raises
        NotLeader, or ProposalDropped with a DropReason when the leader refuses."""
        return self._leading().propose(data)

    def propose_conf_change(self, change: ConfChange) -> Entry:
        """Append a membership change (see Leadership.propose_conf_change). Raises
        NotLeader, ProposalDropped or InvalidConfChange."""
        return self._leading().propose_conf_change(change)

    def read_index(self, request_id: bytes) -> None:
        """A ReadIndex read here or, on a follower, through the leader (see forwarding)."""
        self._forwarding.read(request_id, self._leadership)

    def read_unsent(self, request_id: bytes) -> bool:
        """Whether a follower's read `request_id` still waits here for its request."""
        return self._forwarding.unsent(request_id)

    def forward_proposal(self, request_id: bytes, data: bytes) -> None:
        """Propose here or through the leader; the outcome comes as `Ready.forwarded`."""
        self._forwarding.propose(request_id, data, self._leadership)

    def transfer_leadership(self, to: NodeId) -> None:
        """Hand leadership to `to` (§3.10): catch it up, then tell it to campaign now."""
        self._leading().transfer(to)

    def peer_unreachable(self, peer: NodeId) -> None:
        """The driver's connection to `peer` broke (reset or refused, not slow): if it is
        our leader, hurry the election timer and lease (only with PreVote and CheckQuorum,
        which keep a healthy leader in office; consensus.election_timer)."""
        c = self.config
        may = c.pre_vote and c.check_quorum and self.promotable and self.role is Role.FOLLOWER
        if may and peer == self.leader_id:
            survivors = sorted(v for v in self.voters if v != peer)
            self._timer.hurry(survivors.index(self.id), len(survivors))

    def step(self, msg: Message) -> None:
        if msg.recipient != self.id or msg.sender == self.id:
            return
        if type(msg) in FORWARDING:  # on behalf of clients: no term rules (see forwarding)
            self._forwarding.step(msg, self._leadership, self.term)
            return
        if isinstance(msg, RequestVote) and not self._may_consider(msg):
            return
        if msg.term > self.term and not self._accept_higher_term(msg):
            return
        if msg.term < self.term:
            answer = answer_to_stale(msg, self.term, self.id)
            if answer is not None:
                self._send(answer)
            return
        if isinstance(msg, RequestVote):
            self._handle_vote_request(msg)
        elif self._leadership is not None:
            if isinstance(msg, AppendEntriesResponse):
                self._leadership.step(msg)
        elif self.role is Role.FOLLOWER:
            self._step_follower(msg)
        else:
            self._step_campaigner(msg)

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._read_states
            or self._forwarding.has_ready()
            or self.log.has_unstable()
            or self.log.has_next_committed()
            or (self._leadership is not None and self._leadership.has_ready())
            or self.log.pending_snapshot is not None
            or self.term != self._prev_hard_state.term
            or self.vote != self._prev_hard_state.vote
        )

    def ready(self) -> Ready:
        if self._leadership is not None:
            self._leadership.flush()
        else:
            self._forwarding.flush(self.term)
        entries = tuple(self.log.unstable_entries())
        snapshot = self.log.pending_snapshot
        committed = tuple(self.log.next_committed(self.config.max_batch_bytes))
        # A restart must not start from an older membership than the one in effect, so
        # the commit index is saved whenever it covers a membership change.
        conf_changed = self._apply_conf_changes(committed)
        hard_state = hard_state_to_save(
            HardState(self.term, self.vote, self.log.committed),
            self._prev_hard_state,
            saving=bool(entries) or snapshot is not None or conf_changed,
        )
        leading = self._leadership is not None
        messages, early = outgoing(self._msgs, self.log, leading, hard_state, self._prev_hard_state)
        reads, forwarded = tuple(self._read_states), self._forwarding.take_outcomes()
        ready = Ready(hard_state, entries, messages, committed, reads, snapshot, early, forwarded)
        self._msgs, self._read_states = [], []
        return ready

    def early_messages(self, replicate: bool = False) -> tuple[Message, ...]:
        """What may leave before the next Ready is durable (`ready.while_persisting`), while
        a leader's disk syncs or with no Ready in hand; `replicate`: with the appends of
        new entries (on a follower, only its proposals for the leader)."""
        saved = self._prev_hard_state
        if (self.term, self.vote) != (saved.term, saved.vote):
            return ()
        if self._leadership is None:
            return self._forwarding.proposals_now(self.term) if replicate else ()
        lead = self._leadership  # and a commit the followers' acknowledgements reached:
        lead.replicate() if replicate else lead.tell_commit()
        early, self._msgs = while_persisting(self._msgs, self.log, saved)
        return early

    def advance(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.log.snapshot_installed(ready.snapshot)
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        if ready.entries:
            last = ready.entries[-1]
            self.log.stable_to(last.index, last.term)
            if self._leadership is not None:
                self._leadership.entries_persisted()
            else:  # our copy may complete a majority with the leader's (durable_note)
                self._notes.commit(self.term, self.membership, self._conf_index)
        if ready.committed:
            self.log.applied_to(ready.committed[-1].index)

    # --- role changes ----------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader_id = None
        self._timer.restart()
        self._votes = {}
        self._forwarding.abandon()
        if self._leadership is not None:
            self._read_seq = self._leadership.read_seq
            self._leadership = None  # every leader-only state goes with it

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader

    def _become_pre_candidate(self) -> None:
        """PreVote (§9.6): ask first whether an election could be won, without raising
        the term, so a node returning from a partition cannot depose a healthy leader."""
        self._votes = {self.id: True}
        self.role = Role.PRE_CANDIDATE
        self.leader_id = None

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self._votes = {self.id: True}
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.id
        leadership = Leadership(
            self.id,
            self.term,
            self.config,
            self.log,
            self.membership,
            send=self._send,
            serve_reads=self._serve_reads,
            read_seq=self._read_seq,
        )
        self._leadership = leadership
        # A no-op of the new term lets the leader commit, and so learn the commit
        # index, without waiting for a client (§8 and Figure 8).
        leadership.append(Entry(self.term, self.log.last_index() + 1, b"", EntryType.NOOP))

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        # As etcd: apply a committed membership change first (it may even exclude us).
        if self.log.committed_change_not_handed_out(self._conf_index):
            return
        if pre_vote:
            self._become_pre_candidate()
            vote_term = self.term + 1
        else:
            self._become_candidate()
            vote_term = self.term
        if quorum.vote_result(self.voters, self._votes) is True:
            self._won_election()
            return
        for peer in self.membership.voters:
            if peer != self.id:
                self._send(
                    RequestVote(
                        term=vote_term,
                        sender=self.id,
                        recipient=peer,
                        last_log_index=self.log.last_index(),
                        last_log_term=self.log.last_term(),
                        pre_vote=pre_vote,
                        transfer=transfer,
                    )
                )

    def _won_election(self) -> None:
        if self.role is Role.PRE_CANDIDATE:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

    # --- ticks -----------------------------------------------------------------------

    def _tick_election(self) -> None:
        if self._timer.tick(self.promotable):
            self._campaign(pre_vote=self.config.pre_vote)

    # --- common term rules -------------------------------------------------------------

    def _in_lease(self) -> bool:
        """Heard from a leader within the election timeout (leader stickiness, §4.2.3),
        or within a heartbeat interval and a margin once told the link to it broke."""
        return (
            self.config.check_quorum
            and self.leader_id is not None
            and self._timer.elapsed < self._timer.lease()
        )

    def _accept_higher_term(self, msg: Message) -> bool:
        """Apply the rule 'a higher term makes us a follower', with its exceptions.
        Returns False when the message must be ignored."""
        if isinstance(msg, RequestVote):
            if not msg.transfer and self._in_lease():
                return False
            if msg.pre_vote:
                return True  # a pre-vote never changes our term
            # Only a leader's message or a granted vote restarts the election timer
            # (§3.4): a candidate that cannot win must not postpone our campaign forever.
            timer = self._timer.state()
            self._become_follower(msg.term, None)
            self._timer.restore(timer)
            return True
        if isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
            return True  # granted pre-votes carry the term we would campaign in
        leader = msg.sender if isinstance(msg, (AppendEntries, TimeoutNow)) else None
        self._become_follower(msg.term, leader)
        return True

    # --- votes ----------------------------------------------------------------------------

    def _may_consider(self, msg: RequestVote) -> bool:
        """Any node votes, whatever its configuration says (as in etcd-io/raft): a
        learner may not know yet that it was promoted. A candidate we know as a learner,
        or not at all, may be a voter we have not heard of; one that missed its removal
        has a log behind ours once the cluster wrote past it. Such a stranger is ignored:
        it could not get our vote, and changing term for it would depose a healthy leader."""
        if msg.sender in self.membership:
            return True
        return self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)

    def _handle_vote_request(self, msg: RequestVote) -> None:
        can_vote = (
            self.vote == msg.sender
            or (self.vote is None and self.leader_id is None)
            or (msg.pre_vote and msg.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(msg.last_log_index, msg.last_log_term):
            self._send(RequestVoteResponse(msg.term, self.id, msg.sender, True, msg.pre_vote))
            if not msg.pre_vote:
                self._timer.elapsed = 0
                self.vote = msg.sender
        else:
            self._send(RequestVoteResponse(self.term, self.id, msg.sender, False, msg.pre_vote))

    def _step_campaigner(self, msg: Message) -> None:
        """Pre-candidates and candidates count votes; a leader of their term ends the race."""
        if isinstance(msg, (AppendEntries, InstallSnapshot)):
            self._become_follower(self.term, msg.sender)
            self._step_follower(msg)
        elif isinstance(msg, RequestVoteResponse):
            if msg.pre_vote != (self.role is Role.PRE_CANDIDATE):
                return
            if msg.pre_vote and msg.granted and msg.term != self.term + 1:
                return  # granted for a pre-campaign we have since abandoned
            self._votes.setdefault(msg.sender, msg.granted)
            result = quorum.vote_result(self.voters, self._votes)
            if result is True:
                self._won_election()
            elif result is False:
                self._become_follower(self.term, None)

    # --- follower -----------------------------------------------------------------------

    def _step_follower(self, msg: Message) -> None:
        if isinstance(msg, AppendEntries | InstallSnapshot):
            self._timer.heard_leader()
            self.leader_id = msg.sender
            if isinstance(msg, AppendEntries):
                self._handle_append(msg)
            else:
                self._handle_snapshot(msg)
        elif isinstance(msg, LeaderDurable):
            self._notes.heard(msg)
            self._notes.commit(self.term, self.membership, self._conf_index)
        elif isinstance(msg, TimeoutNow) and self.promotable:
            self._campaign(pre_vote=False, transfer=True)

    def _handle_snapshot(self, msg: InstallSnapshot) -> None:
        snapshot = msg.snapshot
        if self.log.maybe_restore(snapshot):
            self.membership = snapshot.membership
            self._conf_index = snapshot.index
        self._send(AppendEntriesResponse(self.term, self.id, msg.sender, True, self.log.committed))

    def _handle_append(self, msg: AppendEntries) -> None:
        result = self.log.maybe_append(
            msg.prev_log_index, msg.prev_log_term, msg.entries, msg.leader_commit
        )
        if result.success and msg.commit_only:
            return  # the leader needs no answer (see AppendEntries.commit_only)
        self._send(
            AppendEntriesResponse(
                self.term,
                self.id,
                msg.sender,
                result.success,
                match_index=result.match_index,
                conflict_term=result.conflict_term,
                conflict_index=result.conflict_index,
                read_seq=msg.read_seq,
            )
        )

    # --- membership -----------------------------------------------------------------------

    def _apply_conf_changes(self, entries: tuple[Entry, ...] | list[Entry]) -> bool:
        """Changes take effect as they are committed (handed out for applying); a node
        replays those of its committed log at start, so restarts see the same result.
        Returns whether any change took effect."""
        changed = False
        for entry in entries:
            if entry.type is EntryType.CONF_CHANGE and entry.index > self._conf_index:
                self._conf_index = entry.index
                self.membership = apply_change(self.membership, decode_conf_change(entry.data))
                self._membership_changed()
                changed = True
        return changed

    def _membership_changed(self) -> None:
        """A node that is no longer a voter stops leading or campaigning."""
        if not self.promotable and self.role is not Role.FOLLOWER:
            self._become_follower(self.term, None)
        elif self._leadership is not None:
            self._leadership.membership_changed(self.membership)

    # --- plumbing -------------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    def _serve_reads(self, reads: Iterable[ReadState]) -> None:
        self._read_states.extend(reads)

    def _leader_to_ask(self) -> NodeId | None:
        """Only a follower asks a leader (a candidate's old leader is gone)."""
        return self.leader_id if self.role is Role.FOLLOWER else None

    def _leading(self) -> Leadership:
        """The leader's side, for requests only a leader takes."""
        if self._leadership is None:
            raise NotLeader(self.leader_id)
        return self._leadership
