"""The verdict for one key, from several searches taking turns on the same history.

No single search is fast on every history with unknown-outcome writes:
- the exact search with unknown writes tried first finds the witness of a valid
  history fastest (an unknown write tried too early fails at the next read);
- the exact search with unknown writes tried last proves a violation fastest (the
  configurations with fewest unknown writes come first, and dominance then prunes the
  others, see chaos.search);
- the relaxed models (chaos.relaxed) merge unknown writes and usually prove a violation
  at once, about values or about versions, but can never acquit.
`decide` gives the first a head start (most histories are linearizable), then runs
all of them round-robin in short turns, as generators so that none loses its work, and
takes the first conclusive answer: any VIOLATION, or an exact LINEARIZABLE. A relaxed
search that finds a witness (inconclusive) leaves the race. Each search then gets
about an equal share of the time, so the one suited to the history decides it at most
a few times later than it would alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from kvstore.chaos import relaxed
from kvstore.chaos.model import State, Step
from kvstore.chaos.search import SearchResult, Verdict, run, searcher

TURN = 0.02
"""Seconds each search runs before the next one's turn."""
FAST_PATH = 0.1
"""Share of the time the witness search has alone before the others join."""


def decide(steps: Sequence[Step], initial: State, deadline: float) -> Verdict:
    """Linearizable, not, or TIMEOUT if no search decided before `deadline`."""
    now = time.monotonic()
    witness = searcher(steps, initial, optional_first=True)
    # Most histories are linearizable and this search alone finds the witness quickly:
    # give it a head start before sharing the time (it keeps its progress either way).
    result = run(witness, now + FAST_PATH * max(0.0, deadline - now))
    if result.finished and result.verdict is not Verdict.TIMEOUT:
        return result.verdict
    racers: list[tuple[bool, Iterator[SearchResult]]] = [
        (True, witness),
        (True, searcher(steps, initial, optional_first=False)),
    ]
    if any(s.optional for s in steps):  # otherwise the relaxations add nothing
        merged = relaxed.merge_unknown_writes(list(steps))
        racers += [
            (False, _coarse_searcher(steps, initial)),
            (False, searcher(merged, initial, optional_first=False)),
        ]
    if result.finished:  # the witness search gave up (too many configurations)
        racers.pop(0)
    while racers:
        for racer in list(racers):
            exact, search_ = racer
            result = run(search_, min(deadline, time.monotonic() + TURN))
            verdict = result.verdict
            if verdict is Verdict.VIOLATION or (exact and verdict is Verdict.LINEARIZABLE):
                return verdict
            if result.finished:  # a relaxed witness, or too many configurations
                racers.remove(racer)
            if time.monotonic() >= deadline:
                return Verdict.TIMEOUT
    return Verdict.TIMEOUT  # every search gave up


def prove_violation(steps: Sequence[Step], initial: State, deadline: float) -> bool:
    """True only if the versionless model (quickest) shows the steps cannot linearize."""
    return run(_coarse_searcher(steps, initial), deadline).verdict is Verdict.VIOLATION


def _coarse_searcher(steps: Sequence[Step], initial: State) -> Iterator[SearchResult]:
    return searcher(
        relaxed.coarse_steps(list(steps)),
        relaxed.coarse_state(initial),
        optional_first=False,
        step_fn=relaxed.step_coarse,
    )
