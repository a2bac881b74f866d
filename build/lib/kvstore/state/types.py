"""Values of the key-value state machine: keys, apply results and client sessions.

Kept apart from `kvstore.state_machine` so the snapshot codec (`kvstore.sm_snapshot`)
can share them without an import cycle; `kvstore.state_machine` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    version: int
    """Writes to the key since it was (re)created: 1 after the first put."""
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: int
    version: int


@dataclass(frozen=True, slots=True)
class DeleteResult:
    revision: int


@dataclass(frozen=True, slots=True)
class NotFoundResult:
    pass


@dataclass(frozen=True, slots=True)
class VersionMismatchResult:
    current_version: int
    """0 when the key does not exist."""


@dataclass(frozen=True, slots=True)
class SessionExpiredResult:
    """The request was not applied now, and whether it was applied before is unknown."""


ApplyResult: TypeAlias = (
    PutResult | DeleteResult | NotFoundResult | VersionMismatchResult | SessionExpiredResult
)

NOT_FOUND = NotFoundResult()
SESSION_EXPIRED = SessionExpiredResult()


class Session:
    """Mutable on purpose: it changes on every request of its client."""

    __slots__ = ("floor", "last_used", "results")

    def __init__(self, floor: int, last_used: int, results: dict[int, ApplyResult]) -> None:
        self.floor = floor
        self.last_used = last_used
        self.results = results

    def forget_below(self, floor: int) -> None:
        self.floor = floor
        if self.results:
            for seq in [s for s in self.results if s < floor]:
                del self.results[seq]

    def remember(self, seq: int, result: ApplyResult, cap: int) -> None:
        self.results[seq] = result
        if len(self.results) > cap:
            lowest = min(self.results)
            del self.results[lowest]
            self.floor = max(self.floor, lowest + 1)


_RESULT_PUT, _RESULT_DELETE, _RESULT_NOT_FOUND, _RESULT_MISMATCH = range(4)


def encode_result(result: ApplyResult) -> tuple[int, ...]:
    if type(result) is PutResult:
        return (_RESULT_PUT, result.revision, result.version)
    if type(result) is DeleteResult:
        return (_RESULT_DELETE, result.revision)
    if type(result) is NotFoundResult:
        return (_RESULT_NOT_FOUND,)
    if type(result) is VersionMismatchResult:
        return (_RESULT_MISMATCH, result.current_version)
    raise TypeError(f"cannot store result {result!r}")  # SessionExpired is never stored


def decode_result(tag: int, *fields: int) -> ApplyResult:
    if tag == _RESULT_PUT:
        return PutResult(*ints(fields, 2))
    if tag == _RESULT_DELETE:
        return DeleteResult(*ints(fields, 1))
    if tag == _RESULT_NOT_FOUND and not fields:
        return NOT_FOUND
    if tag == _RESULT_MISMATCH:
        return VersionMismatchResult(*ints(fields, 1))
    raise ValueError(f"bad stored result {(tag, *fields)!r}")


def ints(values: Any, count: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != count or any(type(v) is not int or v < 0 for v in values):
        raise ValueError(f"expected {count} non-negative integers, got {values!r}")
    return values
