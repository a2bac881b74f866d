"""Commands of leases, locks and elections, and the fence a write may carry.

Their wire form is in kvstore.state.commands with every other command; their effect
is in kvstore.state.coordination. Invariants are checked when a command is built, so a
bad request fails at the HTTP layer instead of reaching the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from kvstore.state.session_ref import SessionRef, is_int

MAX_LEASE_TTL = 7 * 24 * 3600
MAX_LOCK_NAME_BYTES = 1024
MAX_ELECTION_VALUE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Fence:
    """Apply a write only while `token` holds the lock (or leads the election) `lock`.

    The state machine checks it in log order (kvstore.state.locks), so a holder that
    paused past its lease and woke up cannot write: its token no longer holds."""

    lock: str
    token: int

    def __post_init__(self) -> None:
        _check_name(self.lock)
        _check_id("fence token", self.token)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError("a lock or election name must be a non-empty string")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_LOCK_NAME_BYTES:
        raise ValueError(f"a lock or election name is limited to {MAX_LOCK_NAME_BYTES} bytes")


def _check_id(what: str, value: object) -> None:
    if not is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")


def check_extras(lease: object, fence: object) -> None:
    if not is_int(lease) or lease < 0:  # type: ignore[operator]
        raise ValueError(f"lease must be an integer >= 0, got {lease!r}")
    if fence is not None and not isinstance(fence, Fence):
        raise ValueError(f"fence must be a Fence or None, got {type(fence).__name__}")


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """Create a lease of `ttl` seconds; its id is the index of the entry that grants it."""

    ttl: int
    session: SessionRef | None = None

    def __post_init__(self) -> None:
        if not is_int(self.ttl) or not 1 <= self.ttl <= MAX_LEASE_TTL:
            raise ValueError(f"ttl must be an integer in 1..{MAX_LEASE_TTL}, got {self.ttl!r}")


@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    """End a lease: delete its keys and give up its locks, in this one entry. The leader
    proposes it itself when a lease was not kept alive (expiry), so apply needs no clock."""

    lease: int
    session: SessionRef | None = None

    def __post_init__(self) -> None:
        _check_id("lease", self.lease)


@dataclass(frozen=True, slots=True)
class LockAcquire:
    """Queue `lease` for the lock (or election) `name`, first come first served; the
    token is the index of the entry that queued it. `value` is what an election
    candidate publishes (empty for a plain lock)."""

    name: str
    lease: int
    value: bytes = b""
    session: SessionRef | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_id("lease", self.lease)
        _check_value(self.value)


@dataclass(frozen=True, slots=True)
class LockRelease:
    """Leave the queue of `name` (release when holding, withdraw when waiting, resign)."""

    name: str
    token: int
    session: SessionRef | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_id("token", self.token)


@dataclass(frozen=True, slots=True)
class Proclaim:
    """The election leader `token` of `name` publishes a new value (fenced like a write)."""

    name: str
    token: int
    value: bytes
    session: SessionRef | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_id("token", self.token)
        _check_value(self.value)


def _check_value(value: object) -> None:
    if not isinstance(value, bytes) or len(value) > MAX_ELECTION_VALUE_BYTES:
        raise ValueError(f"an election value must be bytes of at most {MAX_ELECTION_VALUE_BYTES}")


CoordinationCommand: TypeAlias = LeaseGrant | LeaseRevoke | LockAcquire | LockRelease | Proclaim
