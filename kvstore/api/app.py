"""The client-facing application of a node: every route of the client port in one place."""

from __future__ import annotations

import logging
import os

from aiohttp import web
from aiohttp.typedefs import Handler

from kvstore.api.access import auth_middleware
from kvstore.api.auth import add_auth_routes
from kvstore.api.common import LEADER_HEADER, RUNTIME_KEY, error, strict
from kvstore.api.forwarding import proxy_session
from kvstore.api.health import add_health_routes
from kvstore.api.kv import KV_PREFIX, handle_kv
from kvstore.api.leases import add_lease_routes
from kvstore.api.locks import add_lock_routes
from kvstore.api.members import add_member_routes
from kvstore.api.metrics import add_metrics
from kvstore.api.range import handle_range
from kvstore.api.serve import UNSAFE_LOCAL_READS
from kvstore.api.status import handle_status
from kvstore.api.status_page import add_status_page_routes
from kvstore.api.txn import handle_txn
from kvstore.api.watch import add_watch_routes
from kvstore.runtime.node import NodeRuntime

log = logging.getLogger(__name__)

METRICS_ENABLED = os.environ.get("KV_METRICS", "on") != "off"
"""KV_METRICS=off drops the request middleware and `/metrics` (to measure their cost;
the status page's charts need them)."""


@web.middleware
async def json_routing_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths and methods answer in the JSON error shape like every other error."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
        answer = error(405, "method_not_allowed", message)
        answer.headers["Allow"] = allowed
        return answer
    except web.HTTPNotFound:
        return error(404, "no_such_endpoint", f"no endpoint {request.method} {request.path}")


# ---------------------------------------------------------------------- the application


async def _add_leader_header(request: web.Request, response: web.StreamResponse) -> None:
    runtime = request.app.get(RUNTIME_KEY)
    if runtime is not None and LEADER_HEADER not in response.headers:
        leader = runtime.leader_id
        if leader is not None:
            response.headers[LEADER_HEADER] = leader


def make_client_app(runtime: NodeRuntime, client_max_size: int) -> web.Application:
    """The client API; the caller adds the runtime's own start/stop to `cleanup_ctx`."""
    app = web.Application(client_max_size=client_max_size, middlewares=[json_routing_errors])
    app[RUNTIME_KEY] = runtime
    if UNSAFE_LOCAL_READS:
        log.warning("KV_UNSAFE_STALE_READS=1: followers serve stale reads (tests only)")
    app.cleanup_ctx.append(proxy_session)
    app.on_response_prepare.append(_add_leader_header)
    app.router.add_get(KV_PREFIX, handle_range)  # before the key route: an empty key
    app.router.add_route("*", KV_PREFIX + "{key:.*}", handle_kv)
    app.router.add_post("/v1/txn", handle_txn)
    app.router.add_get("/v1/status", strict(handle_status))
    add_member_routes(app)
    if METRICS_ENABLED:
        add_metrics(app)
    add_lease_routes(app)
    add_lock_routes(app)
    add_health_routes(app)
    add_status_page_routes(app)
    add_watch_routes(app)
    add_auth_routes(app)
    app.middlewares.append(auth_middleware(runtime))  # after metrics: refusals are counted
    return app
