"""Where a request is served: the read and write loops every data endpoint shares.

Every node serves its own clients. A follower serves linearizable reads itself after
getting a read index from the leader, and hands writes to the leader over the peer
link (kvstore.runtime.via_leader), answering from its own state once it applied them;
only reads that need the leader's own clock (`leader_only`: lease TTLs) are forwarded
to the leader's client_url. The answer codes keep one promise above all: 503 only
for a request that was never proposed (safe to retry), 504 `timeout` for a write that
was (or may have been) proposed and is not confirmed, whatever happened to the leader.
One loop for single keys, ranges and transactions, so that promise is kept in one place.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from consensus import DropReason, NotLeader, ProposalDropped
from kvstore.api.common import USER_KEY, Refused, error
from kvstore.api.forwarding import forward_to_leader
from kvstore.runtime.node import NodeRuntime
from kvstore.runtime.requests import (
    ProposalOverwritten,
    ProposalTimeout,
    ReadAborted,
    RuntimeStopped,
)
from kvstore.state.commands import AsUser, Command
from kvstore.state.machine import ApplyResult

UNSAFE_LOCAL_READS = os.environ.get("KV_UNSAFE_STALE_READS") == "1"
"""Deliberately unsafe, for tests only: followers answer default (linearizable) reads
from their own state without asking the leader, so `kv chaos` can be shown to catch
the stale reads this causes. Never set it on a real cluster."""


async def serve_read(
    request: web.Request,
    runtime: NodeRuntime,
    answer: Callable[[], web.StreamResponse | Awaitable[web.StreamResponse]],
    *,
    stale: bool,
    wait: float = 0.0,
    leader_only: bool = False,
) -> web.StreamResponse:
    """`answer()` from this node's state once `confirm_read` allows it. A follower
    forwards a `leader_only` read to the leader. `wait` is how long `answer` itself may
    wait (a long poll), added to the deadline."""
    deadline = runtime.loop.time() + runtime.tuning.request_timeout_ms / 1000 + wait
    while True:
        try:
            local = await confirm_read(runtime, deadline, stale=stale, leader_only=leader_only)
        except Refused as exc:
            return error(exc.status, exc.code, exc.message)
        if local:
            return await _answered(answer())
        forwarded = await forward_to_leader(
            request, runtime, b"", deadline, is_write=False, unserved="the read was not served"
        )
        if forwarded is not None:
            return forwarded


async def confirm_read(
    runtime: NodeRuntime, deadline: float, *, stale: bool, leader_only: bool = False
) -> bool:
    """True once this node may answer from its own state: at once when `stale`, after a
    read index from the leader otherwise (then the state holds every write acknowledged
    before the request began). False: a follower must forward this `leader_only` read.
    Raises Refused (503, 504) when the read cannot be served. Shared by serve_read and
    the fast lane (kvstore.api.kv.kv_answer)."""
    loop = runtime.loop
    if stale or (UNSAFE_LOCAL_READS and not runtime.is_leader):
        return True
    while runtime.is_leader or not leader_only:
        try:
            await runtime.barrier(deadline - loop.time())
        except NotLeader:
            if await _leader_known(runtime, deadline):
                continue
            raise Refused(503, "no_leader", "no leader is known; the read was not served") from None
        except ReadAborted:
            if loop.time() < deadline:
                continue
            raise Refused(503, "no_leader", "leadership changed during the read; retry") from None
        except TimeoutError:
            raise Refused(
                504, "timeout", "the read was not confirmed by a quorum in time"
            ) from None
        except RuntimeStopped as exc:
            raise Refused(503, "unavailable", str(exc)) from None
        return True
    return False


async def _leader_known(runtime: NodeRuntime, deadline: float) -> bool:
    """Wait (about two election timeouts at most) for a leader to be known."""
    remaining = min(deadline - runtime.loop.time(), 2 * runtime.election_timeout_s)
    return await runtime.wait_for_leader(remaining) is not None


async def _answered(
    answer: web.StreamResponse | Awaitable[web.StreamResponse],
) -> web.StreamResponse:
    return await answer if inspect.isawaitable(answer) else answer


async def serve_write(
    request: web.Request,
    runtime: NodeRuntime,
    cmd: Command,
    respond: Callable[[ApplyResult | None], web.StreamResponse | Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """`respond` to the result of `cmd` once `proposed` has it applied here (`respond`
    may wait further, as a lock acquire that waits for its turn does)."""
    try:
        result = await proposed(runtime, cmd, request.get(USER_KEY))
    except Refused as exc:
        return error(exc.status, exc.code, exc.message)
    return await _answered(respond(result))


async def proposed(
    runtime: NodeRuntime,
    cmd: Command,
    user: str | None,
    deadline: float | None = None,
    failed: Exception | None = None,
) -> ApplyResult | None:
    """Propose `cmd` (a follower through the leader, over the peer link) and return its
    result once applied here. Every Refused 503 below means never proposed, so retrying
    is safe until the deadline; 504 means the outcome is unknown. A request of an
    authenticated user proposes the command as that user's (AsUser), so the state
    machine checks the user's permissions again at the entry's log position; a follower
    forwards the encoded command as it is, user included. Shared by serve_write and the
    fast lane (kvstore.api.kv.kv_answer). `failed`: the fast lane's own first attempt
    (NodeRuntime.submit, by `deadline`) ended with this error, handled here as if this
    loop's first attempt had."""
    if user is not None:
        cmd = AsUser(user, cmd)  # type: ignore[arg-type]
    loop = runtime.loop
    if deadline is None:
        deadline = loop.time() + runtime.tuning.request_timeout_ms / 1000
    while True:
        try:
            if failed is not None:
                error, failed = failed, None
                raise error
            return await runtime.propose(cmd, deadline - loop.time())
        except NotLeader:
            # No leader known, or the one we knew no longer leads: wait for news.
            await asyncio.sleep(runtime.tuning.tick_ms / 1000)
            if loop.time() < deadline and await _leader_known(runtime, deadline):
                continue
            raise Refused(
                503, "no_leader", "no leader is known; the write was not proposed"
            ) from None
        except ProposalDropped as exc:
            await asyncio.sleep(runtime.tuning.tick_ms / 1000)  # both kinds clear soon
            if loop.time() < deadline:
                continue
            if exc.reason is DropReason.TOO_MANY_UNCOMMITTED:
                raise Refused(503, "overloaded", f"{exc}; not proposed") from None
            raise Refused(503, "no_leader", f"{exc}; not proposed") from None
        except ProposalOverwritten:
            if loop.time() < deadline:
                continue  # it can never commit, so proposing again is safe
            raise Refused(503, "no_leader", "the proposal was dropped by a leader change") from None
        except ProposalTimeout as exc:
            raise Refused(504, "timeout", f"outcome unknown: {exc}") from None
        except RuntimeStopped as exc:
            raise Refused(503, "unavailable", f"not proposed: {exc}") from None
