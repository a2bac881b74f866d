"""The commands a client write turns into, and their bytes in the Raft log.

Every replica decodes the same bytes into the same command, so the encoding is part of
the replicated state: change it only by adding a new tag, never by reinterpreting an old
one. The wire form is a msgpack array, tag first, fields positional and the session
flattened in (or left off), because it is written once per write and read on every
replica: short and cheap to decode beats self-describing.

Invariants are checked when a command is built, so a bad client header fails at the
HTTP layer (as a ValueError) instead of reaching the log, where every replica would
have to deal with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import msgpack

MAX_CLIENT_ID_LENGTH = 128
"""Session client ids are held in memory by every replica, so their size is bounded."""

_PUT = 1
_DELETE = 2


class CommandDecodeError(ValueError):
    """Bytes that are not a command this version understands (corrupt, or a newer format)."""


def _is_int(value: object) -> bool:
    # bool is an int subclass; a True prev_version is a caller bug, not the number 1.
    return type(value) is int


@dataclass(frozen=True, slots=True)
class SessionRef:
    """Identifies one client request for exactly-once execution (Raft dissertation §6.3).

    `first_outstanding` is the lowest seq the client has not yet seen answered; the
    replicas may forget every stored result below it. It can never exceed `seq`,
    because this request itself is still unanswered.
    """

    client_id: str
    seq: int
    first_outstanding: int

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id:
            raise ValueError("session client_id must be a non-empty string")
        if len(self.client_id) > MAX_CLIENT_ID_LENGTH:
            raise ValueError(f"session client_id is longer than {MAX_CLIENT_ID_LENGTH} characters")
        if not _is_int(self.seq) or self.seq < 1:
            raise ValueError(f"session seq must be an integer >= 1, got {self.seq!r}")
        if not _is_int(self.first_outstanding) or not 1 <= self.first_outstanding <= self.seq:
            raise ValueError(
                "session first_outstanding must be an integer in 1..seq, "
                f"got {self.first_outstanding!r} with seq {self.seq}"
            )


def _check_common(key: object, prev_version: object, session: object) -> None:
    if not isinstance(key, str):
        raise ValueError(f"key must be a string, got {type(key).__name__}")
    if prev_version is not None and (not _is_int(prev_version) or prev_version < 0):
        raise ValueError(f"prev_version must be None or an integer >= 0, got {prev_version!r}")
    if session is not None and not isinstance(session, SessionRef):
        raise ValueError(f"session must be a SessionRef or None, got {type(session).__name__}")


@dataclass(frozen=True, slots=True)
class Put:
    """Write `value` under `key`; with `prev_version` set, only if the key is at that version
    (0: only if the key does not exist)."""

    key: str
    value: bytes
    prev_version: int | None = None
    session: SessionRef | None = None

    def __post_init__(self) -> None:
        _check_common(self.key, self.prev_version, self.session)
        if not isinstance(self.value, bytes):
            raise ValueError(f"value must be bytes, got {type(self.value).__name__}")


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove `key`; with `prev_version` set, only if the key is at that version."""

    key: str
    prev_version: int | None = None
    session: SessionRef | None = None

    def __post_init__(self) -> None:
        _check_common(self.key, self.prev_version, self.session)


Command: TypeAlias = Put | Delete


def encode_command(cmd: Command) -> bytes:
    """Raises ValueError (UnicodeEncodeError) for a key that is not valid UTF-8, e.g. a lone
    surrogate: such a key could never be decoded back on the other replicas."""
    fields: list[Any]
    if type(cmd) is Put:
        fields = [_PUT, cmd.key, cmd.value, cmd.prev_version]
    elif type(cmd) is Delete:
        fields = [_DELETE, cmd.key, cmd.prev_version]
    else:
        raise TypeError(f"not a command: {type(cmd).__name__}")
    s = cmd.session
    if s is not None:
        fields += (s.client_id, s.seq, s.first_outstanding)
    return msgpack.packb(fields, use_bin_type=True)


def decode_command(data: bytes) -> Command:
    """The inverse of encode_command; anything else raises CommandDecodeError."""
    try:
        fields = msgpack.unpackb(data, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise CommandDecodeError(f"command is not valid msgpack: {exc}") from None
    if type(fields) is not tuple or not fields:
        raise CommandDecodeError("command is not a non-empty msgpack array")
    tag, n = fields[0], len(fields)
    if not _is_int(tag):
        raise CommandDecodeError(f"command tag is {type(tag).__name__}, not an integer")
    try:
        if tag == _PUT and n in (4, 7):
            session = SessionRef(*fields[4:]) if n == 7 else None
            return Put(fields[1], fields[2], fields[3], session)
        if tag == _DELETE and n in (3, 6):
            session = SessionRef(*fields[3:]) if n == 6 else None
            return Delete(fields[1], fields[2], session)
    except ValueError as exc:
        raise CommandDecodeError(f"malformed command: {exc}") from None
    raise CommandDecodeError(f"unknown command tag {tag} with {n} fields")
