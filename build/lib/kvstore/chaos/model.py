"""The sequential model of one key: a register with a version, as the state machine has it.

Each key is an independent register (P-compositionality: a history is linearizable iff
each key's sub-history is), so the checker works one key at a time on a state
`(exists, value, version)`; a missing key is `(False, None, 0)`, matching the server's
"current version 0" for a missing key.

States may be partly unknown: `exists=None`, value `ANY`, `version=None`. The checker
starts from the fully unknown `WILDCARD` when it cuts a window out of the middle of a
history and wants to know whether those operations contradict each other *whatever* the
key held before them. An unknown part is fixed by the first observation that needs it,
so the relaxed model accepts everything some concrete starting state would accept (it
may accept more, which keeps "the window is inconsistent" sound).

Operations become `Step`s: an action tuple for `step()` plus the interval in which it
may take effect. Failed operations that carry no information are dropped here, and a
write whose outcome is unknown becomes optional (interval open to +infinity, and it may
never take effect).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Set
from dataclasses import dataclass, replace
from typing import Any

from kvstore.chaos.history import Operation, show_bytes


class _Marker:
    """A value that is not bytes, so it can never equal what a read returned."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


ANY = _Marker("any value")
"""The value is not known yet (relaxed start); the first read fixes it."""
UNSEEN = _Marker("a value no read returned")
"""Stands for every written value that no read ever returned.

Such values matter only in that no read may see them, so they are interchangeable;
merging them lets the search cache recognise equivalent states and lets unknown writes
of such values be treated as identical (see search.py).
"""

State = tuple[bool | None, Any, int | None]
MISSING: State = (False, None, 0)
WILDCARD: State = (None, ANY, None)

# Action codes; an action is a tuple starting with its code.
GET = 0  # (GET, found, value, version|None)
PUT = 1  # (PUT, value, returned_version|None)
CAS = 2  # (CAS, value, prev_version, returned_version|None): a cas that matched
MISMATCH = 3  # (MISMATCH, prev_version, reported_version|None, must_exist)
DELETE = 4  # (DELETE, prev_version|None): a delete that removed the key
NOT_FOUND = 5  # (NOT_FOUND,): a delete that found the key missing

OBSERVATIONS = frozenset({GET, MISMATCH, NOT_FOUND})
"""Actions that never change the state: dropping them from a history only relaxes it."""

UNKNOWN_ERRORS = frozenset({"timeout", "session_expired"})
"""Error codes that mean "outcome unknown" even if a recorder filed them as fail."""


@dataclass(frozen=True, slots=True)
class Step:
    """An operation as the search sees it."""

    op: Operation
    action: tuple[Any, ...]
    call: float
    ret: float
    """+inf when optional."""
    optional: bool
    """May take effect at any time after `call`, or never."""
    reusable: bool = False
    """Optional and may take effect any number of times (only in relaxed models)."""

    @property
    def observes(self) -> bool:
        return self.action[0] in OBSERVATIONS

    def as_pending(self) -> Step | None:
        """The step as seen from a cut through its interval: a write may or may not have
        happened yet (optional), an observation tells nothing (dropped)."""
        if self.observes:
            return None
        return replace(self, ret=math.inf, optional=True)


def outcome_unknown(op: Operation) -> bool:
    """Whether the operation may or may not have taken effect."""
    if op.outcome == "unknown":
        return True
    return op.is_write and op.outcome == "fail" and op.error in UNKNOWN_ERRORS


def observed_values(ops: Iterable[Operation]) -> set[bytes]:
    return {
        op.read_value
        for op in ops
        if op.kind == "get" and op.outcome == "ok" and op.read_value is not None
    }


def build_steps(ops: Iterable[Operation], *, merge_unseen: bool = True) -> list[Step]:
    """Steps of one key's operations, sorted by call time.

    With `merge_unseen`, written values that no read returned become UNSEEN: exact,
    since only the identity of values some read returned can matter, and it lets the
    search merge equivalent states and unknown writes. Without it values stay readable
    (for diagnostics, at the price of a slower search).
    """
    ops = list(ops)
    seen = observed_values(ops) if merge_unseen else None
    steps = []
    for op in ops:
        made = _action(op, seen)
        if made is not None:
            action, optional = made
            ret = math.inf if optional else op.end
            steps.append(Step(op, action, op.call, ret, optional))
    steps.sort(key=lambda s: s.call)
    return steps


def _action(op: Operation, seen: Set[bytes] | None) -> tuple[tuple[Any, ...], bool] | None:
    outcome = "unknown" if outcome_unknown(op) else op.outcome
    if op.kind == "get":
        if outcome != "ok":
            return None  # a failed or unanswered read tells nothing
        return (GET, bool(op.found), op.read_value, op.read_version), False
    unknown = outcome == "unknown"
    if outcome == "fail":
        if op.error == "version_mismatch":
            return (MISMATCH, op.prev_version, op.version, op.kind == "delete"), False
        if op.kind == "delete" and op.error == "not_found":
            return (NOT_FOUND,), False
        return None  # no_leader, bad request, ...: definitely never applied
    returned = None if unknown else op.version
    if op.kind == "delete":
        return (DELETE, op.prev_version), unknown
    value = op.value if seen is None or op.value in seen else UNSEEN
    if op.kind == "put":
        return (PUT, value, returned), unknown
    return (CAS, value, op.prev_version, returned), unknown


def initial_state(start: tuple[bytes, int] | None, seen: Set[bytes] | None = None) -> State:
    """The concrete state of a key that held `start` (value, version) or nothing."""
    if start is None:
        return MISSING
    value, version = start
    return (True, value if seen is None or value in seen else UNSEEN, version)


def step(state: State, action: tuple[Any, ...]) -> State | None:
    """The state after `action`, or None if the action's outcome is impossible here."""
    exists, value, version = state
    code = action[0]
    if code == GET:
        _, found, read_value, read_version = action
        if not found:
            return None if exists is True else MISSING
        if exists is False:
            return None
        if value is ANY:
            value = read_value
        elif value != read_value:
            return None
        if read_version is not None:
            if version is None:
                version = read_version
            elif version != read_version:
                return None
        return (True, value, version)
    if code == PUT:
        _, new_value, returned = action
        if exists is False:
            new_version = 1
        elif exists and version is not None:
            new_version = version + 1
        else:
            new_version = returned  # unknown before: trust the answer, if any
        if returned is not None and new_version != returned:
            return None
        return (True, new_value, new_version)
    if code == CAS:
        _, new_value, prev, returned = action
        if not _version_may_be(state, prev):
            return None
        if returned is not None and returned != prev + 1:
            return None
        return (True, new_value, prev + 1)
    if code == MISMATCH:
        return _mismatch(state, action)
    if code == DELETE:
        prev = action[1]
        if exists is False:
            return None
        if prev is not None and not _version_may_be(state, prev):
            return None
        return MISSING
    if code == NOT_FOUND:
        return None if exists is True else MISSING
    raise ValueError(f"unknown action {action!r}")


def _version_may_be(state: State, n: int) -> bool:
    """Whether the key's version (0 = missing) can be n in this (maybe partial) state."""
    exists, _, version = state
    if exists is False:
        return n == 0
    if exists is True:
        return version == n if version is not None else n >= 1
    return True


def _mismatch(state: State, action: tuple[Any, ...]) -> State | None:
    """A compare that failed: the version differed from prev (and was `reported`)."""
    _, prev, reported, must_exist = action
    exists, value, version = state
    if reported is not None and (reported == prev or (must_exist and reported == 0)):
        return None  # the answer contradicts itself
    if exists is False:
        if must_exist or prev == 0 or reported not in (None, 0):
            return None
        return state
    if exists is True:
        if reported == 0:
            return None
        if version is None:
            return state if reported is None else (True, value, reported)
        if version == prev or reported not in (None, version):
            return None
        return state
    # Nothing known yet: learn what the answer says.
    if reported is None:
        return (True, ANY, None) if must_exist else state
    return MISSING if reported == 0 else (True, ANY, reported)


def describe_state(state: tuple[Any, ...]) -> str:
    """Plain words for a state of this model or of the versionless one (no version)."""
    exists, value, *rest = state
    version = rest[0] if rest else None
    if exists is False:
        return "missing"
    if exists is None:
        return "unknown"
    shown = show_bytes(value) if isinstance(value, bytes) else repr(value)
    return shown + ("" if version is None else f" (version {version})")
