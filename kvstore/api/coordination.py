"""What the lease, lock and election endpoints share with each other and with the key
and transaction endpoints: query parsers for ids, fences and waits, lock names, the
answers of coordination refusals, and waiting for the applied state to change.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web

from kvstore.api.common import Answer, BadRequest, error_answer, text, uint
from kvstore.runtime.node import NodeRuntime
from kvstore.state.coordination_commands import MAX_LOCK_NAME_BYTES, Fence
from kvstore.state.types import (
    ApplyResult,
    AuthResult,
    FencedResult,
    LeaseNotFoundResult,
    LockNotFoundResult,
)

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
MAX_WAIT_S = 30.0
"""The longest a lock wait or an election observation holds a request open."""


def positive(raw: str) -> int:
    """A lease id, token or TTL: an integer >= 1."""
    value = uint(raw)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {raw!r}")
    return value


def seconds(raw: str) -> float:
    """A wait in seconds (decimals allowed), 0..MAX_WAIT_S."""
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_S:
        raise ValueError(f"expected seconds in 0..{MAX_WAIT_S:g}, got {raw!r}")
    return value


FENCE_QUERY: dict[str, Callable[[str], Any]] = {"fence_lock": text, "fence_token": positive}
"""`fence_lock=NAME&fence_token=T`: a write applies only while T holds NAME."""


def parse_fence(query: dict[str, Any]) -> Fence | None:
    """The fence of a request's parsed query (see FENCE_QUERY), None without one."""
    lock, token = query.get("fence_lock"), query.get("fence_token")
    if lock is None and token is None:
        return None
    if lock is None or token is None:
        raise BadRequest(400, "bad_fence", "fence_lock and fence_token go together")
    try:
        return Fence(lock, token)
    except ValueError as exc:
        raise BadRequest(400, "bad_fence", str(exc)) from None


def require(query: dict[str, Any], name: str) -> Any:
    if name not in query:
        raise BadRequest(400, f"missing_{name}", f"the query parameter {name} is required")
    return query[name]


def parse_name(raw_path: str, prefix: str) -> str:
    """A lock or election name from the raw path (percent-decoded, UTF-8, bounded)."""
    raw = raw_path.split("?", 1)[0][len(prefix) :]
    if _BAD_PERCENT.search(raw):
        raise BadRequest(400, "bad_name", "malformed percent-encoding in the name")
    try:
        data = unquote_to_bytes(raw)
        name = data.decode("utf-8")
    except (UnicodeError, ValueError):
        raise BadRequest(400, "bad_name", "the name is not valid UTF-8") from None
    if not name or len(data) > MAX_LOCK_NAME_BYTES:
        raise BadRequest(400, "bad_name", f"a name has 1..{MAX_LOCK_NAME_BYTES} bytes")
    return name


AUTH_STATUS = {
    "permission_denied": 403,
    "no_root_user": 409,
    "user_exists": 409,
    "role_exists": 409,
    "user_not_found": 404,
    "role_not_found": 404,
    "role_not_granted": 404,
    "permission_not_found": 404,
}
"""HTTP status of each refusal code of kvstore.state.auth_commands (others: 400)."""


def refusal_answer(result: ApplyResult | None) -> Answer | None:
    """The answer to a refusal any command may meet (a coordination refusal, or a
    permission denied at apply time); None for others."""
    if type(result) is AuthResult and result.code:
        return error_answer(AUTH_STATUS.get(result.code, 400), result.code, result.message)
    if type(result) is FencedResult:
        return error_answer(
            409,
            "fenced",
            "the fencing token does not hold the lock (any more): the write was refused",
            holder=result.holder,
        )
    if type(result) is LeaseNotFoundResult:
        return error_answer(
            404, "lease_not_found", f"lease {result.lease} does not exist (it ended?)"
        )
    if type(result) is LockNotFoundResult:
        return error_answer(404, "not_queued", "that token is not queued for this lock")
    return None


def unexpected_answer(result: ApplyResult | None) -> Answer:
    return refusal_answer(result) or error_answer(
        500, "internal", f"unexpected apply result {result!r}"
    )


def unexpected(result: ApplyResult | None) -> web.Response:
    return unexpected_answer(result).response()


async def wait_until(runtime: NodeRuntime, done: Callable[[], bool], wait: float) -> None:
    """Return when `done()` holds on this node's applied state, or after `wait` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while not done():
        remaining = deadline - loop.time()
        if remaining <= 0 or runtime.stopping:
            return
        await runtime.applied_changed.wait(remaining)
