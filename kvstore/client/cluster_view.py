"""`AsyncKV.cluster_status`: every known node's /v1/status at once, one row per node.

Members named by the nodes that answered are asked as well, so a client configured
with one URL still sees the whole cluster; a node known under two spellings of its
URL is one row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kvstore.client.attempts import UNAVAILABLE
from kvstore.client.errors import KVError
from kvstore.client.transport import EndpointRouter
from kvstore.client.types import EndpointStatus, NodeStatus

StatusOf = Callable[..., Awaitable[NodeStatus]]


async def ask_every_node(
    router: EndpointRouter, status: StatusOf, timeout: float
) -> list[EndpointStatus]:
    """Rows sorted by node id; `status(url, timeout=...)` asks one node."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    results: dict[str, EndpointStatus] = {}
    pending = list(router.endpoints)
    while pending:
        left = deadline - loop.time()
        if left <= 0:  # members learnt late: the time is up, show them as not asked
            late = (EndpointStatus(url, None, None, "out of time") for url in pending)
            results.update((row.endpoint, row) for row in late)
            break
        rows = await asyncio.gather(*(_status_row(status, url, left) for url in pending))
        results.update((row.endpoint, row) for row in rows)
        pending = [url for url in router.endpoints if url not in results]
    id_of = router.id_of
    merged: dict[str, EndpointStatus] = {}
    for r in results.values():
        node_id = r.node_id or id_of(r.endpoint)
        key = node_id if r.reachable and node_id else r.endpoint
        # One row per node even when it is known under two spellings of its URL.
        if key not in merged or (r.reachable and not merged[key].reachable):
            merged[key] = EndpointStatus(r.endpoint, node_id, r.status, r.error)
    return sorted(merged.values(), key=lambda r: (r.node_id or "~", r.endpoint))


async def _status_row(status: StatusOf, url: str, timeout: float) -> EndpointStatus:
    try:
        answer = await status(url, timeout=timeout)
    except KVError as exc:  # one node asked: its reason without the generic prefix
        return EndpointStatus(url, None, None, exc.message.removeprefix(UNAVAILABLE))
    return EndpointStatus(url, answer.id, answer)
