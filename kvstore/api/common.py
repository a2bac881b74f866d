"""What every HTTP surface of a node shares: the app keys, the headers, the error shape."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kvstore.runtime.node import NodeRuntime

LEADER_HEADER = "X-KV-Leader"
SESSION_HEADERS = ("X-KV-Client-Id", "X-KV-Seq", "X-KV-First-Outstanding")
JSON_TYPE = "application/json"

RUNTIME_KEY = web.AppKey("runtime", NodeRuntime)
USER_KEY: Any = web.RequestKey("kv_user", str) if hasattr(web, "RequestKey") else "kv_user"
"""The request's authenticated user (kvstore.api.access); absent while auth is off.
(aiohttp before 3.13 has no RequestKey: a plain name then.)"""


class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error(status: int, code: str, message: str, **extra: object) -> web.Response:
    """Every error answer: `{"error": CODE, "message": TEXT}` plus any extra fields."""
    return web.json_response({"error": code, "message": message, **extra}, status=status)


def json_text(text: str, status: int = 200) -> web.Response:
    """A JSON answer already encoded (the hot path formats small answers by hand)."""
    return web.Response(text=text, status=status, content_type=JSON_TYPE)


def check_query(request: web.Request, allowed: frozenset[str] = frozenset()) -> None:
    """The contract's rule for every endpoint: an unknown or repeated query parameter is
    refused with 400 naming it, so a typo never changes what a request means."""
    seen: set[str] = set()
    # items(), not the keys: iterating a multidict (7.x) yields each name only once.
    for name, _ in request.query.items():
        if name not in allowed:
            raise BadRequest(400, "bad_query", f"unknown query parameter {name!r}")
        if name in seen:
            raise BadRequest(400, "bad_query", f"query parameter {name!r} given twice")
        seen.add(name)


def query_values(request: web.Request, spec: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    """The query parameters of `spec` parsed by its functions, after `check_query`. A
    parser raises ValueError for a malformed value, answered 400 `bad_<name>` naming it.
    Parameters that are absent are absent from the answer."""
    check_query(request, frozenset(spec))
    values: dict[str, Any] = {}
    for name, raw in request.query.items():
        try:
            values[name] = spec[name](raw)
        except ValueError as exc:
            raise BadRequest(400, f"bad_{name}", f"query parameter {name!r}: {exc}") from None
    return values


def uint(raw: str) -> int:
    """A decimal integer >= 0 (no sign, no spaces, at most 18 digits)."""
    if not 0 < len(raw) <= 18 or not raw.isascii() or not raw.isdigit():
        raise ValueError(f"expected an integer >= 0, got {raw!r}")
    return int(raw)


def flag(raw: str) -> bool:
    """`?name`, `?name=true`/`1` for yes, `?name=false`/`0` for no."""
    if raw in ("", "true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


def text(raw: str) -> str:
    return raw


CONSISTENCY = one_of("linearizable", "stale")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def strict(handler: Handler, spec: dict[str, Callable[[str], Any]] | None = None) -> Handler:
    """`handler` behind the contract's query rule: parameters outside `spec`, repeated
    ones and malformed values answer 400 before the handler runs (for handlers that
    read their few parameters themselves)."""
    checks = spec or {}

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        try:
            query_values(request, checks)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)
        return await handler(request)

    return checked
