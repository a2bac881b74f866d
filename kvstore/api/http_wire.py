"""HTTP/1.1 on the wire for the fast lane (kvstore.api.fast_lane): a strict parser for
the few requests it serves, and the bytes of their answers.

The parser says yes only to what it is sure about, and raises Handoff for everything
else, so that aiohttp (which knows all of HTTP, and answers malformed requests with
its 400s) serves it: a request line `GET|PUT|DELETE /v1/kv/... HTTP/1.1|1.0` (or
`POST /v1/txn`) of plain characters, header fields of token names and visible-ASCII
values, each at most once, a query of plain `name=value` pairs (no percent-encoding,
no `+`), and a body given by Content-Length alone. Chunked bodies, Expect, Upgrade, an
unusual Connection, obs-fold, odd whitespace, control or non-ASCII bytes, duplicate
fields and heads over MAX_HEAD bytes are handed off.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus

from kvstore.api.common import LEADER_HEADER, Answer

MAX_HEAD = 8190
"""The longest head served here (aiohttp's own limit for a line or a field)."""

_REQUEST_LINE = re.compile(
    rb"(GET|PUT|DELETE|POST) "
    rb"(/v1/(?:kv/[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]+|txn(?:\?[A-Za-z0-9\-._=&]*)?))"
    rb" HTTP/1\.([01])\r\n"
)
TXN_PATH = "/v1/txn"
"""The one route taken with POST (a transaction); the others are keys under /v1/kv/."""
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~]*\r\n)*\r\n")
"""The header fields and the blank line that ends the head."""
_QUERY = re.compile(r"[A-Za-z_]+=[A-Za-z0-9\-._]*(?:&[A-Za-z_]+=[A-Za-z0-9\-._]*)*")
_NEVER = ("transfer-encoding", "expect", "upgrade")
"""Fields that change how the connection or the body works: aiohttp's business."""


class Handoff(Exception):
    """Not a request the fast lane serves: aiohttp takes over the connection."""


class Head:
    """One parsed request head (and, once the lane looked at its path, its key)."""

    __slots__ = (
        "headers",
        "keep_alive",
        "key",
        "length",
        "method",
        "path",
        "query",
        "size",
        "version",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        version: str,
        headers: Mapping[str, str],
        length: int,
        keep_alive: bool,
        size: int,
    ) -> None:
        self.method, self.path, self.query, self.version = method, path, query, version
        self.headers = headers
        """By lower-case name (shared by requests with the same fields: read only)."""
        self.length = length
        """Of the body (Content-Length)."""
        self.keep_alive = keep_alive
        self.size = size
        """Of the head, its blank line included."""
        self.key = ""


def parse_head(data: bytes | bytearray) -> Head | None:
    """The head at the start of `data`; None while it is incomplete; Handoff when it is
    not one the fast lane is sure to serve exactly as aiohttp would."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise Handoff("head too long")
        return None
    size = end + 4
    if size > MAX_HEAD:
        raise Handoff("head too long")
    match = _REQUEST_LINE.match(data, 0, size)
    if match is None:
        raise Handoff("not a plain request of the fast lane")
    method_b, target_b, minor = match.groups()
    headers, declared, connection = _fields(bytes(data[match.end() : size]))
    keep_alive = minor == b"1"
    if keep_alive and "host" not in headers:
        raise Handoff("an HTTP/1.1 request without Host (aiohttp answers 400)")
    if connection is not None:
        if connection == "close":
            keep_alive = False
        elif connection != "keep-alive":
            raise Handoff("an unusual Connection field")
    method = method_b.decode("ascii")
    length = declared or 0
    path, _, raw_query = target_b.decode("ascii").partition("?")
    if (method == "POST") != (path == TXN_PATH):
        raise Handoff("a method the route does not take (aiohttp answers 405)")
    if length and method not in ("PUT", "POST"):
        raise Handoff("a body on a request that takes none")
    query: list[tuple[str, str]] = []
    if raw_query:
        if _QUERY.fullmatch(raw_query) is None:
            raise Handoff("a query that needs decoding")
        for pair in raw_query.split("&"):
            name, _, value = pair.partition("=")
            query.append((name, value))
    version = "1.1" if minor == b"1" else "1.0"
    return Head(method, path, query, version, headers, length, keep_alive, size)


@functools.lru_cache(maxsize=256)
def _fields(block: bytes) -> tuple[Mapping[str, str], int | None, str | None]:
    """(the header fields by lower-case name, Content-Length, Connection in lower case)
    of a head's field block, or Handoff. Cached: a client sends the same fields with
    every request (only the request line names another key), and parsing them took
    most of a request's parsing time. The mapping is shared: read only."""
    if _FIELDS.fullmatch(block) is None:
        raise Handoff("not a plain request of the fast lane")
    lines = block.decode("ascii").split("\r\n")
    del lines[-2:]  # the empty ends of the last field's CRLF and of the blank line
    headers: dict[str, str] = {}
    for line in lines:  # `name:value`, as _FIELDS checked
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip(" \t")
    if len(headers) != len(lines):
        raise Handoff("a repeated header field")
    if any(name in headers for name in _NEVER):
        raise Handoff("a field about the connection or the body")
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or len(declared) > 18):
        raise Handoff("an unusual Content-Length")
    connection = headers.get("connection")
    return (
        headers,
        None if declared is None else int(declared),
        None if connection is None else connection.lower(),
    )


_STATUS_LINES = {
    version: {s.value: f"HTTP/{version} {s.value} {s.phrase}\r\n" for s in HTTPStatus}
    for version in ("1.0", "1.1")
}


class _DateField:
    """The Date field (an origin server with a clock must send one), formatted once a
    second as aiohttp does."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second, self._text = -1, ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = f"Date: {formatdate(second, usegmt=True)}\r\n"
        return self._text


_date_field = _DateField()


def encode_answer(answer: Answer, version: str, leader: str | None, close: bool) -> bytes:
    """The bytes of one answer, as aiohttp would frame it (without its Server field):
    an HTTP/1.1 answer that ends its connection says so; HTTP/1.0 ones end it anyway."""
    body = answer.body
    parts = [
        _STATUS_LINES[version][answer.status],
        f"Content-Type: {answer.content_type}\r\nContent-Length: {len(body)}\r\n",
        _date_field(),
    ]
    for name, value in answer.headers:
        parts.append(f"{name}: {value}\r\n")
    if leader is not None:
        parts.append(f"{LEADER_HEADER}: {leader}\r\n")
    if close and version == "1.1":
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode() + body
