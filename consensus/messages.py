"""Messages between Raft nodes, one dataclass per message of the Raft paper.

Every message carries the sender's term, its sender and its recipient; the core
applies the common term rules once, before dispatching on the message type.

Messages are values, equal and hashed by their fields, but not frozen: a frozen
dataclass's __init__ sets each field through object.__setattr__ (1.6 against 0.4 us for
an AppendEntries, 2.0 against 0.2 for an AppendEntriesResponse), and every message is
built twice, by its sender and by the receiver's decoder. Never assign to one: the
transport, the simulator and traces share them.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.types import Entry, NodeId, SnapshotMeta


@dataclass(unsafe_hash=True, slots=True)
class RequestVote:
    """Asks for a vote. With `pre_vote` it only asks whether a vote *would* be granted
    (PreVote, dissertation §9.6), and `term` is the term the sender would campaign in.
    `transfer` marks a campaign started by TimeoutNow, which bypasses the leader lease."""

    term: int
    sender: NodeId
    recipient: NodeId
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(unsafe_hash=True, slots=True)
class RequestVoteResponse:
    term: int
    sender: NodeId
    recipient: NodeId
    granted: bool
    pre_vote: bool = False


@dataclass(unsafe_hash=True, slots=True)
class AppendEntries:
    """Replicates entries; with no entries it is a heartbeat. `read_seq` numbers the
    leader's heartbeat rounds so that a quorum of echoes confirms pending ReadIndex reads.
    `commit_only` marks an empty append sent only to announce the commit index
    (`Leadership._bump_commit`, ~half the leader's frames under load): a follower that
    holds `prev_log_index` does not answer it, since the answer would tell the leader
    nothing its acknowledgements of the entries did not (a rejection is still answered,
    so a lost append is still probed). Answering one anyway is harmless, which is what a
    node that predates the flag does (the transport sends it a plain append)."""

    term: int
    sender: NodeId
    recipient: NodeId
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    read_seq: int = 0
    commit_only: bool = False


@dataclass(unsafe_hash=True, slots=True)
class AppendEntriesResponse:
    """On success `match_index` is the last index known to match the leader's log.
    On rejection the follower names the term of its conflicting entry and the first
    index it holds of that term (or its log length), so the leader skips a whole term."""

    term: int
    sender: NodeId
    recipient: NodeId
    success: bool
    match_index: int = 0
    conflict_term: int = 0
    conflict_index: int = 0
    read_seq: int = 0


@dataclass(unsafe_hash=True, slots=True)
class TimeoutNow:
    """Tells the transfer target to campaign at once (leadership transfer, §3.10)."""

    term: int
    sender: NodeId
    recipient: NodeId


@dataclass(unsafe_hash=True, slots=True)
class InstallSnapshot:
    """Replaces a follower's log prefix with a snapshot (§5 of the dissertation, ch. 5).
    The core carries only the metadata; the driver streams the state itself in chunks
    and steps this message once the follower holds all of it. The follower answers
    with an AppendEntriesResponse whose match_index is the snapshot's index."""

    term: int
    sender: NodeId
    recipient: NodeId
    snapshot: SnapshotMeta


@dataclass(unsafe_hash=True, slots=True)
class ReadIndexRequest:
    """A follower asks the leader for a read index for reads of its own clients (the
    follower side of §6.4). Every read asked since the follower's last Ready travels in
    one request, and the leader puts them all in its next heartbeat round (or answers
    at once when the request completes a quorum: Leadership.read_index_for)."""

    term: int
    sender: NodeId
    recipient: NodeId
    request_ids: tuple[bytes, ...]


@dataclass(unsafe_hash=True, slots=True)
class ReadIndexResponse:
    """The leader's read index for the named reads: its commit index when they arrived
    (once it had committed an entry of its term), confirmed by a quorum of its term
    after they began: a heartbeat round, or the request itself when the asker and the
    leader are a quorum. The follower serves them once it has applied `index`."""

    term: int
    sender: NodeId
    recipient: NodeId
    request_ids: tuple[bytes, ...]
    index: int


@dataclass(unsafe_hash=True, slots=True)
class ProposeRequest:
    """A follower hands its clients' commands to the leader, which proposes each as if
    it came from a client of its own (`datas[i]` under `request_ids[i]`)."""

    term: int
    sender: NodeId
    recipient: NodeId
    request_ids: tuple[bytes, ...]
    datas: tuple[bytes, ...]


@dataclass(unsafe_hash=True, slots=True)
class ProposeResponse:
    """Where the leader put each forwarded proposal: `indexes[i]` in the leader's term
    (`term`), or 0 when it refused it (then it was certainly never proposed, `refused`
    says why). The follower learns the outcome by applying that index itself."""

    term: int
    sender: NodeId
    recipient: NodeId
    request_ids: tuple[bytes, ...]
    indexes: tuple[int, ...]
    refused: str = ""


@dataclass(unsafe_hash=True, slots=True)
class LeaderDurable:
    """The leader of `term` has its own log durable through `index`, and its membership
    is settled (every change in its log is in effect). A follower that holds entries of
    `term` durably, with the leader a majority of its settled membership, knows them
    committed without waiting for the leader's count (consensus.durable_note)."""

    term: int
    sender: NodeId
    recipient: NodeId
    index: int


FORWARDING = (ReadIndexRequest, ReadIndexResponse, ProposeRequest, ProposeResponse)
"""Messages a follower exchanges with its leader on behalf of its clients. They do not
take part in elections or replication, so the common term rules do not apply to them
(`RaftNode.step` explains what does)."""

Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | TimeoutNow
    | InstallSnapshot
    | ReadIndexRequest
    | ReadIndexResponse
    | ProposeRequest
    | ProposeResponse
    | LeaderDurable
)


def answer_to_stale(msg: Message, term: int, me: NodeId) -> Message | None:
    """What a node of `term` answers a message of an older term: a stale leader learns
    our term and steps down, and a pre-candidate learns it cannot win. Everything else
    from the past is dropped."""
    if isinstance(msg, AppendEntries):
        return AppendEntriesResponse(term, me, msg.sender, success=False)
    if isinstance(msg, RequestVote) and msg.pre_vote:
        return RequestVoteResponse(term, me, msg.sender, False, pre_vote=True)
    return None
