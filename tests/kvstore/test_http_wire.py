"""The fast lane's strict parser (kvstore.api.http_wire): what it takes, and every case
it hands to aiohttp (each with a Host field, so that no case passes for want of one)."""

from __future__ import annotations

import pytest

from kvstore.api.http_wire import MAX_HEAD, Handoff, parse_head

PUT = b"PUT /v1/kv/a%2Fb?prev_version=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"


def test_a_plain_put_is_parsed() -> None:
    head = parse_head(PUT)
    assert head is not None
    assert (head.method, head.path, head.query, head.version) == (
        "PUT",
        "/v1/kv/a%2Fb",
        [("prev_version", "0")],
        "1.1",
    )
    assert head.headers == {"host": "x", "content-length": "3"}
    assert (head.length, head.keep_alive, head.size) == (3, True, len(PUT) - 3)


def test_a_transaction_is_parsed() -> None:
    raw = b"POST /v1/txn?fence_lock=l&fence_token=3 HTTP/1.1\r\n"
    raw += b"Host: x\r\nContent-Length: 2\r\n\r\n{}"
    head = parse_head(raw)
    assert head is not None
    assert (head.method, head.path, head.query, head.length) == (
        "POST",
        "/v1/txn",
        [("fence_lock", "l"), ("fence_token", "3")],
        2,
    )


def test_http_1_0_needs_no_host() -> None:
    head = parse_head(b"GET /v1/kv/a?consistency=stale HTTP/1.0\r\n\r\n")
    assert head is not None and head.version == "1.0" and not head.keep_alive


def test_an_incomplete_head_waits_for_more() -> None:
    end = PUT.index(b"\r\n\r\n") + 4
    for cut in range(end):
        assert parse_head(PUT[:cut]) is None
    assert parse_head(PUT[:end]) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n",  # another method
        b"GET /v1/txn HTTP/1.1\r\nHost: x\r\n\r\n",  # the transaction route takes POST only
        b"PUT /v1/txn HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/txns HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/txn/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/txn?fence_lock=%41 HTTP/1.1\r\nHost: x\r\n\r\n",  # a query to decode
        b"HEAD /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",  # another route
        b"GET /v1/kv/ HTTP/1.1\r\nHost: x\r\n\r\n",  # the range route
        b"GET http://x/v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n",  # absolute form
        b"GET /v1/kv/a HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1 \r\nHost: x\r\n\r\n",  # odd whitespace
        b"GET  /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/kv/a\tb HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/kv/a#f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/kv/a?consistency=%73tale HTTP/1.1\r\nHost: x\r\n\r\n",  # a query to decode
        b"GET /v1/kv/a?stale HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/kv/a?x=a+b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\nHost : x\r\n\r\n",  # space before the colon
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",  # obs-fold
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",  # a control byte
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\r\n\r\n",  # not ASCII
        b"GET /v1/kv/a HTTP/1.1\nHost: x\r\n\r\n",  # a bare LF
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",  # a bare CR
        b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\ncontent-length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx",
        b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\nx",
        b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n",
        b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",  # a body where none goes
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX: " + b"y" * MAX_HEAD + b"\r\n\r\n",  # a huge head
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX: " + b"y" * MAX_HEAD,  # ... even unfinished
        b"HELLO? \x00\x01\x02\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\nAccept: */*\r\n\r\n",  # no Host: aiohttp's 400
    ],
)
def test_anything_unusual_is_handed_to_aiohttp(raw: bytes) -> None:
    with pytest.raises(Handoff):
        parse_head(raw)
