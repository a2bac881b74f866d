"""What a node answers when forwarding or proposing fails, by what really happened
(issue 10, items 5 and 11): 503 only for a write that was certainly never proposed,
504 `timeout` when it may have been."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consensus import Config
from kvstore.api.forwarding import HOPS_HEADER
from kvstore.runtime import node as node_module
from tests.kvstore.test_runtime import _LocalCluster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[_LocalCluster]:
    local = _LocalCluster(tmp_path, request_timeout_ms=800)
    for node_id in ("n1", "n2", "n3"):
        await local.start(node_id)
    try:
        yield local
    finally:
        await local.close()


def _break_forwarding(monkeypatch: pytest.MonkeyPatch, fail: Any, *, send_first: bool) -> list[str]:
    """Make every forwarded request (the ones carrying the hops header) fail with
    `fail()`; with `send_first`, only after the leader received it. Returns the URLs."""
    original = aiohttp.ClientSession._request
    seen: list[str] = []

    async def request(self: aiohttp.ClientSession, method: str, url: Any, **kw: Any) -> Any:
        if HOPS_HEADER not in (kw.get("headers") or {}):
            return await original(self, method, url, **kw)
        seen.append(str(url))
        if send_first:
            resp = await original(self, method, url, **kw)
            await resp.read()
            resp.release()
        raise fail()

    monkeypatch.setattr(aiohttp.ClientSession, "_request", request)
    return seen


async def test_a_forwarded_write_that_fails_after_it_was_sent_is_a_timeout(
    cluster: _LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    seen = _break_forwarding(
        monkeypatch, lambda: aiohttp.ServerDisconnectedError(), send_first=True
    )
    status, _, body = await cluster.call(follower, "PUT", "/v1/kv/sent", b"v")
    assert seen, "the write was not forwarded"
    assert status == 504 and json.loads(body)["error"] == "timeout", body
    # It was sent, and it did take effect: a 503 would have been a lie.
    status, _, body = await cluster.call(leader, "GET", "/v1/kv/sent")
    assert (status, body) == (200, b"v")


async def test_a_connect_timeout_to_the_leader_is_not_an_unknown_outcome(
    cluster: _LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    seen = _break_forwarding(
        monkeypatch, lambda: aiohttp.ConnectionTimeoutError("connect timed out"), send_first=False
    )
    status, _, body = await cluster.call(follower, "PUT", "/v1/kv/unsent", b"v")
    assert seen, "the write was not forwarded"
    # Nothing was sent: never proposed, so a definite, retryable 503.
    assert status == 503 and json.loads(body)["error"] == "no_leader", body
    status, _, _ = await cluster.call(leader, "GET", "/v1/kv/unsent")
    assert status == 404


async def test_back_pressure_says_what_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One uncommitted entry is the limit; without CheckQuorum the leader keeps its
    # office once its followers are gone, so nothing commits and nothing steps down.
    config = functools.partial(Config, max_uncommitted_entries=1, check_quorum=False)
    monkeypatch.setattr(node_module, "Config", config)
    cluster = _LocalCluster(tmp_path, request_timeout_ms=800)
    try:
        for node_id in ("n1", "n2", "n3"):
            await cluster.start(node_id)
        leader = await cluster.leader()
        status, _, _ = await cluster.call(leader, "PUT", "/v1/kv/first", b"0")
        assert status == 200
        for node_id in [n for n in cluster.nodes if n != leader]:
            await cluster.stop(node_id)
        first = asyncio.create_task(cluster.call(leader, "PUT", "/v1/kv/a", b"1"))
        await asyncio.sleep(0.05)
        status, _, body = await cluster.call(leader, "PUT", "/v1/kv/b", b"2")
        answer = json.loads(body)
        assert status == 503 and answer["error"] == "overloaded", body
        assert "transfer" not in answer["message"]
        assert (await first)[0] == 504  # the first one was proposed: unknown
    finally:
        await cluster.close()
