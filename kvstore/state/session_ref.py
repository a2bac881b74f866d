"""The exactly-once reference a command may carry, shared by every command module."""

from __future__ import annotations

from dataclasses import dataclass

MAX_CLIENT_ID_LENGTH = 128
"""Session client ids are held in memory by every replica, so their size is bounded."""


def is_int(value: object) -> bool:
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
        if not is_int(self.seq) or self.seq < 1:
            raise ValueError(f"session seq must be an integer >= 1, got {self.seq!r}")
        if not is_int(self.first_outstanding) or not 1 <= self.first_outstanding <= self.seq:
            raise ValueError(
                "session first_outstanding must be an integer in 1..seq, "
                f"got {self.first_outstanding!r} with seq {self.seq}"
            )
