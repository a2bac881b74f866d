"""A bound on the password checks one node runs for `POST /v1/auth/token`.

Checking a password costs ~50 ms of CPU and 16 MiB (scrypt, kvstore.api.credentials),
and anyone who reaches the client port may ask, without a token. Unbounded, a flood of
token requests fills the worker threads with scrypt: the node's own Raft work then
waits for a CPU, heartbeats go out late and the cluster loses its leader. So a node
checks one password at a time and lets a few more wait; past that it answers 503 at
once (the client retries another node after a back-off, as for any 503), which also
caps password guessing at about twenty tries a second per node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

PARALLEL_CHECKS = 1
"""Password checks running at once: one keeps the other core for the Raft loop."""
MAX_WAITING = 16
"""Token requests that may queue for a check (~0.8 s of work); more are refused."""
RETRY_AFTER_S = 1


class GateBusy(Exception):
    """Too many token requests wait already: refuse this one now."""


class PasswordGate:
    """Runs password checks in a worker thread, `PARALLEL_CHECKS` at a time, with at most
    `MAX_WAITING` callers queued (GateBusy beyond that)."""

    def __init__(self, parallel: int = PARALLEL_CHECKS, max_waiting: int = MAX_WAITING) -> None:
        self._slots = asyncio.Semaphore(parallel)
        self._max_waiting = max_waiting
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Token requests queued for a check now."""
        return self._waiting

    async def check(self, matches: Callable[[], bool]) -> bool:
        """`matches()` (blocking: it hashes) in a worker thread, when a slot is free."""
        if self._slots.locked() and self._waiting >= self._max_waiting:
            raise GateBusy
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await asyncio.get_running_loop().run_in_executor(None, matches)
        finally:
            self._slots.release()


PASSWORD_GATE_KEY = web.AppKey("password_gate", PasswordGate)
