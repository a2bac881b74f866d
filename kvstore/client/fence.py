"""The fence a write may carry, and the query string of a write's conditions.

A fence (lock name + token) makes the cluster apply a write only while that token
holds the lock: the check runs in log order on every replica, so a holder that was
paused past its lease and lost the lock cannot write when it wakes up.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from kvstore.client.errors import InvalidRequest
from kvstore.client.paths import prev_query


@dataclass(frozen=True, slots=True)
class Fence:
    lock: str
    token: int


def write_query(
    prev_version: int | None = None,
    prev_revision: int | None = None,
    lease: int | None = None,
    fence: Fence | None = None,
) -> str:
    """The query of a conditional write: compare-and-set, lease and fence (or "")."""
    query = prev_query(prev_version, prev_revision)
    extra: list[tuple[str, str | int]] = []
    if lease is not None:
        if isinstance(lease, bool) or not isinstance(lease, int) or lease < 1:
            raise InvalidRequest(f"lease must be an integer >= 1: {lease!r}")
        extra.append(("lease", lease))
    if fence is not None:
        token = fence.token if isinstance(fence, Fence) else None
        if not isinstance(fence, Fence) or not fence.lock or type(token) is not int or token < 1:
            raise InvalidRequest(f"fence must be a Fence(lock name, token >= 1): {fence!r}")
        extra += [("fence_lock", fence.lock), ("fence_token", token)]
    if not extra:
        return query
    return (query + "&" if query else "?") + urlencode(extra)
