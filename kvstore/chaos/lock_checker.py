"""The verdict of `kv chaos --workload lock`, from what the lock clients saw and what the
store applied.

Inputs: the events every lock client recorded (kvstore.chaos.lock_worker; one clock for
all, the machine's monotonic clock, in seconds since the workload started) and the
fenced writes the store applied to the shared key, in revision order (read back after
recovery from the store's own history, so writes whose answer was lost are there too).
Each fenced write's value is "<worker> <token> <seq>".

What must hold, whatever the faults:
1. the tokens of the applied writes never decrease in revision order (fencing: a holder
   that lost the lock cannot write after a later holder did);
2. no two holders' critical sections overlap among the applied writes: between the first
   and the last applied write of one (worker, token), none of another; and no token is
   used by two workers;
3. no lease ends before its TTL: a lease is never seen gone earlier than TTL after the
   SEND time of the last keep-alive (or the grant) acknowledged to its client. Seen gone
   means, at the RETURN time of the answer that proved it: its keep-alive (or its
   queueing for the lock) answered lease_not_found, a write fenced with its token was
   refused, its token left the queue, or a later token (queued behind it: tokens are
   queue order) was told it holds or had a fenced write accepted; all before its client
   released the lock or revoked the lease itself. Send and return times make the check
   conservative: the renewal happened after the send and the end before the return, so
   a flagged lease certainly ended early;
4. every acknowledged write is in the store at its revision, no write refused (fenced or
   a definite failure) is, each applied value is a write some client sent, and none is
   applied twice.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

StoreWrite = tuple[int, str]
"""(revision, value) of one write the store applied to the shared key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LockEvent:
    """One request of a lock client and what it saw (a JSON line of a worker's log).

    kind: grant, keepalive, enqueue, poll, write, release, revoke. outcome: "ok",
    "gone" (lease_not_found), "fenced", "fail" (certainly not applied), "unknown".
    """

    worker: int
    kind: str
    call: float
    ret: float
    outcome: str
    lease: int = 0
    ttl: float = 0.0
    token: int = 0
    seq: int = 0
    value: str = ""
    revision: int = 0
    held: bool = False
    queued: bool = True

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LockEvent:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def write_value(worker: int, token: int, seq: int) -> str:
    return f"{worker} {token} {seq}"


def parse_value(value: str) -> tuple[int, int, int] | None:
    parts = value.split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    worker, token, seq = (int(p) for p in parts)
    return worker, token, seq


@dataclass
class LockCheck:
    """Every problem found (empty: PASS) and the figures the report shows."""

    problems: list[str]
    stats: dict[str, Any]


def check_locks(
    events: Sequence[LockEvent], applied: Sequence[StoreWrite], *, min_writes: int = 1
) -> LockCheck:
    problems = _token_order(applied)
    problems += _critical_sections(applied)
    problems += _accounted(events, applied)
    early, lifetimes = _early_expiries(events)
    problems += early
    writes = [e for e in events if e.kind == "write"]
    sections = {(w, t) for w, t, _ in filter(None, (parse_value(v) for _, v in applied))}
    if len(applied) < min_writes:
        problems.append(
            f"only {len(applied)} fenced writes were applied (need >= {min_writes}): "
            "the run proves nothing"
        )
    stats = {
        "workers": len({e.worker for e in events}),
        "leases": len({e.lease for e in events if e.kind == "grant" and e.outcome == "ok"}),
        "holds": sum(1 for e in events if e.kind == "poll" and e.held),
        "writes_applied": len(applied),
        "critical_sections_applied": len(sections),
        "writes_acknowledged": sum(1 for e in writes if e.outcome == "ok"),
        "writes_fenced": sum(1 for e in writes if e.outcome == "fenced"),
        "writes_unknown": sum(1 for e in writes if e.outcome == "unknown"),
        "writes_failed": sum(1 for e in writes if e.outcome == "fail"),
        "leases_expired": len(lifetimes),
        "shortest_expiry_s": round(min(lifetimes), 3) if lifetimes else None,
        "early_expiries": len(early),
        "problems": problems,
    }
    return LockCheck(problems, stats)


def _describe(revision: int, value: str) -> str:
    parsed = parse_value(value)
    if parsed is None:
        return f"revision {revision} ({value!r})"
    worker, token, seq = parsed
    return f"revision {revision} (worker {worker}, token {token}, write #{seq})"


def _token_order(applied: Sequence[StoreWrite]) -> list[str]:
    """Check 1: tokens never decrease along the revisions."""
    problems = []
    last: StoreWrite | None = None
    last_token = 0
    for revision, value in sorted(applied):
        parsed = parse_value(value)
        if parsed is None:
            problems.append(f"the store applied an unexpected value at revision {revision}")
            continue
        if parsed[1] < last_token and last is not None:
            problems.append(
                f"token went down: {_describe(revision, value)} was applied after "
                f"{_describe(*last)}: a holder that had lost the lock wrote after a later one"
            )
        if parsed[1] >= last_token:
            last, last_token = (revision, value), parsed[1]
    return problems


def _critical_sections(applied: Sequence[StoreWrite]) -> list[str]:
    """Check 2: the applied writes of each (worker, token) are one unbroken run."""
    problems = []
    runs: list[tuple[tuple[int, int], int, int]] = []  # (worker, token), first, last revision
    for revision, value in sorted(applied):
        parsed = parse_value(value)
        if parsed is None:
            continue
        owner = parsed[:2]
        if runs and runs[-1][0] == owner:
            runs[-1] = (owner, runs[-1][1], revision)
        else:
            runs.append((owner, revision, revision))
    first_run: dict[tuple[int, int], int] = {}
    workers_of: dict[int, set[int]] = defaultdict(set)
    for i, (owner, first, _) in enumerate(runs):
        workers_of[owner[1]].add(owner[0])
        if owner not in first_run:
            first_run[owner] = i
            continue
        earlier = runs[first_run[owner]]
        other = runs[i - 1]
        problems.append(
            f"critical sections overlap: worker {owner[0]} with token {owner[1]} wrote at "
            f"revisions {earlier[1]} and {first}, and worker {other[0][0]} with token "
            f"{other[0][1]} wrote in between (revisions {other[1]}-{other[2]})"
        )
    for token, workers in sorted(workers_of.items()):
        if len(workers) > 1:
            problems.append(f"token {token} was used by several workers: {sorted(workers)}")
    return problems


def _accounted(events: Iterable[LockEvent], applied: Sequence[StoreWrite]) -> list[str]:
    """Check 4: acknowledged writes applied where they said, refused ones absent."""
    problems = []
    at: dict[str, list[int]] = defaultdict(list)
    for revision, value in applied:
        at[value].append(revision)
    sent: set[str] = set()
    for e in events:
        if e.kind != "write":
            continue
        sent.add(e.value)
        found = at.get(e.value, [])
        if e.outcome == "ok" and found != [e.revision]:
            problems.append(
                f"acknowledged write {e.value!r} (revision {e.revision}) is not in the store "
                f"there (found at {found or 'no revision'})"
            )
        elif e.outcome in ("fenced", "fail") and found:
            problems.append(
                f"write {e.value!r} was refused ({e.outcome}) but the store applied it at "
                f"revision {found[0]}"
            )
    for value, revisions in sorted(at.items()):
        if value not in sent:
            problems.append(f"the store applied {value!r} (revision {revisions[0]}) nobody sent")
        elif len(revisions) > 1:
            problems.append(f"write {value!r} was applied more than once: {revisions}")
    return problems


@dataclass
class _Lease:
    worker: int
    ttl: float
    renewals: list[float]
    """Send times of the grant and of every acknowledged keep-alive."""
    token: int = 0
    let_go: float = math.inf
    """When its client first sent a release of the lock or a revoke of the lease."""
    gone: tuple[float, str] = (math.inf, "")
    """The earliest return time of an answer proving it gone, and what that answer was."""

    def saw_gone(self, at: float, how: str) -> None:
        if at < self.gone[0]:
            self.gone = (at, how)


def _early_expiries(events: Sequence[LockEvent]) -> tuple[list[str], list[float]]:
    """Check 3 (see the module docstring). Also returns, for every lease seen gone before
    its client let go (it expired), the time from its last keep-alive send to then."""
    leases: dict[int, _Lease] = {}
    for e in events:
        if e.kind == "grant" and e.outcome == "ok":
            leases[e.lease] = _Lease(e.worker, e.ttl, [e.call])
    held_proofs: list[tuple[int, float, str]] = []  # token, return time, what
    for e in events:
        if (e.kind == "poll" and e.held) or (e.kind == "write" and e.outcome == "ok"):
            what = "was told it holds" if e.kind == "poll" else "had a fenced write accepted"
            held_proofs.append((e.token, e.ret, f"worker {e.worker} with token {e.token} {what}"))
        lease = leases.get(e.lease)
        if lease is None:
            continue
        if e.kind == "keepalive" and e.outcome == "ok":
            lease.renewals.append(e.call)
        elif e.kind in ("keepalive", "enqueue") and e.outcome == "gone":
            lease.saw_gone(e.ret, f"its {e.kind} answered lease_not_found")
        elif e.kind == "enqueue" and e.outcome == "ok":
            lease.token = e.token
        elif e.kind in ("release", "revoke"):
            lease.let_go = min(lease.let_go, e.call)
        elif e.kind == "write" and e.outcome == "fenced":
            lease.saw_gone(e.ret, f"its fenced write {e.value!r} was refused")
        elif e.kind == "poll" and not e.queued:
            lease.saw_gone(e.ret, f"its token {e.token} had left the queue")
    # The earliest proof that some token above T held: T had left the queue by then.
    held_proofs.sort(key=lambda p: -p[0])
    earliest: list[tuple[int, float, str]] = []
    best: tuple[float, str] = (math.inf, "")
    for token, ret, what in held_proofs:
        if ret < best[0]:
            best = (ret, what)
        earliest.append((token, *best))
    earliest.reverse()  # ascending tokens, each with the earliest proof at or above it
    tokens = [p[0] for p in earliest]
    problems, lifetimes = [], []
    for ident, lease in sorted(leases.items()):
        if lease.token:
            i = bisect_right(tokens, lease.token)
            if i < len(earliest):
                lease.saw_gone(earliest[i][1], earliest[i][2])
        at, how = lease.gone
        if at >= lease.let_go or at == math.inf:
            continue
        renewed = max((s for s in lease.renewals if s < at), default=-math.inf)
        lifetimes.append(at - renewed)
        if at < renewed + lease.ttl:
            problems.append(
                f"lease {ident} of worker {lease.worker} (TTL {lease.ttl:g} s) ended early: "
                f"seen gone at {at:.3f} s ({how}), only {at - renewed:.3f} s after the send "
                f"of its last acknowledged keep-alive at {renewed:.3f} s"
            )
    return problems, lifetimes
