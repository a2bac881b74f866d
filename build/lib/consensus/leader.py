"""The leader's half of RaftNode: replication with flow control, commitment, heartbeats,
CheckQuorum and ReadIndex rounds.

It is a mixin so that the protocol reads as one step function per role (as in
etcd-io/raft) while each module stays small; it works on the state RaftNode owns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus import quorum
from consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    Message,
    TimeoutNow,
)
from consensus.progress import Progress, ProgressState
from consensus.types import Entry, NodeId

if TYPE_CHECKING:
    from consensus.node import RaftNode

SNAPSHOT_RETRY_TIMEOUTS = 3
"""Election timeouts a leader waits for a snapshot to be acknowledged before it asks
the driver to send it again (the driver resumes a transfer still under way)."""


class LeaderMixin:
    def _tick_leader(self: RaftNode) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_tick:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_recently_active():
                self._become_follower(self.term, None)
                return
            self._transferee = None
        if self._heartbeat_elapsed >= self.config.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_recently_active(self: RaftNode) -> bool:
        """CheckQuorum: a leader that heard from no quorum for an election timeout
        steps down, so a partitioned leader stops serving and clients move on."""
        active = [p for p, pr in self._progress.items() if pr.recent_active or p == self.id]
        for peer, progress in self._progress.items():
            progress.recent_active = peer == self.id
        return quorum.has_quorum(self.membership.voters, active)

    # --- leader -------------------------------------------------------------------------

    def _step_leader(self: RaftNode, msg: Message) -> None:
        if not isinstance(msg, AppendEntriesResponse):
            return
        progress = self._progress.get(msg.sender)
        if progress is None:
            return  # from a node removed while its answer was on the way
        progress.recent_active = True
        if msg.read_seq > progress.read_ack:
            progress.read_ack = msg.read_seq
            self._release_confirmed_reads()
        if msg.success:
            self._handle_append_success(msg.sender, progress, msg.match_index)
        elif not progress.is_stale_rejection(msg.match_index):
            next_index = self._next_after_rejection(msg, progress)
            progress.become_probe()
            progress.next = next_index
            self._send_append(msg.sender)

    def _handle_append_success(
        self: RaftNode, peer: NodeId, progress: Progress, match: int
    ) -> None:
        if progress.maybe_update(match):
            state = progress.state
            snapshot_done = (
                state is ProgressState.SNAPSHOT and progress.match >= progress.pending_snapshot
            )
            if state is ProgressState.PROBE or snapshot_done:
                progress.become_replicate()
            if self._maybe_commit():
                self._on_commit()
        if self._transferee == peer and progress.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, peer))
        while self._send_append(peer, send_if_empty=False):
            pass

    def _next_after_rejection(
        self: RaftNode, msg: AppendEntriesResponse, progress: Progress
    ) -> int:
        next_index = msg.conflict_index
        if msg.conflict_term:
            ours = self.log.last_index_of_term(msg.conflict_term, msg.match_index)
            if ours is not None:
                next_index = ours + 1
        return max(min(next_index, msg.match_index), progress.match + 1)

    def _append_as_leader(self: RaftNode, entry: Entry) -> None:
        """Append now, replicate at the next `ready()`: proposals that arrive together
        then travel in one AppendEntries per follower instead of one each."""
        self.log.append([entry])
        self._replication_pending = True

    def _replicate_pending(self: RaftNode) -> None:
        self._replication_pending = False
        for peer in self._progress:
            if peer != self.id:
                while self._send_append(peer, send_if_empty=False):
                    pass

    def _maybe_commit(self: RaftNode) -> bool:
        """Figure 8: only an entry of the leader's own term is committed by counting
        replicas; earlier entries are committed indirectly with it."""
        match = {peer: pr.match for peer, pr in self._progress.items()}
        # The leader's own copy counts once it is durable (it may go out to followers
        # before its fsync ends), so two followers can commit without waiting for it.
        match[self.id] = self.log.last_stable_index()
        index = quorum.committed_index(self.membership.voters, match)
        if index > self.log.committed and self.log.term(index) == self.term:
            return self.log.commit_to(index)
        return False

    def _on_commit(self: RaftNode) -> None:
        if self._committed_in_term():
            self._reads.term_committed(self.log.committed)

    def _committed_in_term(self: RaftNode) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _send_append(self: RaftNode, peer: NodeId, send_if_empty: bool = True) -> bool:
        """Send the next batch to `peer` unless flow control says wait; returns whether
        anything was sent."""
        progress = self._progress[peer]
        if progress.is_paused():
            return False
        if progress.next < self.log.first_index():
            self._send_snapshot(peer, progress)
            return False
        entries = self.log.entries(progress.next, self.config.max_batch_bytes)
        if not entries and not send_if_empty and progress.state is ProgressState.REPLICATE:
            return False
        self._send_append_entries(
            peer, progress.next - 1, tuple(entries), self.log.committed, self._reads.seq
        )
        progress.sent(entries[-1].index if entries else None)
        return bool(entries)

    def _send_append_entries(
        self: RaftNode,
        peer: NodeId,
        prev_index: int,
        entries: tuple[Entry, ...],
        leader_commit: int,
        read_seq: int,
    ) -> None:
        self._send(
            AppendEntries(
                term=self.term,
                sender=self.id,
                recipient=peer,
                prev_log_index=prev_index,
                prev_log_term=self.log.term(prev_index),
                entries=entries,
                leader_commit=leader_commit,
                read_seq=read_seq,
            )
        )

    def _send_snapshot(self: RaftNode, peer: NodeId, progress: Progress) -> None:
        """The entries this follower needs are compacted: send the snapshot instead."""
        snapshot = self.log.storage.snapshot_meta()
        if snapshot is None:
            raise AssertionError("log is compacted but storage holds no snapshot")
        self._send(InstallSnapshot(self.term, self.id, peer, snapshot))
        progress.become_snapshot(snapshot.index)

    def _broadcast_heartbeat(self: RaftNode, read_seq: int | None = None) -> None:
        """Heartbeats name the follower's known match point, which it always holds, so
        they never trigger a rejection. A follower whose replication made no progress
        for an election timeout while appends were in flight lost one: it is probed
        again. (A shorter window would rewind healthy pipelines whose round trip, or
        fsync, is longer than a heartbeat interval.)"""
        last_index = self.log.last_index()
        stall_limit = max(2, -(-self.config.election_tick // self.config.heartbeat_tick))
        for peer, progress in self._progress.items():
            if peer == self.id:
                continue
            if progress.state is ProgressState.REPLICATE:
                if progress.is_stalled(last_index):
                    progress.stalled_heartbeats += 1
                    if progress.stalled_heartbeats >= stall_limit:
                        progress.become_probe()
                else:
                    progress.stalled_heartbeats = 0
                progress.match_at_heartbeat = progress.match
            elif progress.state is ProgressState.SNAPSHOT:
                progress.snapshot_heartbeats += 1
                if progress.snapshot_heartbeats >= SNAPSHOT_RETRY_TIMEOUTS * stall_limit:
                    progress.become_probe()
            if progress.state is ProgressState.PROBE:
                progress.probe_sent = False
                self._send_append(peer)
            # (0, 0) matches every log: used when the match point is inside the snapshot.
            prev_index = progress.match if progress.match >= self.log.first_index() - 1 else 0
            self._send_append_entries(
                peer,
                prev_index,
                (),
                min(self.log.committed, prev_index),
                self._reads.seq if read_seq is None else read_seq,
            )

    # --- ReadIndex ----------------------------------------------------------------------

    def _start_read_round(self: RaftNode) -> None:
        seq = self._reads.open_round()
        if self.membership.voters == (self.id,):
            self._release_confirmed_reads()
        else:
            self._broadcast_heartbeat(read_seq=seq)

    def _release_confirmed_reads(self: RaftNode) -> None:
        def confirmed(seq: int) -> bool:
            acked = [p for p, pr in self._progress.items() if p == self.id or pr.read_ack >= seq]
            return quorum.has_quorum(self.membership.voters, acked)

        self._read_states.extend(self._reads.confirm(confirmed))
