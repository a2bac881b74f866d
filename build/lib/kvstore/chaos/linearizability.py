"""Checking a recorded history against the key-value model.

`check_history` splits the history by key (each key is an independent register, and a
history is linearizable iff each key's part is: P-compositionality) and runs the
Wing-Gong/Lowe search of `chaos.search` on each. The answer is one of three: every key
linearizable (ok=True); some key is not, with the operations that show it (ok=False);
or some key could not be decided within the time limit (ok=None). A timeout is never
reported as either verdict.

What the model assumes (see chaos.model and chaos.history for the details):
- every key starts missing unless `initial_state` says otherwise;
- an ok get saw the whole state of the key; an ok write took effect exactly once
  between its call and its return and, if it reported a version, produced it;
- a cas failed with version_mismatch, a delete failed with not_found/version_mismatch:
  these are observations that must fit the state at some point within their interval;
- other failures never took effect; unknown outcomes took effect at most once, at any
  time after their call.

Two end-of-run checks complete it: `check_convergence` (all replicas hold the same data)
and `check_acknowledged_writes` (the data the cluster ended with is explained by the
history, which catches acknowledged writes that were lost after the last read).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kvstore.chaos import model
from kvstore.chaos.explain import explain
from kvstore.chaos.history import Operation, show_bytes
from kvstore.chaos.portfolio import decide
from kvstore.chaos.search import Verdict

DEFAULT_TIME_LIMIT = 10.0
"""Seconds of search per key before giving up with an "unknown" verdict."""


@dataclass(frozen=True)
class CheckResult:
    ok: bool | None
    """True: linearizable. False: a violation was proven. None: undecided (time limit)."""
    key: str | None
    """The first violating key (or, when undecided, the first undecided key)."""
    explanation: str
    window: list[Operation] = field(default_factory=list)
    """A short slice of the key's history that shows the violation on its own (or, when
    it is about the key's starting state, the culprit with its neighbours)."""
    undecided: list[str] = field(default_factory=list)
    """Keys whose search ran out of time."""
    violations: list[str] = field(default_factory=list)
    """Every key found not linearizable (only the first is explained)."""


def split_by_key(history: Iterable[Operation]) -> dict[str, list[Operation]]:
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    return dict(by_key)


def check_key(
    ops: list[Operation],
    start: tuple[bytes, int] | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> Verdict:
    """The bare verdict for one key's operations, the key holding `start` at first."""
    steps = model.build_steps(ops)
    initial = model.initial_state(start, model.observed_values(ops))
    return decide(steps, initial, time.monotonic() + time_limit)


def check_history(
    history: Iterable[Operation],
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    initial_state: Mapping[str, tuple[bytes, int]] | None = None,
) -> CheckResult:
    """Decide whether the history is linearizable; see the module docstring.

    `time_limit` bounds the search of each key (and, separately, the search for a short
    explanation of a violation). `initial_state` gives (value, version) of keys that
    existed before the history began.
    """
    start_of = initial_state or {}
    by_key = split_by_key(history)
    violations: list[str] = []
    undecided: list[str] = []
    for key in sorted(by_key):
        verdict = check_key(by_key[key], start_of.get(key), time_limit)
        if verdict is Verdict.VIOLATION:
            violations.append(key)
        elif verdict is Verdict.TIMEOUT:
            undecided.append(key)
    if violations:
        key = violations[0]
        found = explain(key, by_key[key], start_of.get(key), time_limit)
        text = found.text
        if len(violations) > 1:
            others = ", ".join(map(repr, violations[1:]))
            text += f"\nNot linearizable either (not explained here): {others}"
        if undecided:
            text += "\nUndecided within the time limit: " + ", ".join(map(repr, undecided))
        return CheckResult(False, key, text, found.window, undecided, violations)
    if undecided:
        text = (
            f"no violation found, but {len(undecided)} of {len(by_key)} keys could not be "
            f"decided within {time_limit:g} s each: " + ", ".join(map(repr, undecided))
        )
        return CheckResult(None, undecided[0], text, [], undecided, [])
    count = sum(len(ops) for ops in by_key.values())
    return CheckResult(True, None, f"{count} operations on {len(by_key)} keys: linearizable")


def check_convergence(node_states: Mapping[str, Mapping[str, tuple[bytes, int]]]) -> list[str]:
    """Replicas that disagree once the cluster is quiet, one line per differing key.

    `node_states`: node id -> {key: (value, version)}, e.g. read with stale reads from
    every node after healing all faults and letting them catch up. Empty list: converged.
    """
    problems = []
    keys = sorted({key for data in node_states.values() for key in data})
    for key in keys:
        holders: dict[tuple[bytes, int] | None, list[str]] = defaultdict(list)
        for node in sorted(node_states):
            holders[node_states[node].get(key)].append(node)
        if len(holders) > 1:
            views = "; ".join(
                f"{', '.join(nodes)} "
                + ("missing" if kv is None else f"{show_bytes(kv[0])} (version {kv[1]})")
                for kv, nodes in sorted(holders.items(), key=lambda item: item[1])
            )
            problems.append(f"key {key!r} differs between nodes: {views}")
    return problems


def check_acknowledged_writes(
    history: Iterable[Operation],
    final_state: Mapping[str, tuple[bytes, int]],
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    initial_state: Mapping[str, tuple[bytes, int]] | None = None,
) -> list[str]:
    """Whether the state the cluster ended with is explained by the history.

    The final state is taken as one more linearizable read of every key (those in the
    history and those in `final_state`), made after every operation of the history had
    returned, and the history plus these reads must linearize. This is sound as long as
    `final_state` was read after the last operation returned: unknown writes may still
    land before or after it (the model lets them take effect at any time, or never).
    It catches what reads during the run could miss: an acknowledged write that was
    lost at the end (the final value is older, or its version count is short), a value
    nobody wrote, a deleted key that came back. Empty list: every key is explained.
    """
    ops = list(history)
    end = max((max(op.call, op.ret or op.call) for op in ops), default=0.0) + 1.0
    by_key = split_by_key(ops)
    start_of = initial_state or {}
    problems = []
    for key in sorted(set(by_key) | set(final_state)):
        final = final_state.get(key)
        read = Operation(
            client=-1,
            kind="get",
            key=key,
            call=end,
            ret=end,
            outcome="ok",
            found=final is not None,
            read_value=None if final is None else final[0],
            read_version=None if final is None else final[1],
        )
        key_ops = [*by_key.get(key, []), read]
        verdict = check_key(key_ops, start_of.get(key), time_limit)
        if verdict is Verdict.TIMEOUT:
            problems.append(f"key {key!r}: undecided within {time_limit:g} s")
        elif verdict is Verdict.VIOLATION:
            shown = "missing" if final is None else f"{show_bytes(final[0])} (version {final[1]})"
            found = explain(key, key_ops, start_of.get(key), time_limit)
            problems.append(
                f"key {key!r}: the final state ({shown}) is not explained by the history "
                f"(client -1 is the final read):\n{found.text}"
            )
    return problems
