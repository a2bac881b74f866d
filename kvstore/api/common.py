"""What every HTTP surface of a node shares: the app keys, the headers, the error shape."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from kvstore.runtime.node import NodeRuntime

LEADER_HEADER = "X-KV-Leader"
SESSION_HEADERS = ("X-KV-Client-Id", "X-KV-Seq", "X-KV-First-Outstanding")
JSON_TYPE = "application/json"
JSON_CHARSET = "application/json; charset=utf-8"
"""What aiohttp writes for a JSON text answer (its `text=` bodies carry the charset)."""

RUNTIME_KEY = web.AppKey("runtime", NodeRuntime)
USER_KEY: Any = web.RequestKey("kv_user", str) if hasattr(web, "RequestKey") else "kv_user"
"""The request's authenticated user (kvstore.api.access); absent while auth is off.
(aiohttp before 3.13 has no RequestKey: a plain name then.)"""


class Refused(Exception):
    """A request answered with an error: the status, the stable code and the text."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BadRequest(Refused):
    """Refused for what the request says (its path, query, headers or body)."""


class Answer:
    """An answer independent of the transport: the aiohttp handlers turn it into a
    web.Response (`response()`), the fast lane (kvstore.api.fast_lane) into bytes, so
    both give one answer from one implementation."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status, self.body, self.content_type, self.headers = (
            status,
            body,
            content_type,
            headers,
        )

    def response(self) -> web.Response:
        headers = {"Content-Type": self.content_type}
        headers.update(self.headers)
        return web.Response(status=self.status, body=self.body, headers=headers)


def error_answer(status: int, code: str, message: str, **extra: object) -> Answer:
    """Every error answer: `{"error": CODE, "message": TEXT}` plus any extra fields,
    encoded as web.json_response encodes it."""
    body = json.dumps({"error": code, "message": message, **extra}).encode()
    return Answer(status, body, JSON_CHARSET)


def error(status: int, code: str, message: str, **extra: object) -> web.Response:
    return error_answer(status, code, message, **extra).response()


def json_answer(text: str, status: int = 200) -> Answer:
    """A JSON answer already encoded (the hot path formats small answers by hand)."""
    return Answer(status, text.encode(), JSON_CHARSET)


def json_text(text: str, status: int = 200) -> web.Response:
    return json_answer(text, status).response()


def check_query(request: web.Request, allowed: frozenset[str] = frozenset()) -> None:
    """The contract's rule for every endpoint: an unknown or repeated query parameter is
    refused with 400 naming it, so a typo never changes what a request means."""
    # items(), not the keys: iterating a multidict (7.x) yields each name only once.
    check_pairs(request.query.items(), allowed)


def check_pairs(pairs: Iterable[tuple[str, str]], allowed: frozenset[str]) -> None:
    """check_query on (name, value) pairs, whoever parsed them."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name not in allowed:
            raise BadRequest(400, "bad_query", f"unknown query parameter {name!r}")
        if name in seen:
            raise BadRequest(400, "bad_query", f"query parameter {name!r} given twice")
        seen.add(name)


def query_values(request: web.Request, spec: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    """The query parameters of `spec` parsed by its functions, after `check_query`. A
    parser raises ValueError for a malformed value, answered 400 `bad_<name>` naming it.
    Parameters that are absent are absent from the answer."""
    return pair_values(request.query.items(), spec)


def pair_values(
    pairs: Iterable[tuple[str, str]], spec: dict[str, Callable[[str], Any]]
) -> dict[str, Any]:
    """query_values on (name, value) pairs, whoever parsed them."""
    pairs = list(pairs)
    if not pairs:  # most requests: nothing to check
        return {}
    check_pairs(pairs, frozenset(spec))
    values: dict[str, Any] = {}
    for name, raw in pairs:
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
