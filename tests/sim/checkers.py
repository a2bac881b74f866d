"""Raft's safety properties, checked continuously while the simulator runs.

The cluster calls these hooks at every point where a property could first break: after
each call into a node (`observe`), on every Ready (`on_ready`), before every disk write
(`on_save`), for every message leaving a node (`on_send`), for every applied entry
(`on_apply`) and for every ReadState (`on_read_state`). Checking at the source makes a
failure point at the step that caused it rather than at some later symptom.

Most checks are incremental so they can run thousands of times per schedule:
- Log Matching: an (index, term) pair names one entry forever, with one predecessor
  term; by induction, two logs agreeing on (index, term) then agree on the whole prefix.
- Committed prefix: a global list of every entry ever committed. An entry joins it when
  some node's commit index first covers it, and must then be on a majority of disks
  and can never be overwritten on a disk that holds it (never lost, never changed).
- Leader Completeness: a leader of term T holds every entry committed in terms <= T;
  thanks to Log Matching it is enough to compare the term of its last such entry.
- Membership: the configuration history is read off the committed prefix. A committed
  entry must be on a majority of the voters of the configuration that committed it; with
  single-server changes that is the newest configuration committed below it or, for a
  leader that has not applied that one yet, the one before (majorities of the two
  overlap). Every node's (conf index, membership) must match that history, and a node
  that knows its own removal is committed never leads again.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from consensus import (
    AppendEntriesResponse,
    Entry,
    EntryType,
    ForwardedProposal,
    HardState,
    LeaderDurable,
    Membership,
    Message,
    NodeId,
    RaftNode,
    ReadState,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
)
from consensus.membership import apply_change, decode_conf_change
from kvstore.state.commands import Command
from kvstore.state.types import SESSION_EXPIRED, ApplyResult
from tests.sim.disk import SimDisk
from tests.sim.host import unpack_snapshot

ALL_CHECKS = frozenset(
    {
        "election_safety",
        "commit_rule",
        "log_matching",
        "leader_completeness",
        "state_machine_safety",
        "committed_durable",
        "hard_state",
        "promises",
        "linearizable_reads",
        "snapshot",
        "membership",
        "removed_leader",
        "removed_leader_committed",
        "kv_determinism",
        "kv_exactly_once",
        "forwarded_proposals",
    }
)


OPT_IN_CHECKS = frozenset({"removed_leader_committed"})
"""Off unless named in SIM_ENABLE_CHECKS (comma-separated): stricter than safety needs,
and the core breaks it today (FINDINGS.md)."""
_ENABLED = frozenset(os.environ.get("SIM_ENABLE_CHECKS", "").split(","))


class SimFailure(AssertionError):
    """A safety property broke; the message names the seed, step and how to replay."""


@dataclass(slots=True)
class _Known:
    """What the first sighting of an (index, term) pair fixed about it."""

    entry: Entry
    prev_term: int
    where: str


@dataclass
class Checkers:
    """Holds the global history the properties are stated over."""

    voters: Sequence[NodeId]
    context: Callable[[], str]
    disabled: frozenset[str] = frozenset()
    leader_of_term: dict[int, NodeId] = field(default_factory=dict)
    committed: list[Entry] = field(default_factory=list)
    _seg_terms: list[int] = field(default_factory=list)
    _seg_upto: list[int] = field(default_factory=list)
    _known: dict[tuple[int, int], _Known] = field(default_factory=dict)
    _applied: dict[int, tuple[NodeId, Entry]] = field(default_factory=dict)
    _term_seen: dict[NodeId, int] = field(default_factory=dict)
    _leader_commit: dict[NodeId, tuple[int, int]] = field(default_factory=dict)
    disks: dict[NodeId, SimDisk] = field(default_factory=dict)
    checks_run: int = 0
    conf_indexes: list[int] = field(default_factory=lambda: [0])
    confs: list[Membership] = field(default_factory=lambda: [Membership(())])
    """Configuration history from the committed prefix: confs[k] is in force from
    index conf_indexes[k] (index 0: nothing committed yet, no voters)."""
    removed_at: dict[NodeId, int] = field(default_factory=dict)
    """Index of the committed change that took a node out of the membership."""
    _ever: set[NodeId] = field(default_factory=set)
    _conf_seen: dict[int, tuple[NodeId, Membership]] = field(default_factory=dict)
    kv_fingerprints: dict[int, tuple[NodeId, str]] = field(default_factory=dict)
    """KV mode: the KV machine's fingerprint after applying each index, first seen."""
    kv_executed: dict[tuple[str, int], tuple[int, ApplyResult]] = field(default_factory=dict)
    """KV mode: (client id, seq) -> the index that executed it and its result."""
    kv_retries: int = 0
    """Retried (client, seq) entries applied after the first execution (coverage)."""
    kv_reopened: int = 0
    """Re-executions the state machine documents as possible (see on_kv_apply)."""
    forwarded_at: dict[tuple[int, int], tuple[NodeId, bytes]] = field(default_factory=dict)
    """(index, term) a leader said it put a follower's proposal at -> (follower, payload)."""
    refused: dict[bytes, NodeId] = field(default_factory=dict)
    """Payloads whose forwarding was refused ("certainly never proposed") -> follower."""

    def membership_at(self, index: int) -> Membership:
        """The committed configuration in force at `index` (newest change <= index)."""
        return self.confs[bisect.bisect_right(self.conf_indexes, index) - 1]

    def ever_members(self) -> set[NodeId]:
        return self._ever

    def restarted(self, nid: NodeId) -> None:
        """A new incarnation: in-memory monotonicity starts over (the disk's does not)."""
        self._term_seen.pop(nid, None)
        self._leader_commit.pop(nid, None)

    def fail(self, rule: str, description: str) -> None:
        """Raise the one failure type, always with the replay context attached."""
        raise SimFailure(f"{rule} violated: {description}\n{self.context()}")

    def _on(self, rule: str) -> bool:
        if rule in OPT_IN_CHECKS:
            return rule in _ENABLED and rule not in self.disabled
        return rule not in self.disabled

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    # --- after every call into a node ------------------------------------------------
    def observe(self, nid: NodeId, node: RaftNode) -> None:
        """Election Safety, term monotonicity, commit tracking and Leader Completeness."""
        self.checks_run += 1
        term = node.term
        if term < self._term_seen.get(nid, 0):
            self.fail("hard_state", f"{nid} went back from term {self._term_seen[nid]} to {term}")
        self._term_seen[nid] = term
        if node.role is Role.LEADER and self._on("election_safety"):
            other = self.leader_of_term.setdefault(term, nid)
            if other != nid:
                self.fail("election_safety", f"two leaders in term {term}: {other} and {nid}")
        commit = node.commit_index
        log = node.log
        if node.role is Role.LEADER and (nid,) in (node.membership.voters, self.confs[-1].voters):
            commit = self._sole_voter_commit(nid, node)
        if commit > log.last_index():
            self.fail("log_matching", f"{nid} commit {commit} is past its last index")
        if commit > len(self.committed):
            self._extend_committed(nid, node, commit)
        elif commit > 0 and log.term(commit) != self.committed[commit - 1].term:
            self.fail(
                "state_machine_safety",
                f"{nid} says index {commit} (term {log.term(commit)}) is committed but the "
                f"committed entry there is {self.committed[commit - 1]}",
            )
        if self._on("membership"):
            self._check_membership(nid, node)
        if node.role is Role.LEADER:
            removed = self.removed_at.get(nid)
            if nid not in node.membership.voters and self._on("removed_leader"):
                self.fail(
                    "removed_leader",
                    f"{nid} leads term {term} though its membership {node.membership} "
                    "does not list it as a voter",
                )
            if removed is not None and commit >= removed and self._on("removed_leader_committed"):
                self.fail(
                    "removed_leader_committed",
                    f"{nid} leads term {term} though its commit index {commit} covers its "
                    f"own removal at {removed} (applied {node.applied_index}, membership "
                    f"{node.membership})",
                )
        if node.role is Role.LEADER:
            if self._on("leader_completeness"):
                self._check_leader_completeness(nid, node)
            if self._on("commit_rule"):
                self._check_commit_rule(nid, node)
        else:
            self._leader_commit.pop(nid, None)

    def _sole_voter_commit(self, nid: NodeId, node: RaftNode) -> int:
        """A sole voter counts its in-memory copy, so it commits an entry on appending it;
        the Ready then persists it before applying or sending anything. An entry lost in a
        crash before that was never committed to anyone: count only what is on its disk."""
        storage = self.disks[nid].storage
        limit = min(node.commit_index, storage.last_index())
        while limit >= storage.first_index() and storage.term(limit) != node.log.term(limit):
            limit -= 1
        return limit

    def _check_membership(self, nid: NodeId, node: RaftNode) -> None:
        """Configurations are deterministic from the log: every node that has applied the
        changes up to conf index c holds the committed configuration at c."""
        conf_index: int = node._conf_index
        if conf_index == 0:
            return  # the founding voters from Config, or a joining node's empty one
        membership = node.membership
        seen = self._conf_seen.setdefault(conf_index, (nid, membership))
        if seen[1] != membership:
            self.fail(
                "membership",
                f"at conf index {conf_index} {nid} holds {membership} but {seen[0]} held {seen[1]}",
            )
        if conf_index > len(self.committed):
            if node.role is Role.LEADER and self.confs[-1].voters == (nid,):
                return  # a sole voter applies its change before persisting (see above)
            self.fail(
                "membership",
                f"{nid} applies the configuration at {conf_index}, beyond the committed "
                f"prefix ({len(self.committed)})",
            )
        want = self.membership_at(conf_index)
        if membership != want:
            self.fail(
                "membership",
                f"{nid} holds {membership} at conf index {conf_index}; the committed "
                f"history says {want}",
            )

    def _committing_configs(self, index: int) -> list[Membership]:
        """The configurations a leader may have counted a commit of `index` with: the
        newest committed below it, and (its change not applied yet) the one before."""
        position = bisect.bisect_left(self.conf_indexes, index) - 1
        return [self.confs[p] for p in (position, position - 1) if p >= 1]

    def _check_commit_rule(self, nid: NodeId, node: RaftNode) -> None:
        """Raft §5.4.2 (Figure 8): a leader advances its commit index only onto an entry
        of its own term; older entries are committed indirectly, never by counting."""
        term, commit = node.term, node.commit_index
        before = self._leader_commit.get(nid)
        self._leader_commit[nid] = (term, commit)
        if before is None or before[0] != term or commit <= before[1]:
            return
        if node.log.term(commit) != term:
            self.fail(
                "commit_rule",
                f"leader {nid} of term {term} moved its commit index {before[1]} -> {commit} "
                f"onto an entry of term {node.log.term(commit)}",
            )

    def _extend_committed(self, nid: NodeId, node: RaftNode, commit: int) -> None:
        start = len(self.committed) + 1
        if start < node.log.first_index():
            self.fail(
                "snapshot",
                f"{nid} commits {start}..{commit} but they are compacted before any node was "
                "seen committing them",
            )
        new = node.log.slice(start, commit + 1)
        if len(new) != commit + 1 - start:
            self.fail("log_matching", f"{nid} cannot produce committed entries {start}..{commit}")
        for entry in new:
            known = self._known.get((entry.index, entry.term))
            if known is not None and known.entry != entry:
                self.fail("log_matching", f"{nid} commits {entry}, but it was {known.entry}")
            if self._on("committed_durable") and not _is_bootstrap(entry):
                self._check_durable(f"{nid} (term {node.term})", entry, set())
            if entry.type is EntryType.CONF_CHANGE:
                self._record_conf(entry)
            self.committed.append(entry)
            self._check_forwarded(entry)
        term = max(node.term, self._seg_terms[-1] if self._seg_terms else 0)
        if self._seg_terms and self._seg_terms[-1] == term:
            self._seg_upto[-1] = commit
        else:
            self._seg_terms.append(term)
            self._seg_upto.append(commit)

    def _check_durable(self, who: str, entry: Entry, extra: set[NodeId]) -> None:
        holders = {d for d, disk in self.disks.items() if disk.entry(entry.index) == entry}
        holders |= extra
        configs = self._committing_configs(entry.index)
        if not any(2 * len(holders.intersection(c.voters)) > len(c.voters) for c in configs):
            self.fail(
                "committed_durable",
                f"{who} committed {entry} but only {sorted(holders)} hold it on disk; "
                f"not a majority of {[c.voters for c in configs]}",
            )

    def _record_conf(self, entry: Entry) -> None:
        before = self.confs[-1]
        after = apply_change(before, decode_conf_change(entry.data))
        self.conf_indexes.append(entry.index)
        self.confs.append(after)
        self._ever.update(after.members())
        for gone in before.members():
            if gone not in after:
                self.removed_at.setdefault(gone, entry.index)

    def _check_leader_completeness(self, nid: NodeId, node: RaftNode) -> None:
        position = bisect.bisect_right(self._seg_terms, node.term)
        if position == 0:
            return
        upto = self._seg_upto[position - 1]
        want = self.committed[upto - 1]
        if upto < node.log.first_index() - 1:
            return  # inside its snapshot, whose content on_snapshot/on_restore verified
        if node.log.last_index() < upto or node.log.term(upto) != want.term:
            self.fail(
                "leader_completeness",
                f"leader {nid} of term {node.term} lacks committed {want} "
                f"(its last index {node.log.last_index()}, term at {upto}: "
                f"{node.log.term(upto)})",
            )

    # --- Log Matching over every entry a core hands out -------------------------------
    def on_ready(self, nid: NodeId, node: RaftNode, entries: Sequence[Entry]) -> None:
        """Register unstable entries as the core sees them (its in-memory log)."""
        if not self._on("log_matching"):
            return
        for entry in entries:
            self._register(entry, node.log.term(entry.index - 1), f"{nid} (in memory)")

    def _register(self, entry: Entry, prev_term: int, where: str) -> None:
        key = (entry.index, entry.term)
        known = self._known.get(key)
        if known is None:
            self._known[key] = _Known(entry, prev_term, where)
            return
        if known.entry != entry or known.prev_term != prev_term:
            self.fail(
                "log_matching",
                f"{where} holds {entry} after term {prev_term}, but {known.where} held "
                f"{known.entry} after term {known.prev_term}",
            )

    # --- before every disk write ---------------------------------------------------------
    def on_save(
        self, nid: NodeId, disk: SimDisk, hard_state: HardState | None, entries: Sequence[Entry]
    ) -> None:
        if hard_state is not None and self._on("hard_state"):
            self._check_hard_state(nid, disk.hard_state, hard_state)
        if not entries:
            if hard_state is not None and hard_state.commit > disk.last_index():
                self.fail("hard_state", f"{nid} persists commit {hard_state.commit} past its log")
            return
        first = entries[0].index
        if first > disk.last_index() + 1:
            self.fail("log_matching", f"{nid} saves entries from {first} past its last index")
        if first < disk.storage.first_index():
            self.fail("snapshot", f"{nid} saves entries from {first}, inside its snapshot")
        if self._on("log_matching"):
            prev_term = disk.storage.term(first - 1)
            for entry in entries:
                self._register(entry, prev_term, f"{nid} (disk)")
                prev_term = entry.term
        if self._on("committed_durable"):
            last_new = entries[-1].index
            for index in range(first, min(disk.last_index(), len(self.committed)) + 1):
                old = disk.entry(index)
                if old != self.committed[index - 1]:
                    continue
                new = entries[index - first] if index <= last_new else None
                if new != old:
                    self.fail(
                        "committed_durable",
                        f"{nid} overwrites committed {old} on disk with {new}",
                    )
        if hard_state is not None and hard_state.commit > entries[-1].index:
            self.fail("hard_state", f"{nid} persists commit {hard_state.commit} past its log")

    def _check_hard_state(self, nid: NodeId, old: HardState, new: HardState) -> None:
        if new.term < old.term:
            self.fail("hard_state", f"{nid} persists term {new.term} after {old.term}")
        if new.term == old.term and old.vote is not None and new.vote != old.vote:
            self.fail("hard_state", f"{nid} changes its vote in term {new.term}: {old} -> {new}")
        if new.commit < old.commit:
            self.fail("hard_state", f"{nid} persists commit {new.commit} after {old.commit}")

    # --- snapshots: taken locally or installed from the leader ----------------------------
    def on_snapshot(self, nid: NodeId, disk: SimDisk, meta: SnapshotMeta, data: bytes) -> None:
        """A snapshot may only cover committed entries, and must hold exactly their state."""
        if not self._on("snapshot"):
            return
        if meta.index > len(self.committed):
            self.fail("snapshot", f"{nid} stores {meta} beyond the committed index")
        if meta.index and self.committed[meta.index - 1].term != meta.term:
            self.fail("snapshot", f"{nid} stores {meta}, committed entry is different")
        known = len(self.confs) > 1  # hand-built histories in unit tests have none
        if known and self._on("membership") and meta.membership != self.membership_at(meta.index):
            self.fail(
                "membership",
                f"{nid} stores {meta} but the committed configuration there is "
                f"{self.membership_at(meta.index)}",
            )
        applied_index, payloads, kv_data = unpack_snapshot(data)
        self.on_restore(nid, meta, applied_index, payloads)
        if kv_data is not None:
            self.on_kv_snapshot(nid, meta.index, hashlib.sha256(kv_data).hexdigest())

    def on_restore(
        self, nid: NodeId, meta: SnapshotMeta, applied_index: int, payloads: list[bytes]
    ) -> None:
        if not self._on("snapshot"):
            return
        want = [e.data for e in self.committed[: meta.index] if e.type is EntryType.NORMAL]
        if applied_index != meta.index or payloads != want:
            self.fail(
                "snapshot",
                f"{nid} snapshot {meta} holds state at {applied_index} with {len(payloads)} "
                f"payloads; the committed prefix has {len(want)}",
            )

    # --- every message leaving a node -------------------------------------------------
    def on_send(self, nid: NodeId, disk: SimDisk, msg: Message) -> None:
        """A message may only promise what is already durable (vote, term, entries)."""
        if not self._on("promises"):
            return
        if isinstance(msg, RequestVote | RequestVoteResponse) and msg.pre_vote:
            return  # pre-votes promise nothing and carry a future term
        hard = disk.hard_state
        if hard.term < msg.term:
            self.fail("promises", f"{nid} sends {msg} while its disk still says term {hard.term}")
        if isinstance(msg, RequestVoteResponse):
            if msg.granted and hard.term == msg.term and hard.vote != msg.recipient:
                self.fail("promises", f"{nid} grants {msg} but its disk records vote {hard.vote}")
        elif isinstance(msg, LeaderDurable) and disk.last_index() < msg.index:
            self.fail(
                "promises",
                f"{nid} says it holds {msg.index} durably with {disk.last_index()} on disk",
            )
        elif isinstance(msg, AppendEntriesResponse):
            acked = msg.success and hard.term == msg.term
            if acked and disk.last_index() < msg.match_index:
                self.fail(
                    "promises",
                    f"{nid} acknowledges up to {msg.match_index} with only "
                    f"{disk.last_index()} entries on disk",
                )

    # --- every applied entry and read ---------------------------------------------------
    def on_apply(self, nid: NodeId, entry: Entry) -> None:
        if not self._on("state_machine_safety"):
            return
        first = entry.index not in self._applied
        earlier = self._applied.setdefault(entry.index, (nid, entry))
        sole_voter = any(len(c.voters) == 1 for c in self._committing_configs(entry.index))
        if first and sole_voter and self._on("committed_durable") and not _is_bootstrap(entry):
            self._check_durable(f"{nid} (applying)", entry, set())
        if earlier[1] != entry:
            self.fail(
                "state_machine_safety",
                f"{nid} applies {entry} at index {entry.index}, {earlier[0]} applied {earlier[1]}",
            )
        if entry.index > len(self.committed) or self.committed[entry.index - 1] != entry:
            self.fail("state_machine_safety", f"{nid} applies {entry} which is not committed")

    def on_kv_apply(
        self,
        nid: NodeId,
        index: int,
        fingerprint: str,
        command: Command | None,
        result: ApplyResult | None,
        state_moved: bool,
        had_session: bool,
    ) -> None:
        """Same log, same KV state (keys, revision, sessions, leases, locks) on every
        node; and a retried (client, seq) changes nothing a second time (`state_moved`:
        the revision or the lease and lock tables changed)."""
        if self._on("kv_determinism"):
            earlier = self.kv_fingerprints.setdefault(index, (nid, fingerprint))
            if earlier[1] != fingerprint:
                self.fail(
                    "kv_determinism",
                    f"{nid} holds KV state {fingerprint[:12]} after applying index {index}, "
                    f"{earlier[0]} held {earlier[1][:12]}",
                )
        ref = command.session if command is not None else None
        if ref is None or result is None or not self._on("kv_exactly_once"):
            return
        key = (ref.client_id, ref.seq)
        first = self.kv_executed.get(key)
        if first is None or first[0] == index:
            if first is None and result != SESSION_EXPIRED:
                self.kv_executed[key] = (index, result)
            return
        self.kv_retries += 1
        if not state_moved and result in (first[1], SESSION_EXPIRED):
            return
        if ref.first_outstanding == 1 and not had_session:
            # Documented residual (state_machine.py): a request sent before the client
            # had any answer (seq 1, or seq 2.. sent at once with it) executed, its
            # session and then its record of dropped ids forgotten, only then the retry.
            self.kv_reopened += 1
            self.kv_executed[key] = (index, result)
            return
        self.fail(
            "kv_exactly_once",
            f"{nid} applies retried ({ref.client_id}, seq {ref.seq}) at index {index} with "
            f"{result} (state moved: {state_moved}); it was executed at index "
            f"{first[0]} with {first[1]}",
        )

    def on_kv_snapshot(self, nid: NodeId, index: int, fingerprint: str) -> None:
        """A KV snapshot (taken or installed) at `index` holds what appliers had there."""
        earlier = self.kv_fingerprints.get(index)
        if self._on("kv_determinism") and earlier is not None and earlier[1] != fingerprint:
            self.fail(
                "kv_determinism",
                f"{nid} has a KV snapshot {fingerprint[:12]} at index {index}, "
                f"{earlier[0]} applied up to there and held {earlier[1][:12]}",
            )

    def on_forwarded(
        self, nid: NodeId, outcome: ForwardedProposal, payload: bytes, unique: bool
    ) -> None:
        """A follower learnt where its forwarded proposal went. It answers its client
        from the entry it applies at (index, term), so that entry must carry exactly
        its payload; a refusal promises the payload is never committed (checked where
        payloads are `unique` to one attempt)."""
        if not self._on("forwarded_proposals"):
            return
        if outcome.index == 0:
            if unique:
                self.refused[payload] = nid
                for entry in self.committed:
                    self._check_forwarded(entry)
            return
        self.forwarded_at[(outcome.index, outcome.term)] = (nid, payload)
        if outcome.index <= len(self.committed):
            self._check_forwarded(self.committed[outcome.index - 1])

    def _check_forwarded(self, entry: Entry) -> None:
        forwarded = self.forwarded_at.get((entry.index, entry.term))
        if forwarded is not None and forwarded[1] != entry.data:
            self.fail(
                "forwarded_proposals",
                f"{forwarded[0]} was told its proposal {forwarded[1][:20]!r} is entry "
                f"{entry.index} of term {entry.term}, which commits {entry.data[:20]!r}",
            )
        refused_by = self.refused.get(entry.data) if entry.type is EntryType.NORMAL else None
        if refused_by is not None:
            self.fail(
                "forwarded_proposals",
                f"{refused_by} was told its proposal {entry.data[:20]!r} was never proposed, "
                f"but it is committed at {entry.index}",
            )

    def on_read_state(self, nid: NodeId, state: ReadState, required: int) -> None:
        if self._on("linearizable_reads") and state.index < required:
            self.fail(
                "linearizable_reads",
                f"{nid} serves read {state.request_id!r} at index {state.index}, but index "
                f"{required} was committed before the read was requested",
            )

    # --- whole-state check, for hypothesis invariants and the end of a run ----------------
    def full_check(self, logs: Iterable[tuple[str, int, Sequence[Entry]]]) -> None:
        """Pairwise Log Matching over whole logs (cores, disks and the committed prefix),
        each given as (name, index of its first entry, entries)."""
        if not self._on("log_matching"):
            return
        named = [("committed prefix", 1, self.committed), *logs]
        for i, (name_a, first_a, log_a) in enumerate(named):
            for name_b, first_b, log_b in named[i + 1 :]:
                _check_pair(self, (name_a, first_a, log_a), (name_b, first_b, log_b))


def _is_bootstrap(entry: Entry) -> bool:
    """Entry 1 of term 1 naming the founding voters is written identically by every
    founding node at start-up (as etcd does): committed by configuration, not by a quorum."""
    return entry.index == 1 and entry.term == 1 and entry.type.name == "CONF_CHANGE"


def _check_pair(
    checkers: Checkers,
    a: tuple[str, int, Sequence[Entry]],
    b: tuple[str, int, Sequence[Entry]],
) -> None:
    """Find the highest index both logs hold with the same term; everything both hold
    below it must be identical (compacted prefixes are checked by the snapshot rules)."""
    name_a, first_a, log_a = a
    name_b, first_b, log_b = b
    low = max(first_a, first_b)
    top = min(first_a + len(log_a), first_b + len(log_b)) - 1
    while top >= low and log_a[top - first_a].term != log_b[top - first_b].term:
        top -= 1
    for index in range(low, top + 1):
        entry_a, entry_b = log_a[index - first_a], log_b[index - first_b]
        if entry_a != entry_b:
            checkers.fail(
                "log_matching",
                f"{name_a} and {name_b} agree on term {log_a[top - first_a].term} at index "
                f"{top} but differ at {index}: {entry_a} vs {entry_b}",
            )
