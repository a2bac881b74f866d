"""The leader's lease clocks: when each lease ends, and proposing its revoke then.

Time stays out of the state machine (kvstore.state.leases): only the leader keeps a
deadline per lease, on its monotonic clock, and when one passes without a keep-alive
it proposes a `LeaseRevoke`, which every replica applies at the same log index.

Keep-alives cost no log entry. The API confirms leadership with a ReadIndex round
first (`NodeRuntime.barrier`), which also applies everything committed, so a revoke
an earlier leader managed to commit is seen before a keep-alive is granted, and a
deposed leader cannot grant one.

A new leader knows nothing of the old one's clocks, so it gives every lease a fresh
full TTL when it takes office. Hence the bound documented in the README: a lease that
is no longer kept alive ends at least TTL after its last acknowledged keep-alive, and
at most TTL (plus one check interval) after the later of that keep-alive and the
moment the current leader took office, i.e. within TTL + election time of a leader
failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from kvstore.state.commands import Command, LeaseRevoke
from kvstore.state.coordination import Coordination

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.05
"""How often the leader looks for expired leases: how late past its TTL one may end."""


class LeaseKeeper:
    """Deadlines of every lease while this node leads; nothing while it follows."""

    def __init__(
        self,
        coordination: Callable[[], Coordination],
        leader_term: Callable[[], int | None],
        propose: Callable[[Command, float], Awaitable[object]],
        propose_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._coordination = coordination
        self._leader_term = leader_term
        self._propose = propose
        self._propose_timeout = propose_timeout
        self._clock = clock
        self._term: int | None = None
        self._deadlines: dict[int, float] = {}
        self._revoking: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def check(self) -> None:
        """Follow leadership, start clocks for new leases, and revoke expired ones (the
        runtime calls it every CHECK_INTERVAL_S: kvstore.runtime.clock)."""
        term = self._leader_term()
        if term is None:
            self._term = None
            self._deadlines.clear()
            return
        now = self._clock()
        ttls = self._coordination().leases.ttls()
        if term != self._term:  # just took office: every lease gets a fresh full TTL
            self._term = term
            self._deadlines = {lease: now + ttl for lease, ttl in ttls.items()}
            if ttls:
                log.info("leader in term %d: %d leases get a fresh TTL", term, len(ttls))
        deadlines = self._deadlines
        for lease in [lease for lease in deadlines if lease not in ttls]:
            del deadlines[lease]
        for lease, ttl in ttls.items():
            deadline = deadlines.setdefault(lease, now + ttl)
            if deadline <= now and lease not in self._revoking:
                self._revoking.add(lease)
                task = asyncio.create_task(self._revoke(lease), name=f"lease-revoke-{lease}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _revoke(self, lease: int) -> None:
        try:
            await self._propose(LeaseRevoke(lease), self._propose_timeout)
            log.info("lease %d expired and was revoked", lease)
        except Exception as exc:  # not leader, timeout: the next check tries again
            log.info("revoking expired lease %d failed (%s); will retry", lease, exc)
        finally:
            self._revoking.discard(lease)

    def keep_alive(self, lease: int) -> int | None:
        """Renew `lease` for its full TTL; None when it no longer exists or is being
        revoked. Call it as the leader, after a barrier (see the module docstring)."""
        found = self._coordination().leases.get(lease)
        if found is None or lease in self._revoking or self._leader_term() is None:
            return None
        self._deadlines[lease] = self._clock() + found.ttl
        return found.ttl

    def remaining(self, lease: int) -> float | None:
        """Seconds left on this leader's clock (None when unknown here: not leader, or
        the lease is not tracked yet)."""
        deadline = self._deadlines.get(lease)
        if deadline is None or self._leader_term() is None:
            return None
        return max(0.0, deadline - self._clock())
