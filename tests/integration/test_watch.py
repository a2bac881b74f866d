"""Watches against real `kv serve` processes: the HTTP forms (SSE, long poll, 410, strict
query), resume on another node with Last-Event-ID or start_revision, a stalled reader
cut off and resumed, the client across a leader kill, the sync client and the CLI."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvstore.client import KV, AsyncKV, Compacted, WatchEvent
from kvstore.client.sse import Message, SSEParser
from tests.integration.harness import Cluster, child_env, wait_until

pytestmark = pytest.mark.integration


class SSEStream:
    """A raw text/event-stream reader, as a browser's EventSource reads it; `rcvbuf`
    shrinks the socket's receive buffer so a reader that stops reading is felt at once."""

    def __init__(
        self, url: str, path: str, headers: dict[str, str] | None = None, rcvbuf: int = 0
    ) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=15)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(15)
        sock.connect((host, int(port)))
        self.conn.sock = sock
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        self.parser = SSEParser()

    def read_until(self, done: Callable[[Message], bool], timeout: float = 20.0) -> list[Message]:
        """Messages up to and including the first for which `done` is true."""
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        while time.monotonic() < deadline:
            chunk = self.response.read1(65536)
            if not chunk:
                raise AssertionError(f"stream ended after {len(out)} messages")
            for message in self.parser.feed(chunk):
                out.append(message)
                if done(message):
                    return out
        raise AssertionError(f"no final message within {timeout}s; got {out[-3:]}")

    def close(self) -> None:
        self.conn.close()


def changes(messages: list[Message]) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in messages if m.event == "message"]


def put(cluster: Cluster, leader: str, key: str, value: bytes) -> int:
    reply = cluster.put(leader, key, value)
    assert reply.status == 200, reply.body
    return int(reply.json()["revision"])


def applied(cluster: Cluster, node: str, revision: int) -> None:
    """Until `node` has applied `revision` (long poll answers with the node's revision)."""

    def reached() -> bool:
        reply = cluster.http(node, "GET", "/v1/watch?prefix=&wait=0")
        return reply.json()["revision"] >= revision

    wait_until(reached, 10.0, f"{node} to apply revision {revision}")


@pytest.fixture
def watch_cluster(cluster_factory: Any) -> Iterator[Cluster]:
    c = cluster_factory(election_ticks=30, watch_progress_ms=300, history_revisions=50)
    c.start()
    c.wait_healthy(timeout=20.0)
    yield c


def test_long_poll_answers_at_once_or_waits_for_the_first_change(watch_cluster: Cluster) -> None:
    c = watch_cluster
    leader = c.wait_leader()
    follower = next(n for n in c.nodes if n != leader)
    first = put(c, leader, "cfg/a", b"1")
    put(c, leader, "other", b"x")
    put(c, leader, "cfg/b", b"\xff\x00")
    applied(c, follower, first + 2)
    reply = c.http(follower, "GET", f"/v1/watch?prefix=cfg/&start_revision={first}&wait=5")
    body = reply.json()
    assert reply.status == 200
    assert [(e["key"], base64.b64decode(e["value"])) for e in body["events"]] == [
        ("cfg/a", b"1"),
        ("cfg/b", b"\xff\x00"),
    ]
    assert [e["mod_revision"] for e in body["events"]] == [first, first + 2]
    assert body["next_revision"] == first + 3
    started = time.monotonic()
    reply = c.http(follower, "GET", f"/v1/watch?key=cfg/a&start_revision={first + 1}&wait=0.5")
    assert reply.json()["events"] == [] and time.monotonic() - started >= 0.45
    assert reply.json()["next_revision"] == first + 3  # nothing for cfg/a up to first + 2


def test_bad_queries_answer_400_naming_the_parameter(watch_cluster: Cluster) -> None:
    c = watch_cluster
    node = next(iter(c.nodes))
    for query, word in [
        ("prefix=a&bogus=1", "bogus"),
        ("prefix=a&prefix=b", "prefix"),
        ("prefix=a&key=b", "key"),
        ("prefix=a&start_revision=x", "start_revision"),
        ("prefix=a&start_revision=0", "start_revision"),
        ("prefix=a&wait=forever", "wait"),
        ("prefix=a&prev_kv=maybe", "prev_kv"),
        ("", "key"),
    ]:
        reply = c.http(node, "GET", f"/v1/watch?{query}")
        assert reply.status == 400, query
        assert word in reply.json()["message"], (query, reply.json())


def test_a_start_older_than_the_history_answers_410_with_the_oldest_revision(
    watch_cluster: Cluster,
) -> None:
    c = watch_cluster  # history_revisions = 50
    leader = c.wait_leader()
    last = 0
    for i in range(60):
        last = put(c, leader, f"k{i % 5}", b"v")
    for form in ("&wait=0", ""):
        reply = c.http(leader, "GET", f"/v1/watch?prefix=&start_revision=2{form}")
        assert reply.status == 410
        body = reply.json()
        assert body["error"] == "compacted" and body["compact_revision"] == last - 50
    reply = c.http(leader, "GET", f"/v1/watch?prefix=&start_revision={last - 49}&wait=0")
    assert [e["mod_revision"] for e in reply.json()["events"]] == list(range(last - 49, last + 1))


def test_eventsource_resume_with_last_event_id_on_another_node(watch_cluster: Cluster) -> None:
    c = watch_cluster
    leader = c.wait_leader()
    a, b = (n for n in c.nodes if n != leader)
    start = put(c, leader, "svc/0", b"0")
    stream = SSEStream(c.url(a), f"/v1/watch?prefix=svc/&start_revision={start}&prev_kv=true")
    assert stream.response.getheader("Content-Type") == "text/event-stream"
    got = changes(stream.read_until(lambda m: m.event == "message"))
    for i in range(1, 4):
        put(c, leader, f"svc/{i}", b"%d" % i)
    messages = stream.read_until(lambda m: m.event == "message" and m.id == str(start + 3))
    got += changes(messages)
    stream.close()
    last_id = messages[-1].id
    for i in range(4, 8):
        put(c, leader, f"svc/{i}", b"%d" % i)
    # The browser reconnects with its original URL and the last id it saw, elsewhere.
    path = f"/v1/watch?prefix=svc/&start_revision={start}&prev_kv=true"
    again = SSEStream(c.url(b), path, headers={"Last-Event-ID": str(last_id)})
    got += changes(again.read_until(lambda m: m.id == str(start + 7) and m.event == "message"))
    progress = again.read_until(lambda m: m.event == "progress")[-1]
    again.close()
    assert [g["revision"] for g in got] == list(range(start, start + 8)), "gap or repeat"
    assert [g["events"][0]["key"] for g in got] == [f"svc/{i}" for i in range(8)]
    assert all(g["events"][0]["prev"] is None for g in got)
    assert int(progress.id or 0) >= start + 7


def test_a_node_cut_off_from_the_others_ends_its_streams_for_another_node(
    watch_cluster: Cluster,
) -> None:
    c = watch_cluster
    leader = c.wait_leader()
    lonely = next(n for n in c.nodes if n != leader)
    start = put(c, leader, "iso/a", b"1")
    stream = SSEStream(c.url(lonely), f"/v1/watch?prefix=iso/&start_revision={start}")
    stream.read_until(lambda m: m.event == "message")
    others = [n for n in c.nodes if n != lonely]
    for node in others:
        c.pause(node)
    try:
        final = stream.read_until(lambda m: m.event == "cancelled", timeout=20)[-1]
        poll = c.http(lonely, "GET", f"/v1/watch?prefix=iso/&start_revision={start + 1}&wait=0")
        assert (poll.status, poll.json()["error"]) == (503, "no_leader")
    finally:
        for node in others:
            c.resume(node)
        stream.close()
    assert json.loads(final.data)["reason"] == "no_leader"
    assert json.loads(final.data)["next_revision"] == start + 1


def test_resume_with_the_last_revision_on_another_node_neither_repeats_nor_skips(
    watch_cluster: Cluster,
) -> None:
    c = watch_cluster
    leader = c.wait_leader()
    nodes = list(c.nodes)
    start = put(c, leader, "r/0", b"0")
    for i in range(1, 30):
        put(c, leader, f"r/{i % 4}", b"%d" % i)
    last = start + 29
    for node in nodes:
        applied(c, node, last)
    seen: list[int] = []
    revision, hop = start, 0
    while revision <= last and hop < 20:  # three changes per poll, each on the next node
        node = nodes[hop % 3]
        reply = c.http(node, "GET", f"/v1/watch?prefix=r/&start_revision={revision}&wait=0")
        events = reply.json()["events"][:3]
        seen += [e["mod_revision"] for e in events]
        revision = seen[-1] + 1 if events else reply.json()["next_revision"]
        hop += 1
    assert seen == list(range(start, start + 30))


def test_a_stalled_reader_is_cut_off_and_resumes(cluster_factory: Any) -> None:
    c = cluster_factory(election_ticks=30, watch_buffer_bytes=200_000, watch_progress_ms=300)
    c.start()
    leader = c.wait_healthy(timeout=20.0)
    start = put(c, leader, "big/start", b"s")
    stalled = SSEStream(c.url(leader), f"/v1/watch?prefix=big/&start_revision={start}", rcvbuf=4096)
    stalled.read_until(lambda m: m.event == "message")  # established, then it stops reading
    value = b"x" * 60_000
    last = start
    started = time.monotonic()
    for i in range(160):  # ~13 MB of stream: beyond every socket buffer and the 200 kB bound
        last = put(c, leader, f"big/{i % 8}", value)
    assert time.monotonic() - started < 60, "the stalled reader slowed the writes down"
    fresh = c.http(leader, "GET", f"/v1/watch?key=big/0&start_revision={last - 7}&wait=0")
    assert len(fresh.json()["events"]) == 1  # the node serves others meanwhile
    messages = stalled.read_until(lambda m: m.event == "cancelled", timeout=60)
    stalled.close()
    final = json.loads(messages[-1].data)
    assert final["reason"] == "slow"
    received = [start] + [g["revision"] for g in changes(messages)]
    assert received == list(range(start, final["next_revision"]))
    assert final["next_revision"] <= last, "the reader was never cut off"
    reply = c.http(
        leader, "GET", f"/v1/watch?prefix=big/&start_revision={final['next_revision']}&wait=0"
    )
    resumed = [e["mod_revision"] for e in reply.json()["events"]]
    assert received + resumed == list(range(start, last + 1))


async def test_client_watch_sees_every_acknowledged_write_across_a_leader_kill(
    watch_cluster: Cluster,
) -> None:
    c = watch_cluster
    leader = await asyncio.to_thread(c.wait_leader)
    endpoints = c.endpoints()
    async with AsyncKV(endpoints, timeout=20.0) as kv:
        first = (await kv.put("w/first", b"0")).revision
        watch = kv.watch(prefix="w/", start_revision=first, idle_timeout=3.0)
        received: list[WatchEvent] = []

        async def consume() -> None:
            async for event in watch:
                assert isinstance(event, WatchEvent)
                received.append(event)

        consumer = asyncio.create_task(consume())
        acked: dict[int, bytes] = {first: b"0"}
        for i in range(60):
            if i == 20:
                await asyncio.to_thread(c.kill9, leader)
            if i == 40:
                await asyncio.to_thread(c.start, leader)
            value = b"%d" % i
            acked[(await kv.put(f"w/{i % 6}", value)).revision] = value
        last = max(acked)
        deadline = asyncio.get_running_loop().time() + 30
        while (not received or received[-1].revision < last) and not consumer.done():
            assert asyncio.get_running_loop().time() < deadline, received[-3:]
            await asyncio.sleep(0.05)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await watch.aclose()
    revisions = [e.revision for e in received]
    assert revisions == list(range(first, last + 1)), "a gap, a repeat or out of order"
    by_revision = {e.revision: e.value for e in received}
    assert all(by_revision[r] == v for r, v in acked.items())


def test_sync_client_watch_and_compacted(watch_cluster: Cluster) -> None:
    c = watch_cluster
    leader = c.wait_leader()
    with KV(c.endpoints()) as kv:
        first = kv.put("s/a", b"1").revision
        kv.delete("s/a")
        with kv.watch(key="s/a", start_revision=first, prev_kv=True) as watch:
            put_event, delete_event = next(watch), next(watch)
        assert (put_event.type, put_event.value, put_event.prev) == ("put", b"1", None)
        assert (delete_event.type, delete_event.revision) == ("delete", first + 1)
        assert delete_event.prev is not None and delete_event.prev.value == b"1"
        for i in range(55):
            put(c, leader, "s/b", b"%d" % i)
        with pytest.raises(Compacted) as caught, kv.watch(prefix="s/", start_revision=first) as w:
            next(w)
        assert caught.value.compact_revision > first


def test_cli_watch_prints_one_line_per_change(watch_cluster: Cluster) -> None:
    c = watch_cluster
    leader = c.wait_leader()
    first = put(c, leader, "cli/a", b"hello")
    put(c, leader, "cli/b", b"\xff")
    c.http(leader, "DELETE", "/v1/kv/cli/a")
    command = [sys.executable, "-m", "kvstore.cli.main", "watch", "--endpoints", c.endpoints()]
    text = subprocess.run(
        [*command, "--prefix", "cli/", "--rev", str(first), "--count", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        f"{first} PUT cli/a hello",
        f"{first + 1} PUT cli/b \\xff",
        f"{first + 2} DELETE cli/a",
    ]
    as_json = subprocess.run(
        [*command, "cli/b", "--rev", str(first), "--count", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert json.loads(as_json.stdout) == {
        "revision": first + 1,
        "type": "put",
        "key": "cli/b",
        "value_b64": "/w==",
        "version": 1,
        "create_revision": first + 1,
    }
