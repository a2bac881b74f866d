"""/v1/leases: grant, keep alive, revoke, inspect and list leases, from any node.

Grant and revoke are log entries (kvstore.state.leases). A keep-alive is not: the
leader confirms its office with a ReadIndex round and resets the lease's deadline on
its own clock (kvstore.runtime.leases), so keeping a thousand leases alive costs
heartbeats, not fsyncs. Followers forward everything to the leader.
"""

from __future__ import annotations

from aiohttp import web

from kvstore.api.common import RUNTIME_KEY, BadRequest, error, query_values, strict
from kvstore.api.coordination import positive, require, unexpected
from kvstore.api.kv import parse_session
from kvstore.api.serve import serve_read, serve_write
from kvstore.runtime.node import NodeRuntime
from kvstore.state.commands import LeaseGrant, LeaseRevoke
from kvstore.state.types import ApplyResult, LeaseGrantResult, LeaseRevokeResult

LEASES = "/v1/leases"


def add_lease_routes(app: web.Application) -> None:
    app.router.add_post(LEASES, handle_grant)
    app.router.add_get(LEASES, strict(handle_list))
    app.router.add_get(LEASES + "/{id}", strict(handle_ttl))
    app.router.add_post(LEASES + "/{id}/keepalive", strict(handle_keepalive))
    app.router.add_delete(LEASES + "/{id}", strict(handle_revoke))


def _lease_id(request: web.Request) -> int:
    try:
        return positive(request.match_info["id"])
    except ValueError:
        raise BadRequest(400, "bad_lease", "a lease id is an integer >= 1") from None


def _not_found(lease: int) -> web.Response:
    return error(404, "lease_not_found", f"lease {lease} does not exist (it ended?)")


def _remaining(runtime: NodeRuntime, lease: int, ttl: int) -> float:
    """Seconds left on the leader's clock (the full TTL until its clock tracks it)."""
    remaining = runtime.leases.remaining(lease)
    return ttl if remaining is None else round(remaining, 3)


def _granted(result: ApplyResult | None) -> web.Response:
    if type(result) is LeaseGrantResult:
        return web.json_response({"id": result.lease, "ttl": result.ttl})
    return unexpected(result)


def _revoked(result: ApplyResult | None) -> web.Response:
    if type(result) is LeaseRevokeResult:
        return web.json_response({"revision": result.revision, "deleted": result.deleted})
    return unexpected(result)


async def handle_grant(request: web.Request) -> web.StreamResponse:
    """POST /v1/leases?ttl=SECONDS -> {"id", "ttl"}."""
    runtime = request.app[RUNTIME_KEY]
    try:
        ttl = require(query_values(request, {"ttl": positive}), "ttl")
        command = LeaseGrant(ttl, parse_session(request.headers))
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    except ValueError as exc:
        return error(400, "bad_ttl", str(exc))
    return await serve_write(request, runtime, command, _granted)


async def handle_revoke(request: web.Request) -> web.StreamResponse:
    """DELETE /v1/leases/{id} -> {"revision", "deleted"}: its keys go in one entry."""
    runtime = request.app[RUNTIME_KEY]
    try:
        command = LeaseRevoke(_lease_id(request), parse_session(request.headers))
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    return await serve_write(request, runtime, command, _revoked)


async def handle_keepalive(request: web.Request) -> web.StreamResponse:
    """POST /v1/leases/{id}/keepalive -> {"id", "ttl"}: the lease lives TTL more seconds.
    Served by the leader after a ReadIndex round (see kvstore.runtime.leases)."""
    runtime = request.app[RUNTIME_KEY]
    try:
        lease = _lease_id(request)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)

    def renew() -> web.StreamResponse:
        ttl = runtime.leases.keep_alive(lease)
        return _not_found(lease) if ttl is None else web.json_response({"id": lease, "ttl": ttl})

    return await serve_read(request, runtime, renew, stale=False, leader_only=True)


async def handle_ttl(request: web.Request) -> web.StreamResponse:
    """GET /v1/leases/{id} -> {"id", "ttl", "remaining", "keys"}."""
    runtime = request.app[RUNTIME_KEY]
    try:
        lease = _lease_id(request)
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)

    def describe() -> web.StreamResponse:
        found = runtime.sm.coordination.leases.get(lease)
        if found is None:
            return _not_found(lease)
        return web.json_response(
            {
                "id": lease,
                "ttl": found.ttl,
                "remaining": _remaining(runtime, lease, found.ttl),
                "keys": sorted(found.keys),
            }
        )

    return await serve_read(request, runtime, describe, stale=False, leader_only=True)


async def handle_list(request: web.Request) -> web.StreamResponse:
    """GET /v1/leases -> {"leases": [{"id", "ttl", "remaining"}]} in id order."""
    runtime = request.app[RUNTIME_KEY]

    def listing() -> web.StreamResponse:
        ttls = runtime.sm.coordination.leases.ttls()
        rows = [
            {"id": lease, "ttl": ttl, "remaining": _remaining(runtime, lease, ttl)}
            for lease, ttl in sorted(ttls.items())
        ]
        return web.json_response({"leases": rows})

    return await serve_read(request, runtime, listing, stale=False, leader_only=True)
