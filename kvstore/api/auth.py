"""`/v1/auth/...`: tokens, the enabled flag, users and roles (contract: brief AUTH_API.md).

Who may call what is kvstore.api.access's table; here each route only does its job.
Changes are log entries (kvstore.state.auth_commands) proposed like any write; reads
of users and roles are linearizable reads of the replicated auth state. A password is
hashed (scrypt, ~50 ms) in a worker thread by the node that receives it, so neither
the event loop nor the log ever holds it; `POST /v1/auth/token` checks it the same way,
on the local replica (a user created a moment ago may need a retry on a lagging node).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from kvstore.api.common import RUNTIME_KEY, BadRequest, error, query_values, strict, text
from kvstore.api.coordination import unexpected
from kvstore.api.credentials import (
    hash_password,
    issue_token,
    new_salt,
    new_signing_key,
    password_matches,
)
from kvstore.api.password_gate import PASSWORD_GATE_KEY, RETRY_AFTER_S, GateBusy, PasswordGate
from kvstore.api.serve import serve_read, serve_write
from kvstore.runtime.node import NodeRuntime
from kvstore.state.auth import Permission, valid_name
from kvstore.state.auth_commands import (
    AuthCommand,
    AuthDisable,
    AuthEnable,
    RoleAdd,
    RoleDelete,
    RolePermission,
    UserAdd,
    UserDelete,
    UserPassword,
    UserRole,
)
from kvstore.state.keyrange import prefix_end
from kvstore.state.types import ApplyResult, AuthResult

AUTH = "/v1/auth"
DEFAULT_TOKEN_TTL = 300
TOKEN_TTL_KEY = web.AppKey("token_ttl", int)
"""Seconds a token issued by this node lives (`[auth] token_ttl`; kvstore.server sets it)."""
MAX_BODY = 64 * 1024


async def _json_body(request: web.Request, fields: set[str]) -> dict[str, Any]:
    """A JSON object with exactly `fields`, all strings."""
    body = await request.read()
    if len(body) > MAX_BODY:
        raise BadRequest(413, "body_too_large", f"the body exceeds {MAX_BODY} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeError):
        raise BadRequest(400, "bad_body", "the body is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != fields:
        raise BadRequest(400, "bad_body", f"expected a JSON object with {sorted(fields)}")
    if not all(isinstance(doc[f], str) for f in fields):
        raise BadRequest(400, "bad_body", f"{sorted(fields)} must be strings")
    return doc


def _name(request: web.Request, part: str = "name") -> str:
    name = request.match_info[part]
    if not valid_name(name):
        raise BadRequest(400, "bad_name", f"bad name {name!r}")
    return name


async def _hashed(request: web.Request) -> tuple[bytes, bytes]:
    password = (await _json_body(request, {"password"}))["password"]
    if not password:
        raise BadRequest(400, "bad_password", "the password must not be empty")
    salt = new_salt()
    loop = asyncio.get_running_loop()
    return salt, await loop.run_in_executor(None, hash_password, password, salt)


def _done(answer: dict[str, Any]) -> Any:
    def respond(result: ApplyResult | None) -> web.Response:
        if type(result) is AuthResult and not result.code:
            return web.json_response(answer)
        return unexpected(result)

    return respond


def _route(build: Any, answer: Any = None, *, own_query: bool = False) -> Any:
    """A handler that proposes `await build(request)` and answers `answer(request)`;
    the query must be empty unless `build` reads it itself (`own_query`)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME_KEY]
        try:
            if not own_query:
                query_values(request, {})
            command: AuthCommand = await build(request)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)
        reply = answer(request) if answer is not None else {}
        return await serve_write(request, runtime, command, _done(reply))

    return handle


# ---------------------------------------------------------------------- tokens, flag


async def handle_status(request: web.Request) -> web.Response:
    return web.json_response({"enabled": request.app[RUNTIME_KEY].sm.auth.enabled})


async def handle_token(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    try:
        query_values(request, {})
        doc = await _json_body(request, {"user", "password"})
    except BadRequest as exc:
        return error(exc.status, exc.code, exc.message)
    auth = runtime.sm.auth
    if not auth.enabled:
        return error(409, "auth_not_enabled", "authentication is not enabled: no token needed")
    try:
        matched = await request.app[PASSWORD_GATE_KEY].check(
            lambda: password_matches(auth, doc["user"], doc["password"])
        )
    except GateBusy:
        busy = error(503, "busy", "too many token requests wait here: retry, or ask another node")
        busy.headers["Retry-After"] = str(RETRY_AFTER_S)
        return busy
    if not matched:
        return error(401, "bad_credentials", "wrong user name or password")
    auth = runtime.sm.auth  # the state may have moved on while the hash ran
    if not auth.enabled or doc["user"] not in auth.users:
        return error(401, "bad_credentials", "wrong user name or password")
    ttl = request.app.get(TOKEN_TTL_KEY, DEFAULT_TOKEN_TTL)
    token = issue_token(auth, doc["user"], time.time(), ttl)
    return web.json_response({"token": token, "ttl": ttl, "user": doc["user"]})


async def _enable(request: web.Request) -> AuthCommand:
    return AuthEnable(new_signing_key())


async def _disable(request: web.Request) -> AuthCommand:
    return AuthDisable()


# ---------------------------------------------------------------------- reads

_Describe = Callable[[NodeRuntime, str], "dict[str, Any] | None"]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _listing(
    field: str, table: Callable[[NodeRuntime], Iterable[str]], describe: _Describe
) -> _Handler:
    """A linearizable read of every user (or role), described by `describe`, by name."""

    async def handle(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME_KEY]

        def listing() -> web.Response:
            names = sorted(table(runtime))
            return web.json_response({field: [describe(runtime, n) for n in names]})

        return await serve_read(request, runtime, listing, stale=False)

    return handle


def _lookup(what: str, describe: _Describe) -> _Handler:
    """A linearizable read of the user (or role) the path names; 404 `<what>_not_found`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME_KEY]
        name = request.match_info["name"]

        def answer() -> web.Response:
            found = describe(runtime, name)
            if found is None:
                return error(404, f"{what}_not_found", f"no {what} {name!r}")
            return web.json_response(found)

        return await serve_read(request, runtime, answer, stale=False)

    return handle


# ---------------------------------------------------------------------- users


def _user_names(runtime: NodeRuntime) -> Iterable[str]:
    return runtime.sm.auth.users


def _user_json(runtime: NodeRuntime, name: str) -> dict[str, Any] | None:
    user = runtime.sm.auth.users.get(name)
    return None if user is None else {"name": name, "roles": sorted(user.roles)}


async def _user_add(request: web.Request) -> AuthCommand:
    name = _name(request)
    return UserAdd(name, *await _hashed(request))


async def _user_password(request: web.Request) -> AuthCommand:
    name = _name(request)
    return UserPassword(name, *await _hashed(request))


async def _user_delete(request: web.Request) -> AuthCommand:
    return UserDelete(_name(request))


async def _user_grant(request: web.Request) -> AuthCommand:
    return UserRole(_name(request), _name(request, "role"), grant=True)


async def _user_revoke(request: web.Request) -> AuthCommand:
    return UserRole(_name(request), _name(request, "role"), grant=False)


# ---------------------------------------------------------------------- roles


def _role_names(runtime: NodeRuntime) -> Iterable[str]:
    return runtime.sm.auth.roles


def _role_json(runtime: NodeRuntime, name: str) -> dict[str, Any] | None:
    role = runtime.sm.auth.roles.get(name)
    if role is None:
        return None
    return {"name": name, "permissions": [p.to_json() for p in role.listing()]}


async def _role_add(request: web.Request) -> AuthCommand:
    return RoleAdd(_name(request))


async def _role_delete(request: web.Request) -> AuthCommand:
    return RoleDelete(_name(request))


_RANGE_QUERY = {"access": text, "prefix": text, "key": text, "start": text, "end": text}


def _permission(request: web.Request, *, grant: bool) -> Permission:
    """The range of `?prefix=P`, `?key=K` or `?start=S[&end=E]` (end "" or absent: no
    upper bound), with `access` when granting."""
    q = query_values(request, _RANGE_QUERY)
    forms = [f for f in ("prefix", "key", "start") if f in q]
    if len(forms) != 1 or ("end" in q and forms != ["start"]):
        raise BadRequest(400, "bad_range", "give one of prefix=, key=, start= (with end=)")
    if grant == ("access" not in q):
        raise BadRequest(400, "bad_access", "access= (read, write, readwrite) goes with a grant")
    if "key" in q:
        start, end = q["key"], q["key"] + "\0"
    elif "prefix" in q:
        start, end = q["prefix"], prefix_end(q["prefix"]) or ""
    else:
        start, end = q["start"], q.get("end", "")
    try:
        return Permission(q.get("access", "read"), start, end)
    except ValueError as exc:
        raise BadRequest(400, "bad_range", str(exc)) from None


async def _role_grant(request: web.Request) -> AuthCommand:
    return RolePermission(_name(request), _permission(request, grant=True), grant=True)


async def _role_revoke(request: web.Request) -> AuthCommand:
    return RolePermission(_name(request), _permission(request, grant=False), grant=False)


def _name_of(request: web.Request) -> dict[str, Any]:
    return {"name": request.match_info["name"]}


def _enabled(value: bool) -> Any:
    return lambda request: {"enabled": value}


def add_auth_routes(app: web.Application) -> None:
    app[PASSWORD_GATE_KEY] = PasswordGate()
    router = app.router
    router.add_get(AUTH + "/status", strict(handle_status))
    router.add_post(AUTH + "/token", handle_token)
    router.add_post(AUTH + "/enable", _route(_enable, _enabled(True)))
    router.add_post(AUTH + "/disable", _route(_disable, _enabled(False)))
    router.add_get(AUTH + "/users", strict(_listing("users", _user_names, _user_json)))
    user = AUTH + "/users/{name}"
    router.add_get(user, strict(_lookup("user", _user_json)))
    router.add_put(user, _route(_user_add, _name_of))
    router.add_delete(user, _route(_user_delete))
    router.add_post(user + "/password", _route(_user_password))
    router.add_put(user + "/roles/{role}", _route(_user_grant))
    router.add_delete(user + "/roles/{role}", _route(_user_revoke))
    router.add_get(AUTH + "/roles", strict(_listing("roles", _role_names, _role_json)))
    role = AUTH + "/roles/{name}"
    router.add_get(role, strict(_lookup("role", _role_json)))
    router.add_put(role, _route(_role_add))
    router.add_delete(role, _route(_role_delete))
    router.add_post(role + "/permissions", _route(_role_grant, own_query=True))
    router.add_delete(role + "/permissions", _route(_role_revoke, own_query=True))
