"""The client side of watches without a server: the SSE parser and how a Watch reads
the messages of a stream (resume position, no repeats, what ends it)."""

from __future__ import annotations

import json

import pytest

from kvstore.client.errors import Compacted, InvalidRequest
from kvstore.client.sse import Message, SSEParser
from kvstore.client.transport import EndpointRouter
from kvstore.client.watch import Watch, WatchProgress, _Reconnect

STREAM = (
    b"retry: 1000\r\nevent: created\r\ndata: {}\r\n\r\n"
    b": a comment\n\n"
    b'id: 7\ndata: {"revision": 7,\ndata:  "events": []}\n\n'
    b"id: 8\nevent: progress\ndata: 8\n\n"
)


@pytest.mark.parametrize("size", [1, 3, 7, len(STREAM)])
def test_the_parser_yields_each_message_whatever_the_chunking(size: int) -> None:
    parser = SSEParser()
    out: list[Message] = []
    for i in range(0, len(STREAM), size):
        out += parser.feed(STREAM[i : i + size])
    assert out == [
        Message("created", "{}", None),
        Message("message", '{"revision": 7,\n "events": []}', "7"),
        Message("progress", "8", "8"),
    ]
    assert parser.last_id == "8"


def watch(**options: object) -> Watch:
    return Watch(lambda: None, EndpointRouter(["http://127.0.0.1:1"]), **options)  # type: ignore[arg-type,return-value]


def test_a_watch_moves_its_resume_point_and_never_delivers_a_revision_twice() -> None:
    w = watch(prefix="a/", progress=True)
    assert w._handle("created", '{"start_revision": 5, "revision": 4}') == []
    assert w.next_revision == 5
    put = json.dumps(
        {"type": "put", "key": "a/x", "value": "dg==", "version": 1, "create_revision": 5}
        | {"mod_revision": 5}
    )
    events = w._handle("message", f'{{"revision": 5, "events": [{put}]}}')
    assert [(e.key, e.value, e.revision) for e in events] == [("a/x", b"v", 5)]
    assert w._handle("message", f'{{"revision": 5, "events": [{put}]}}') == []
    assert w._handle("progress", '{"revision": 9}') == [WatchProgress(9)]
    assert w.next_revision == 10
    assert w._handle("progress", '{"revision": 3}') == [WatchProgress(3)]
    assert w.next_revision == 10  # an older node's progress never moves it back


def test_what_ends_a_stream() -> None:
    w = watch(key="k", start_revision=3)
    with pytest.raises(_Reconnect):
        w._handle("cancelled", '{"reason": "slow", "next_revision": 3}')
    with pytest.raises(Compacted) as caught:
        w._handle("cancelled", '{"reason": "compacted", "next_revision": 3, "compact_revision": 9}')
    assert caught.value.compact_revision == 9
    for bad in ({}, {"key": "k", "prefix": "p"}, {"key": ""}, {"key": "k", "start_revision": 0}):
        with pytest.raises(InvalidRequest):
            watch(**bad)
