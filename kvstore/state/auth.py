"""Users, roles and permissions in the replicated state (issue 11), and the checks on them.

Pure like the rest of the state machine: what is in here changes only through the log
(kvstore.state.auth_commands), so every replica decides a permission question at a log
position the same way. That is what lets the state machine re-check a write at apply
time: a permission revoked by an entry before the write's entry is enforced, whatever
the node that admitted the request believed at the time.

- A user has a name, a scrypt hash with its salt (computed by the node that received
  the password, before proposing: passwords never enter the log), a set of roles, and
  a generation: the index of the entry that created the user or last set its password.
  Tokens name the generation, so a password change or a delete and re-create refuses
  older tokens (indexes never repeat, so neither do generations).
- A role has permissions: an access ("read", "write", "readwrite") on a key range
  `[start, end)`, end "" meaning no upper bound (every key from start on). One access
  per exact range: granting the same range again replaces its access.
- The built-in role "root" may do everything (administration included); it always
  exists, holds no permission entries and cannot be deleted.
- `enabled` and the token-signing `key` (random bytes the proposing node chose, carried
  in the enable command, so apply needs no randomness).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

ROOT = "root"
READ = 1
WRITE = 2
ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE}
MAX_NAME_BYTES = 256


def valid_name(name: object) -> bool:
    """A user or role name: 1..256 bytes of UTF-8 without control characters or '/'."""
    if not isinstance(name, str) or not name or "/" in name:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_NAME_BYTES
    except UnicodeEncodeError:
        return False


@dataclass(frozen=True, slots=True)
class Permission:
    access: str
    start: str
    end: str
    """Exclusive; "" for no upper bound."""

    def __post_init__(self) -> None:
        if self.access not in ACCESS:
            raise ValueError(f"access must be read, write or readwrite, got {self.access!r}")
        if not isinstance(self.start, str) or not isinstance(self.end, str):
            raise ValueError("a permission's start and end are strings")
        if self.end and self.end <= self.start:
            raise ValueError(f"empty permission range [{self.start!r}, {self.end!r})")

    def to_json(self) -> dict[str, str]:
        return {"access": self.access, "start": self.start, "end": self.end}


@dataclass(slots=True)
class User:
    name: str
    salt: bytes
    hash: bytes
    generation: int
    roles: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Role:
    name: str
    permissions: dict[tuple[str, str], str] = field(default_factory=dict)
    """(start, end) -> access name."""

    def listing(self) -> list[Permission]:
        return [Permission(a, s, e) for (s, e), a in sorted(self.permissions.items())]


class KeyAccess:
    """The key ranges one user may access in one way, merged and sorted, for quick
    questions: may it touch this key, all of this range, any of this range."""

    __slots__ = ("_ends", "_everything", "_starts")

    def __init__(self, ranges: list[tuple[str, str]], *, everything: bool = False) -> None:
        self._everything = everything
        merged: list[list[str]] = []
        for start, end in sorted(ranges):
            if merged and (merged[-1][1] == "" or start <= merged[-1][1]):
                last = merged[-1]
                if last[1] != "" and (end == "" or end > last[1]):
                    last[1] = end
                continue
            merged.append([start, end])
        self._starts = [m[0] for m in merged]
        self._ends = [m[1] for m in merged]

    def _find(self, key: str) -> int:
        """Index of the merged range that starts at or before `key` (-1: none)."""
        return bisect.bisect_right(self._starts, key) - 1

    def key(self, key: str) -> bool:
        if self._everything:
            return True
        i = self._find(key)
        return i >= 0 and (self._ends[i] == "" or key < self._ends[i])

    def covers(self, start: str, end: str | None) -> bool:
        """All of [start, end) (end None: unbounded)."""
        if self._everything:
            return True
        i = self._find(start)
        if i < 0:
            return False
        own_end = self._ends[i]
        if own_end == "":
            return True
        return end is not None and end <= own_end and start < own_end

    def overlaps(self, start: str, end: str | None) -> bool:
        """Any key of [start, end)."""
        if self._everything:
            return True
        i = self._find(start)
        if i >= 0 and (self._ends[i] == "" or start < self._ends[i]):
            return True
        following = i + 1
        return following < len(self._starts) and (end is None or self._starts[following] < end)


NOTHING = KeyAccess([])
EVERYTHING = KeyAccess([], everything=True)


class AuthState:
    """Users, roles, the enabled flag and the signing key; see the module docstring."""

    def __init__(self) -> None:
        self.enabled = False
        self.key = b""
        self.users: dict[str, User] = {}
        self.roles: dict[str, Role] = {ROOT: Role(ROOT)}

    def is_root(self, user: str) -> bool:
        found = self.users.get(user)
        return found is not None and ROOT in found.roles

    def access(self, user: str, need: int) -> KeyAccess:
        """Where `user` may read (need READ) or write (WRITE); root: everywhere; an
        unknown user (deleted since its token was issued): nowhere."""
        found = self.users.get(user)
        if found is None:
            return NOTHING
        if ROOT in found.roles:
            return EVERYTHING
        ranges = [
            span
            for role in sorted(found.roles)
            if role in self.roles
            for span, access in self.roles[role].permissions.items()
            if ACCESS[access] & need
        ]
        return KeyAccess(ranges)

    def to_wire(self) -> list[Any]:
        """Canonical (sorted) records for the snapshot: equal states, equal bytes."""
        users = [
            (u.name, u.salt, u.hash, u.generation, sorted(u.roles))
            for _, u in sorted(self.users.items())
        ]
        roles = [
            (r.name, [(p.access, p.start, p.end) for p in r.listing()])
            for name, r in sorted(self.roles.items())
            if name != ROOT
        ]
        return [self.enabled, self.key, users, roles]

    @classmethod
    def from_wire(cls, record: Any) -> AuthState:
        """Raises ValueError/TypeError on a malformed record."""
        enabled, key, users, roles = record
        if type(enabled) is not bool or type(key) is not bytes:
            raise ValueError("bad auth flags")
        state = cls()
        state.enabled, state.key = enabled, key
        for name, permissions in roles:
            if not valid_name(name) or name in state.roles:
                raise ValueError(f"bad role record {name!r}")
            role = state.roles[name] = Role(name)
            for access, start, end in permissions:
                role.permissions[(start, end)] = Permission(access, start, end).access
        for name, salt, hashed, generation, user_roles in users:
            if not valid_name(name) or name in state.users:
                raise ValueError(f"bad user record {name!r}")
            if type(salt) is not bytes or type(hashed) is not bytes or type(generation) is not int:
                raise ValueError(f"bad user record {name!r}")
            if not all(role in state.roles for role in user_roles):
                raise ValueError(f"user {name!r} holds an unknown role")
            state.users[name] = User(name, salt, hashed, generation, set(user_roles))
        if enabled and not state.is_root(ROOT):
            raise ValueError("auth enabled without a root user")
        return state
