"""The status page at `GET /` and the data behind it, `GET /v1/cluster`.

The page is one static HTML file with its script inline (kvstore/api/static/), served
by every node: no build step, nothing fetched from the internet. It polls two things
of the node it was loaded from: `/v1/cluster` for the member table and the leader
history, and `/metrics` for the charts (so the charts show exactly what Prometheus
would see). `/v1/cluster` asks every member for its `/v1/status` from the server side,
because a browser may reach only the one node it loaded the page from (a Kubernetes
port-forward, a load balancer).
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

import aiohttp
from aiohttp import web

from kvstore.api.common import RUNTIME_KEY, BadRequest, check_query, error
from kvstore.api.forwarding import PROXY_KEY
from kvstore.api.status import status_json
from kvstore.runtime.node import NodeRuntime

CLUSTER_PATH = "/v1/cluster"
MEMBER_TIMEOUT_S = 1.0
"""How long the page waits for one member's status: an unreachable member shows as
such instead of stalling the table."""
_STATUS_KEYS = ("role", "term", "leader", "commit_index", "applied_index", "last_index")


def _page() -> bytes:
    return resources.files("kvstore.api").joinpath("static/status.html").read_bytes()


async def _member_status(
    session: aiohttp.ClientSession, client_url: str, headers: dict[str, str]
) -> tuple[dict[str, Any] | None, str | None]:
    """(the member's /v1/status, None) or (None, why it could not be read)."""
    timeout = aiohttp.ClientTimeout(total=MEMBER_TIMEOUT_S)
    url = client_url.rstrip("/") + "/v1/status"
    try:
        async with session.get(url, timeout=timeout, headers=headers) as resp:
            if resp.status != 200:
                return None, f"HTTP {resp.status}"
            return await resp.json(), None
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return None, type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)[:200]


async def cluster_view(
    runtime: NodeRuntime, session: aiohttp.ClientSession, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Every member as its own node reports it, with how far each is behind the most
    advanced commit index seen, and this node's record of leader changes. `headers`
    go with each member's request (the caller's token, when auth is on)."""
    own = status_json(runtime)
    members = runtime.membership.members
    ids = sorted(members)
    others = [i for i in ids if i != runtime.node_id]
    answers = await asyncio.gather(
        *(_member_status(session, members[i].client_url, headers or {}) for i in others)
    )
    statuses: dict[str, tuple[dict[str, Any] | None, str | None]] = dict(
        zip(others, answers, strict=True)
    )
    statuses[runtime.node_id] = (own, None)
    voters = set(own["voters"])
    commit = max((st["commit_index"] for st, _ in statuses.values() if st), default=0)
    rows = []
    for node_id in ids:
        st, problem = statuses.get(node_id, (None, "no address known"))
        row: dict[str, Any] = {
            "id": node_id,
            "client_url": members[node_id].client_url,
            "voter": node_id in voters,
            "reachable": st is not None,
            "error": problem,
        }
        if st is not None:
            row.update({key: st.get(key) for key in _STATUS_KEYS})
            row["lag"] = max(0, commit - int(st["applied_index"]))
        rows.append(row)
    return {
        "node": runtime.node_id,
        "leader": own["leader"],
        "term": own["term"],
        "commit_index": commit,
        "members": rows,
        "leader_changes": [
            {"at": c.at, "term": c.term, "leader": c.leader, "cause": c.cause}
            for c in reversed(runtime.stats.leader_history)
        ],
    }


async def handle_cluster(request: web.Request) -> web.Response:
    try:
        check_query(request)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    token = request.headers.get("Authorization")
    headers = {} if token is None else {"Authorization": token}
    view = await cluster_view(request.app[RUNTIME_KEY], request.app[PROXY_KEY], headers)
    return web.json_response(view)


async def handle_page(request: web.Request) -> web.Response:
    try:
        check_query(request)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    return web.Response(body=_page(), content_type="text/html", charset="utf-8")


def add_status_page_routes(app: web.Application) -> None:
    app.router.add_get("/", handle_page)
    app.router.add_get(CLUSTER_PATH, handle_cluster)
