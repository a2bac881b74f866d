"""Relaxed models: fast at proving violations, never at acquitting.

The exact search must rule out every combination of writes with unknown outcome before
it may call a history non-linearizable, and with dozens of them pending that can take
longer than any time limit. Each relaxation here accepts every behaviour of the exact
model (it only drops conditions or adds freedom), so "not linearizable" under it
implies "not linearizable" and the checker may report it; "linearizable" under it
proves nothing and is never reported.

1. Versionless (`coarse_*`): the state is just (exists, value). Most real violations
   (stale reads, lost writes, values that reappear) are about values, not versions.
   Unknown writes of values nobody read then come in four kinds (put, create-only,
   overwrite-only, delete), and each kind may moreover take effect any number of times
   once its first member is called: they drop out of the configurations altogether.
2. Merged unknown writes (`merge_unknown_writes`): the exact model, versions and all,
   but every unknown put or cas of a value nobody read acts as a plain put, and every
   unknown delete as an unconditional one. They become one group of identical steps
   each, which the search's symmetry reduction counts instead of combining. This keeps
   violations about versions (a version too high or too low) provable.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kvstore.chaos.model import ANY, CAS, DELETE, GET, MISMATCH, NOT_FOUND, PUT, UNSEEN, State, Step

Coarse = tuple[bool | None, Any]
"""(exists, value); exists None and value ANY when unknown."""

_READ, _WRITE, _DELETE, _EXISTS, _NEVER = range(5)


def coarse_state(state: State) -> Coarse:
    return (state[0], state[1])


def coarse_steps(steps: list[Step]) -> list[Step]:
    """The steps with their actions rewritten for `step_coarse`, and unknown writes of
    values nobody read made reusable: of each kind only the earliest-called is kept, and
    it may take effect any number of times."""
    out: list[Step] = []
    noise: set[tuple[Any, ...]] = set()
    for s in sorted(steps, key=lambda s: s.call):
        action = _coarse_action(s.action)
        if s.optional and (action[0] == _DELETE or (action[0] == _WRITE and action[1] is UNSEEN)):
            if action in noise:
                continue
            noise.add(action)
            out.append(replace(s, action=action, reusable=True))
        else:
            out.append(replace(s, action=action))
    return out


def _coarse_action(action: tuple[Any, ...]) -> tuple[Any, ...]:
    code = action[0]
    if code == GET:
        return (_READ, action[1], action[2])
    if code == PUT:
        return (_WRITE, action[1], None)
    if code == CAS:
        return (_WRITE, action[1], action[2] != 0)  # prev 0: create only
    if code == DELETE:
        return (_NEVER,) if action[1] == 0 else (_DELETE,)
    if code == NOT_FOUND:
        return (_EXISTS, False)
    if code == MISMATCH:
        _, prev, reported, must_exist = action
        if must_exist:
            return (_NEVER,) if reported == 0 else (_EXISTS, True)
        if reported is not None:
            return (_NEVER,) if reported == prev else (_EXISTS, reported != 0)
        return (_EXISTS, True) if prev == 0 else (_EXISTS, None)
    raise ValueError(f"unknown action {action!r}")


def step_coarse(state: Coarse, action: tuple[Any, ...]) -> Coarse | None:
    """Like model.step on (exists, value); version conditions are dropped."""
    exists, value = state
    code = action[0]
    if code == _READ:
        _, found, read_value = action
        if not found:
            return None if exists is True else (False, None)
        if exists is False or (value is not ANY and value != read_value):
            return None
        return (True, read_value)
    if code == _WRITE:
        _, new_value, must_exist = action
        if must_exist is not None and exists is (not must_exist):
            return None
        return (True, new_value)
    if code == _DELETE:
        return None if exists is False else (False, None)
    if code == _EXISTS:
        wanted = action[1]
        if wanted is None:
            return state
        if exists is (not wanted):
            return None
        if wanted:
            return (True, value)
        return (False, None)
    return None  # _NEVER: the answer contradicts itself


def merge_unknown_writes(steps: list[Step]) -> list[Step]:
    """The steps for relaxation 2 (see the module docstring), for model.step."""
    out = []
    for s in steps:
        code = s.action[0]
        if s.optional and code in (PUT, CAS) and s.action[1] is UNSEEN:
            s = replace(s, action=(PUT, UNSEEN, None))
        elif s.optional and code == DELETE:
            s = replace(s, action=(DELETE, None))
        out.append(s)
    return out
