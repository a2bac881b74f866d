"""`GET /livez` and `GET /readyz`: the answers a process supervisor or Kubernetes needs.

Liveness must not depend on the rest of the cluster: a node cut off from its peers is
still alive, and restarting it would only lose its place. It fails only when the
runtime stopped on a fatal error (the process is about to exit anyway).

Readiness says "send clients here": the node is a member, knows a leader it has heard
from recently, and has applied what it knows to be committed (within a bound). A node
cut off from the quorum turns unready within about two election timeouts: a follower
stops hearing its leader, and a leader that hears no quorum steps down (CheckQuorum).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from consensus import Role
from kvstore.api.common import RUNTIME_KEY, BadRequest, check_query, error
from kvstore.runtime.node import NodeRuntime

READY_MAX_APPLY_LAG = 1000
"""Entries a ready node may have committed but not yet applied (a node replaying its
log after a restart, or installing a snapshot, is not ready until it is within this)."""
LEADER_CONTACT_TIMEOUTS = 2
"""A follower is unready once its leader has been silent this many election timeouts."""


def readiness(runtime: NodeRuntime) -> tuple[str | None, dict[str, Any]]:
    """(the first reason this node is not ready, or None; the figures behind it)."""
    node = runtime.node
    st = node.status()
    applied = runtime.sm.applied_index
    leader = node.leader_id
    figures: dict[str, Any] = {
        "id": runtime.node_id,
        "role": node.role.value,
        "term": node.term,
        "leader": leader,
        "commit_index": st.commit_index,
        "applied_index": applied,
    }
    if runtime.stopping or runtime.fatal_error is not None:
        return "the node is shutting down", figures
    if runtime.membership.removed_reason is not None or runtime.node_id not in node.membership:
        return "this node is not a member of the cluster (yet)", figures
    if leader is None:
        return "no leader is known", figures
    if node.role is not Role.LEADER:
        heard = runtime.last_heard.get(leader)
        silent = None if heard is None else time.monotonic() - heard
        figures["leader_silent_s"] = None if silent is None else round(silent, 3)
        if silent is None or silent > LEADER_CONTACT_TIMEOUTS * runtime.election_timeout_s:
            return f"no recent word from the leader {leader}", figures
    if st.commit_index - applied > READY_MAX_APPLY_LAG:
        return (
            f"applying: {st.commit_index - applied} committed entries not yet applied",
            figures,
        )
    return None, figures


async def handle_livez(request: web.Request) -> web.Response:
    try:
        check_query(request)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    runtime = request.app[RUNTIME_KEY]
    if runtime.fatal_error is not None:
        return error(503, "not_live", f"the node stopped on a fatal error: {runtime.fatal_error}")
    return web.json_response({"live": True, "id": runtime.node_id})


async def handle_readyz(request: web.Request) -> web.Response:
    try:
        check_query(request)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    reason, figures = readiness(request.app[RUNTIME_KEY])
    if reason is not None:
        return error(503, "not_ready", reason, **figures)
    return web.json_response({"ready": True, **figures})


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/livez", handle_livez)
    app.router.add_get("/readyz", handle_readyz)
