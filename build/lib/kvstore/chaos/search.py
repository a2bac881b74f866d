"""The Wing-Gong/Lowe linearizability search over one key's steps, as Porcupine does it.

Definite steps have a call and a return event in one doubly linked list in time order.
The search walks it from the front: at a call it tries to take that operation into the
linearization (the model accepts its result in the current state), removing ("lifting")
its events; reaching a return event means an operation that must already have taken
effect has not, so it backtracks to the last choice. Every configuration (steps
linearized as int bitsets, model state) is remembered, and reaching an equivalent one
again is cut short, which is what makes thousands of operations per key tractable.

Writes with unknown outcome (optional steps) need more than Porcupine has:
- They have no return event: each may take effect at any time after its call, or
  never, and the search succeeds once every definite step is linearized. Their calls
  sit in a second list; the candidates in a configuration are the definite calls before
  the first pending return, then (by default first) the optional calls before it.
  Trying an unknown write early fails fast at the next read; deferring it leads into
  deep dead ends.
- Dominance: a configuration is skipped when one with the same definite steps and state
  was visited with a subset of its optional steps (fewer used means more left to use).
  Sound: take a witness using the fewest optional steps; if the search had skipped a
  configuration on it, the path to the smaller visited one followed by the witness's
  continuation would be a witness with fewer. Porcupine's cache is the equal-sets case.
- Symmetry: optional steps with identical actions (unknown writes of values nobody read
  all look alike, see model.UNSEEN) are interchangeable once called, so only the
  earliest-called unused one of each group may be taken next. Without it, k pending
  unknown writes make the search visit all 2^k subsets at every point.
- Reusable steps, which only relaxed models use, may be taken any number of times.

The search never guesses: it answers linearizable, not linearizable, or out of time.
chaos.portfolio combines several such searches into the verdict for one key.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore.chaos.model import State, Step, step

MAX_CONFIGURATIONS = 2_000_000
"""Beyond this many remembered configurations (roughly 100-300 bytes each) the search
gives up as if out of time, rather than exhaust memory."""


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "violation"
    TIMEOUT = "timeout"


@dataclass
class SearchResult:
    verdict: Verdict
    """TIMEOUT while (or because) the search is undecided."""
    configurations: int = 0
    """Configurations remembered: a measure of the work done."""
    rejected: dict[int, set[State]] = field(default_factory=dict)
    """For each watched step index, states in which the model refused that step."""
    finished: bool = False
    """The search has ended: decided, or given up at MAX_CONFIGURATIONS."""


class _Event:
    """A call (`is_call`) or return event; `match` links a call to its return."""

    __slots__ = ("index", "is_call", "match", "next", "prev", "time")

    def __init__(self, index: int, is_call: bool, time: float) -> None:
        self.index = index
        self.is_call = is_call
        self.time = time
        self.match: _Event | None = None
        self.prev: _Event | None = None
        self.next: _Event | None = None


def _event_lists(steps: Sequence[Step]) -> tuple[_Event, _Event]:
    """Two lists behind sentinel heads, in time order: the definite steps' call and
    return events, and the optional steps' calls. At equal times calls come first, so
    operations that merely touch count as concurrent: never a false "must precede"."""
    timed: list[tuple[float, int, int, _Event]] = []
    optional: list[tuple[float, int, int, _Event]] = []
    for i, s in enumerate(steps):
        call = _Event(i, True, s.call)
        if s.optional:
            optional.append((s.call, 0, i, call))
        else:
            call.match = _Event(i, False, s.ret)
            timed.append((s.call, 0, i, call))
            timed.append((s.ret, 1, i, call.match))
    return _linked(timed), _linked(optional)


def _linked(timed: list[tuple[float, int, int, _Event]]) -> _Event:
    timed.sort(key=lambda t: t[:3])
    head = last = _Event(-1, False, -math.inf)
    for *_, event in timed:
        last.next = event
        event.prev = last
        last = event
    return head


def _lift(event: _Event) -> None:
    event.prev.next = event.next  # type: ignore[union-attr]
    if event.next is not None:
        event.next.prev = event.prev
    match = event.match
    if match is not None:
        match.prev.next = match.next  # type: ignore[union-attr]
        if match.next is not None:
            match.next.prev = match.prev


def _unlift(event: _Event) -> None:
    match = event.match
    if match is not None:
        match.prev.next = match  # type: ignore[union-attr]
        if match.next is not None:
            match.next.prev = match
    event.prev.next = event  # type: ignore[union-attr]
    if event.next is not None:
        event.next.prev = event


def _interchangeable_groups(steps: Sequence[Step]) -> tuple[list[int], list[list[int]]]:
    """Group optional steps by action; members of each group in call order."""
    group_of = [-1] * len(steps)
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, s in enumerate(steps):
        if s.optional and not s.reusable:
            groups.setdefault(s.action, []).append(i)
    members: list[list[int]] = []
    for indices in groups.values():
        if len(indices) > 1:
            for i in indices:
                group_of[i] = len(members)
            members.append(sorted(indices, key=lambda i: steps[i].call))
    return group_of, members


def search(
    steps: Sequence[Step],
    initial: State,
    deadline: float,
    watch: Sequence[int] = (),
    optional_first: bool = True,
    step_fn: Callable[[Any, tuple[Any, ...]], Any] = step,
) -> SearchResult:
    """Decide whether `steps` (one key) linearize from `initial` before `deadline`
    (a time.monotonic() value); see `searcher` for the other arguments."""
    return run(searcher(steps, initial, watch, optional_first, step_fn), deadline)


def run(search_: Iterator[SearchResult], deadline: float) -> SearchResult:
    """Advance a `searcher` until it decides, ends or `deadline` passes."""
    result = SearchResult(Verdict.TIMEOUT)
    for result in search_:
        if result.finished or time.monotonic() > deadline:
            break
    return result


def searcher(
    steps: Sequence[Step],
    initial: State,
    watch: Sequence[int] = (),
    optional_first: bool = True,
    step_fn: Callable[[Any, tuple[Any, ...]], Any] = step,
) -> Iterator[SearchResult]:
    """The search as a generator, so that several can take turns without losing work.

    Yields one SearchResult every few hundred steps of the search, and last when it has
    finished. `watch`: step indices whose rejections to record. `optional_first`: the
    order of candidates (see the module docstring). `step_fn`: the model, model.step
    unless a relaxed one.
    """
    watched: dict[int, set[State]] = {i: set() for i in watch}
    result = SearchResult(Verdict.TIMEOUT, rejected=watched)
    remaining = sum(1 for s in steps if not s.optional)
    if remaining == 0:
        result.verdict, result.finished = Verdict.LINEARIZABLE, True
        yield result
        return
    actions = [s.action for s in steps]
    definite = [not s.optional for s in steps]
    reusable = [s.reusable for s in steps]
    group_of, members = _interchangeable_groups(steps)
    used = [0] * len(members)

    head, optional_head = _event_lists(steps)
    starts = (optional_head, head) if optional_first else (head, optional_head)
    # (definite steps linearized, state) -> the sets of optional steps linearized with it
    # in every configuration visited so far.
    seen: dict[tuple[int, State], list[int]] = {}
    visited = 0
    # (chosen call event, state and linearized sets before it, phase, bound)
    stack: list[tuple[_Event, State, int, int, int, _Event]] = []
    state, done, extra = initial, 0, 0
    bound = _first_return(head)
    phase = 0
    event: _Event | None = starts[0].next
    iterations = 0
    while True:
        iterations += 1
        if not iterations & 0xFF:
            result.configurations = visited
            if visited > MAX_CONFIGURATIONS:
                result.finished = True
            yield result
            if result.finished:
                return
        if event is None or not event.is_call or event.time > bound.time:
            # This list has no more candidates for the current configuration.
            if phase == 0:
                phase = 1
                event = starts[1].next
                continue
            # Nothing more to try here: a step that must have taken effect has not.
            if not stack:
                result.verdict, result.configurations, result.finished = (
                    Verdict.VIOLATION,
                    visited,
                    True,
                )
                yield result
                return
            event, state, done, extra, phase, bound = stack.pop()
            i = event.index
            if reusable[i]:
                event = event.next  # it was never lifted
                continue
            group = group_of[i]
            if group >= 0:
                used[group] -= 1
            if definite[i]:
                remaining += 1
            _unlift(event)
            event = event.next
            continue
        i = event.index
        group = group_of[i]
        if group >= 0 and members[group][used[group]] != i:
            event = event.next  # an earlier identical optional step stands for it
            continue
        new_state = step_fn(state, actions[i])
        if new_state is None:
            if i in watched and len(watched[i]) < 64:
                watched[i].add(state)
            event = event.next
            continue
        if definite[i]:
            new_done, new_extra = done | (1 << i), extra
        elif reusable[i]:
            new_done, new_extra = done, extra
        else:
            new_done, new_extra = done, extra | (1 << i)
        others = seen.setdefault((new_done, new_state), [])
        if any(other | new_extra == new_extra for other in others):
            event = event.next  # visited with these optional steps or fewer: see above
            continue
        others.append(new_extra)
        visited += 1
        stack.append((event, state, done, extra, phase, bound))
        state, done, extra = new_state, new_done, new_extra
        if not reusable[i]:
            if group >= 0:
                used[group] += 1
            if definite[i]:
                remaining -= 1
                if remaining == 0:
                    result.verdict, result.configurations, result.finished = (
                        Verdict.LINEARIZABLE,
                        visited,
                        True,
                    )
                    yield result
                    return
            _lift(event)
        bound = _first_return(head)
        phase = 0
        event = starts[0].next


def _first_return(head: _Event) -> _Event:
    event = head.next
    while event is not None and event.is_call:
        event = event.next
    assert event is not None, "definite steps remain, so a return event remains"
    return event
