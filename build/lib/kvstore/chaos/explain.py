"""Turning "this key is not linearizable" into something a person can act on.

Three steps, each a few more runs of the search on smaller histories:

1. The culprit. Cut the history at time r: operations that returned by r keep their
   outcome, writes still running at r become optional (they may or may not have taken
   effect yet), reads still running are dropped, later operations are ignored. If the
   whole history linearizes, so does every cut (restrict its linearization to the
   operations that took effect by r), so "the cut at r fails" is monotone in r and a
   binary search over return times finds the earliest failing cut. The operations that
   returned exactly there are the culprit: their results are the first that nothing
   explains.
2. The diagnosis: the states in which the search tried and refused the culprit, i.e.
   what the key could hold while the culprit ran.
3. The window. Cut the failing prefix again, this time from the front at time t
   (operations that returned before t dropped, writes running at t optional) and check
   it from the WILDCARD state. That only relaxes the prefix, so a failing cut is a
   contradiction on its own, whatever the key held at t; the latest failing t gives
   the shortest such suffix. Then reads, and unknown-outcome writes of values no read
   returned, are dropped one by one while the rest still provably fails, leaving the
   operations that matter (the suffix failed with every unknown write in it, so none
   of those left out can explain the contradiction either). A violation about versions
   may need a long window: counting writes can take the whole history. When even the
   whole prefix is consistent from some starting state, the violation is about the key
   starting empty (a value nobody wrote, a version too high) and the window is the
   culprit with its neighbours.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvstore.chaos import relaxed
from kvstore.chaos.history import Operation
from kvstore.chaos.model import (
    CAS,
    PUT,
    UNSEEN,
    WILDCARD,
    State,
    Step,
    build_steps,
    describe_state,
    initial_state,
    observed_values,
    outcome_unknown,
    step,
)
from kvstore.chaos.portfolio import decide, prove_violation
from kvstore.chaos.search import Verdict, search

_MAX_DROPS = 80
_QUICK = 0.1
_MAX_UNDECIDED = 3
_MAX_LISTED = 30
_FALLBACK_CONTEXT = 4


@dataclass(frozen=True)
class Explanation:
    text: str
    window: list[Operation]


def cut_before(steps: Sequence[Step], r: float) -> list[Step]:
    """The history as known at time r (see the module docstring, step 1)."""
    out = []
    for s in steps:
        if s.call > r:
            continue
        if not s.optional and s.ret <= r:
            out.append(s)
        elif (pending := s.as_pending()) is not None:
            out.append(pending)
    return out


def cut_after(steps: Sequence[Step], t: float) -> list[Step]:
    """The history from time t on (see the module docstring, step 3)."""
    out = []
    for s in steps:
        if s.call >= t:
            out.append(s)
        elif s.ret >= t and (pending := s.as_pending()) is not None:
            out.append(pending)
    return out


def _fails(steps: Sequence[Step], initial: State, deadline: float) -> bool | None:
    verdict = decide(steps, initial, deadline)
    return None if verdict is Verdict.TIMEOUT else verdict is Verdict.VIOLATION


def explain(
    key: str, ops: Sequence[Operation], start: tuple[bytes, int] | None, budget: float
) -> Explanation:
    """Explain a violation already established for `ops` (one key, starting as `start`).

    Takes at most about `budget` seconds; when time runs short each step settles for a
    less precise but still correct answer (a later culprit, a longer window).
    """
    deadline = time.monotonic() + budget
    steps = build_steps(ops)
    initial = initial_state(start, observed_values(ops))
    returns = sorted({s.ret for s in steps if not s.optional})
    # Binary search for the earliest failing cut; the full history is known to fail.
    lo, hi = -1, len(returns) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        failed = _fails(cut_before(steps, returns[mid]), initial, _slice(deadline, budget))
        if failed is None:
            break  # out of time: the cut at hi is a correct, if later, culprit
        if failed:
            hi = mid
        else:
            lo = mid
    r = returns[hi]
    prefix = cut_before(steps, r)
    culprits = [s for s in prefix if not s.optional and s.ret == r]
    diagnosis = _diagnose(ops, r, culprits, start, _slice(deadline, budget) - time.monotonic())
    window, hidden = _window(prefix, culprits, deadline, budget / 10)
    lines = [f"key {key!r} is not linearizable."]
    lines.extend(
        f"Nothing explains the result of {c.op.describe()}: no order of the operations "
        "that respects real time and the key-value model leads to it."
        for c in culprits
    )
    if diagnosis:
        lines.append(diagnosis)
    if hidden is not None:
        lines.append(
            f"The {len(window)} operations of the window contradict each other whatever "
            "the key held before them"
            + (
                f" ({hidden} writes with unknown outcome of values no read returned are "
                "not shown: they cannot explain it either):"
                if hidden
                else ":"
            )
        )
    else:
        began = "missing" if start is None else describe_state((True, *start))
        lines.append(
            f"The contradiction involves the key's state when the history began ({began}); "
            "the culprit and its neighbours:"
        )
    lines.extend(_listing(window))
    return Explanation("\n".join(lines), window)


def _listing(window: list[Operation]) -> list[str]:
    """The window one operation a line; a long one (a violation about versions can span
    the whole history) keeps its start and the part nearest the culprit."""
    shown = ["  " + op.describe() for op in window]
    if len(shown) <= _MAX_LISTED:
        return shown
    head, tail = _MAX_LISTED // 5, _MAX_LISTED - _MAX_LISTED // 5
    skipped = len(shown) - head - tail
    return [*shown[:head], f"  ... {skipped} more operations of the window ...", *shown[-tail:]]


def _slice(deadline: float, budget: float) -> float:
    """A deadline for one sub-search, so that one slow search cannot starve the rest."""
    return min(deadline, time.monotonic() + budget / 4)


def _diagnose(
    ops: Sequence[Operation],
    r: float,
    culprits: list[Step],
    start: tuple[bytes, int] | None,
    seconds: float,
) -> str:
    """What the key could hold while the culprit ran: the states in which the search
    refused it.

    Tried first with every written value readable; if that search is too slow, with
    the relaxed models (chaos.relaxed) on merged values. Those may list states the exact
    model could not reach, never omit one, so "one of" stays true.
    """
    culprit_ops = {id(c.op) for c in culprits}
    merged = cut_before(build_steps(ops), r)
    coarse = relaxed.coarse_steps(merged)
    merged_start = initial_state(start, observed_values(ops))
    attempts: list[tuple[list[Step], Any, Any]] = [
        (cut_before(build_steps(ops, merge_unseen=False), r), initial_state(start), step),
        (relaxed.merge_unknown_writes(merged), merged_start, step),
        (coarse, relaxed.coarse_state(merged_start), relaxed.step_coarse),
    ]
    rejected: list[tuple[Any, ...]] = []
    for steps, initial, step_fn in attempts:
        result = search(
            steps,
            initial,
            time.monotonic() + seconds / len(attempts),
            watch=_indices(steps, culprit_ops),
            optional_first=False,
            step_fn=step_fn,
        )
        if result.verdict is Verdict.VIOLATION:
            rejected = [st for states in result.rejected.values() for st in states]
            break
    states = sorted({describe_state(st) for st in rejected})
    if not states:
        return ""
    shown = ", ".join(states[:6])
    more = f" and {len(states) - 6} more" if len(states) > 6 else ""
    return f"At every point where it could have taken effect, the key held one of: {shown}{more}."


def _indices(steps: Sequence[Step], wanted: set[int]) -> list[int]:
    return [i for i, s in enumerate(steps) if id(s.op) in wanted]


def _window(
    prefix: list[Step], culprits: list[Step], deadline: float, per_check: float
) -> tuple[list[Operation], int | None]:
    """The shortest self-contradictory suffix of `prefix`, trimmed, and how many unknown
    writes were left out of it; or a fallback and None when no suffix contradicts
    itself from an unknown starting state."""
    latest = min(c.call for c in culprits)
    times = sorted({s.call for s in prefix if s.call <= latest})
    best: list[Step] | None = None
    lo, hi = -1, len(times)  # cut at times[lo] fails (or lo=-1 unknown); times[hi] passes
    if _fails(cut_after(prefix, times[0]), WILDCARD, _half(deadline)):
        lo = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            check_by = min(deadline, time.monotonic() + per_check)
            failed = _fails(cut_after(prefix, times[mid]), WILDCARD, check_by)
            if failed is None:
                break
            if failed:
                lo = mid
            else:
                hi = mid
        best = cut_after(prefix, times[lo])
    if best is None:
        return _fallback(prefix, culprits), None
    # Drop reads, and unknown writes of values nobody read, while the rest still provably
    # fails; a quick check suffices (when it cannot prove the failure, the step stays).
    # Other writes stay even if not needed: a reader would wonder what they did.
    culprit_ops = {id(c.op) for c in culprits}
    droppable = [s for s in reversed(best) if s.observes or _noise(s)]
    hidden = undecided = 0
    for candidate in droppable[:_MAX_DROPS]:
        if id(candidate.op) in culprit_ops:
            continue
        if time.monotonic() > deadline or undecided >= _MAX_UNDECIDED:
            break  # too slow to trim further: the window is correct, just longer
        trial = [s for s in best if s is not candidate]
        failed = _quickly_fails(trial, min(deadline, time.monotonic() + _QUICK))
        if failed:
            best = trial
            hidden += _noise(candidate)
        undecided += failed is None
    return _ops_of(best), hidden


def _noise(s: Step) -> bool:
    """An unknown-outcome put/cas of a value no read returned."""
    return outcome_unknown(s.op) and s.action[0] in (PUT, CAS) and s.action[1] is UNSEEN


def _quickly_fails(steps: list[Step], deadline: float) -> bool | None:
    """Whether the steps provably fail from any start; None when undecided in time."""
    if prove_violation(steps, WILDCARD, _half(deadline)):
        return True
    verdict = search(steps, WILDCARD, deadline).verdict
    return None if verdict is Verdict.TIMEOUT else verdict is Verdict.VIOLATION


def _half(deadline: float) -> float:
    """Half the time left, so that one slow search leaves time for the next steps."""
    now = time.monotonic()
    return now + max(0.0, deadline - now) / 2


def _fallback(prefix: list[Step], culprits: list[Step]) -> list[Operation]:
    """The culprit, the last few writes that completed before it, and what overlaps it
    (unknown writes only if called since those writes: older ones are just noise)."""
    first = min(c.call for c in culprits)
    last = max(c.ret for c in culprits)
    before = [s for s in prefix if s.ret < first and not s.observes][-_FALLBACK_CONTEXT:]
    since = min((s.call for s in before), default=first)
    overlapping = [
        s
        for s in prefix
        if s.call <= last and s.ret >= first and (not s.optional or s.call >= since)
    ]
    return _ops_of(before + overlapping + culprits)


def _ops_of(steps: Sequence[Step]) -> list[Operation]:
    unique = {id(s.op): s.op for s in steps}
    return sorted(unique.values(), key=lambda op: (op.call, op.end))
