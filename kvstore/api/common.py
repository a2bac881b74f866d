"""What every HTTP surface of a node shares: the app keys, the headers, the error shape."""

from __future__ import annotations

from aiohttp import web

from kvstore.runtime.node import NodeRuntime

LEADER_HEADER = "X-KV-Leader"
SESSION_HEADERS = ("X-KV-Client-Id", "X-KV-Seq", "X-KV-First-Outstanding")
JSON_TYPE = "application/json"

RUNTIME_KEY = web.AppKey("runtime", NodeRuntime)


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
    for name in request.query:
        if name not in allowed:
            raise BadRequest(400, "bad_query", f"unknown query parameter {name!r}")
        if name in seen:
            raise BadRequest(400, "bad_query", f"query parameter {name!r} given twice")
        seen.add(name)
