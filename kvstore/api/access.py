"""Who may call which client route once authentication is enabled (issue 11).

One middleware (`auth_middleware`) stands before every client route. With auth off it
checks one flag and steps aside, so an open cluster pays nothing more. With auth on it
wants a valid token (kvstore.api.credentials) on every route but the OPEN ones, and
then applies the route's rule from RULES: every route of make_client_app has one (a
test walks the router), and a route without one is refused to everyone but root, so a
route added later is closed until someone decides who may use it.

Rules that need the request's content are split: a key or lock route is decided here
from the path; range, transaction and watch routes are decided by their handlers
(`IN_HANDLER`), which ask `read_access` and filter what they answer. Every write
carries its user into the log (kvstore.api.serve wraps it in AsUser), where the state
machine checks it again at its own log position: the check here is a fast refusal,
the one at apply time is the one that counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from kvstore.api.common import USER_KEY, Answer, BadRequest, error_answer
from kvstore.api.coordination import parse_name
from kvstore.api.credentials import TokenError, verify_token
from kvstore.api.kv import KV_PREFIX, parse_key
from kvstore.api.locks import ELECTIONS, LOCKS
from kvstore.runtime.node import NodeRuntime
from kvstore.state.auth import EVERYTHING, READ, WRITE, AuthState, KeyAccess
from kvstore.state.auth_check import refuse
from kvstore.state.commands import Command

log = logging.getLogger(__name__)

Rule = Callable[[web.Request, AuthState, str], str | None]
"""(request, auth state, user) -> why the user may not (None: it may)."""


def anyone(request: web.Request, auth: AuthState, user: str) -> str | None:
    """Any authenticated user."""
    return None


in_handler: Rule = anyone
"""Any authenticated user gets to the handler, which decides by what it reads."""


def root(request: web.Request, auth: AuthState, user: str) -> str | None:
    if auth.is_root(user):
        return None
    return f"{request.method} {request.path} needs the role root"


def _self_or_root(request: web.Request, auth: AuthState, user: str) -> str | None:
    if request.match_info.get("name") == user:
        return None
    return root(request, auth, user)


def _holder_or_root(request: web.Request, auth: AuthState, user: str) -> str | None:
    found = auth.users.get(user)
    if found is not None and request.match_info.get("name") in found.roles:
        return None
    return root(request, auth, user)


def _need(request: web.Request) -> int:
    return READ if request.method in ("GET", "HEAD") else WRITE


def _key(request: web.Request, auth: AuthState, user: str) -> str | None:
    try:
        key = parse_key(request.raw_path, 1 << 20)
    except BadRequest:
        return None  # the handler answers the malformed key with its 400
    return key_rule(auth, user, request.method, key)


def key_rule(auth: AuthState, user: str, method: str, key: str) -> str | None:
    """The rule of `/v1/kv/{key}` on a parsed key: read for GET and HEAD, write
    otherwise (also asked directly by the fast lane, kvstore.api.fast_lane)."""
    need = READ if method in ("GET", "HEAD") else WRITE
    if auth.access(user, need).key(key):
        return None
    verb = "read" if need == READ else "write"
    return f"user {user!r} may not {verb} {key!r}"


def _lock(request: web.Request, auth: AuthState, user: str) -> str | None:
    prefix = ELECTIONS if request.path.startswith(ELECTIONS) else LOCKS
    try:
        name = parse_name(request.raw_path, prefix)
    except BadRequest:
        return None
    if auth.access(user, _need(request)).key(name):
        return None
    return f"user {user!r} may not use the lock or election {name!r}"


OPEN = frozenset({"/livez", "/readyz", "/v1/auth/status", "/v1/auth/token"})
"""Routes that need no token even with auth enabled."""
PEER_ROUTES = "/raft/"
"""A node whose client and peer ports are one serves the peer routes on the client app;
they authenticate their sender themselves (kvstore.api.peer), never with a token."""

RULES: dict[str, Rule | dict[str, Rule]] = {
    KV_PREFIX: in_handler,  # range: filtered to readable keys
    KV_PREFIX + "{key}": _key,
    "/v1/txn": in_handler,
    "/v1/watch": in_handler,
    "/v1/status": anyone,
    "/metrics": anyone,
    "/": anyone,
    "/v1/cluster": anyone,
    "/v1/members": root,
    "/v1/members/{node_id}": root,
    "/v1/snapshot": root,
    # Leases name no key; revoking one deletes its keys, which apply checks key by key.
    "/v1/leases": anyone,
    "/v1/leases/{id}": anyone,
    "/v1/leases/{id}/keepalive": anyone,
    LOCKS + "{name}": _lock,
    ELECTIONS + "{name}": _lock,
    "/v1/auth/enable": root,
    "/v1/auth/disable": root,
    "/v1/auth/users": root,
    "/v1/auth/users/{name}": {"GET": _self_or_root, "PUT": root, "DELETE": root},
    "/v1/auth/users/{name}/password": _self_or_root,
    "/v1/auth/users/{name}/roles/{role}": root,
    "/v1/auth/roles": root,
    "/v1/auth/roles/{name}": {"GET": _holder_or_root, "PUT": root, "DELETE": root},
    "/v1/auth/roles/{name}/permissions": root,
}


def rule_for(canonical: str | None, method: str) -> Rule:
    """The rule of a route; root only for a route nobody wrote a rule for."""
    rule = RULES.get(canonical or "", root)
    if isinstance(rule, dict):
        return rule.get(method, root)
    return rule


def _unauthorized(code: str, message: str) -> Answer:
    plain = error_answer(401, code, message)
    return Answer(401, plain.body, plain.content_type, (("WWW-Authenticate", "Bearer"),))


def authenticate(authorization: str | None, auth: AuthState) -> str | Answer:
    """The user of a request's `Authorization` header (a bearer token), or the 401."""
    if authorization is None:
        return _unauthorized("auth_required", "authentication is enabled: send a token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _unauthorized("bad_token", "expected Authorization: Bearer <token>")
    try:
        return verify_token(auth, token.strip(), time.time())
    except TokenError as exc:
        return _unauthorized(exc.code, str(exc))


def admit(
    auth: AuthState, authorization: str | None, why_not: Callable[[str], str | None]
) -> str | Answer:
    """The gate of a route that needs a token (auth on): the request's user, or the
    answer refusing it: 401 without a valid token, 403 when `why_not(user)`, the
    route's rule, names a reason. The middleware and the fast lane both call it."""
    user = authenticate(authorization, auth)
    if not isinstance(user, str):
        return user
    why = why_not(user)
    if why is not None:
        return error_answer(403, "permission_denied", why)
    return user


def auth_middleware(runtime: NodeRuntime) -> Callable[..., object]:
    """The gate in front of every client route (see the module docstring)."""

    @web.middleware
    async def check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        auth = runtime.sm.auth
        if not auth.enabled:
            return await handler(request)
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else None
        if canonical in OPEN or (canonical or "").startswith(PEER_ROUTES):
            return await handler(request)
        rule = rule_for(canonical, request.method)
        user = admit(auth, request.headers.get("Authorization"), lambda u: rule(request, auth, u))
        if not isinstance(user, str):
            return user.response()
        request[USER_KEY] = user
        return await handler(request)

    return check_access


def refusal_answer(auth: AuthState, user: str | None, command: Command) -> Answer | None:
    """The 403 for a command `user` may not run (None: it may, or `user` is None: auth
    is off). Lease keys are not looked at here: revoking a lease is judged at apply
    time only, against the keys the lease has then."""
    if user is None:
        return None
    refused = refuse(auth, user, command, lambda lease: ())
    return None if refused is None else error_answer(403, refused.code, refused.message)


def read_access(request: web.Request, auth: AuthState, start: str, end: str | None) -> KeyAccess:
    """What the request's user may read of [start, end), for a handler that filters
    its answer; everything when the request has no user (auth off). Raises BadRequest
    (403) when none of the range is readable."""
    user = request.get(USER_KEY)
    if user is None:
        return EVERYTHING
    readable = auth.access(user, READ)
    if not readable.overlaps(start, end):
        shown = f"[{start!r}, {'end' if end is None else repr(end)})"
        raise BadRequest(403, "permission_denied", f"user {user!r} may read nothing in {shown}")
    return readable
