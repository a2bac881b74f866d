"""Exactly-once bookkeeping for writes, and the retry back-off policy.

Every write carries (client id, seq). Retrying a write under the *same* seq is
what makes retries safe: the cluster answers a seq it already applied with the
stored result instead of applying it twice. `first_outstanding` tells the
cluster which stored results it may forget, so it must never pass a seq whose
answer the caller has not yet received, even with many writes in flight.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

CLIENT_ID_HEADER = "X-KV-Client-Id"
SEQ_HEADER = "X-KV-Seq"
FIRST_OUTSTANDING_HEADER = "X-KV-First-Outstanding"
LEADER_HEADER = "X-KV-Leader"


class WriteSession:
    """Hands out sequence numbers and tracks which ones are still waiting for an answer.

    Not locked: every user runs on one event loop (the blocking `KV` funnels its
    calls into its own loop thread), so no two calls interleave between awaits.
    """

    def __init__(self, client_id: str | None = None) -> None:
        self.client_id = client_id or uuid.uuid4().hex
        self._next_seq = 1
        self._outstanding: set[int] = set()

    def begin(self) -> int:
        """Reserve the next seq for a new write; it stays outstanding until `finish`."""
        seq = self._next_seq
        self._next_seq += 1
        self._outstanding.add(seq)
        return seq

    def finish(self, seq: int) -> None:
        """The write got its final answer (or was given up): it will never be retried."""
        self._outstanding.discard(seq)

    @property
    def first_outstanding(self) -> int:
        """The lowest seq not yet answered; every seq below it may be forgotten by the cluster."""
        return min(self._outstanding, default=self._next_seq)

    def headers(self, seq: int) -> dict[str, str]:
        """The exactly-once headers for one attempt of write `seq` (recomputed per attempt)."""
        return {
            CLIENT_ID_HEADER: self.client_id,
            SEQ_HEADER: str(seq),
            FIRST_OUTSTANDING_HEADER: str(self.first_outstanding),
        }


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with full jitter (AWS architecture blog's "Full Jitter").

    Full jitter spreads the retries of many clients after a leader change, so they
    do not all hit the new leader in the same millisecond.
    """

    max_attempts: int = 10
    base_delay: float = 0.05
    max_delay: float = 1.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        cap = min(self.max_delay, self.base_delay * (2**retry))
        return rng.uniform(0.0, cap) if cap > 0 else 0.0
