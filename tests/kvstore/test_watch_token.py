"""A watch ends when the token it was opened with stops being valid (kvstore.api.watch):
checked before every send, so a user whose password changed (or who was deleted, or
whose token expired) hears nothing more, and a watch opened before authentication was
turned on does not go on unauthenticated. The stream's last event says where to resume,
and a new token resumes it there with nothing lost."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from kvstore.client import AsyncKV
from tests.kvstore.test_runtime import _eventually, _LocalCluster

pytestmark = pytest.mark.timeout(60)


async def _call(
    local: _LocalCluster, method: str, path: str, body: Any = None, token: str | None = None
) -> Any:
    leader = await local.leader()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    url = local.config.node(leader).client_url + path
    async with local.http.request(method, url, data=data, headers=headers) as resp:
        assert resp.status == 200, (method, path, resp.status, await resp.read())
        return await resp.read()


async def _setup_auth(local: _LocalCluster) -> str:
    """root and alice (who may read and write app/), auth on; root's token."""
    for user in ("root", "alice"):
        await _call(local, "PUT", f"/v1/auth/users/{user}", {"password": f"{user}-pw"})
    await _call(local, "PUT", "/v1/auth/users/root/roles/root")
    await _call(local, "PUT", "/v1/auth/roles/app")
    await _call(local, "POST", "/v1/auth/roles/app/permissions?access=readwrite&prefix=app/")
    await _call(local, "PUT", "/v1/auth/users/alice/roles/app")
    await _call(local, "POST", "/v1/auth/enable")
    return await _token(local, "root", "root-pw")


async def _token(local: _LocalCluster, user: str, password: str) -> str:
    body = await _call(local, "POST", "/v1/auth/token", {"user": user, "password": password})
    return str(json.loads(body)["token"])


async def _put(local: _LocalCluster, key: str, token: str | None) -> int:
    body = await _call(local, "PUT", f"/v1/kv/{key}", b"v", token)
    return int(json.loads(body)["revision"])


class _Stream:
    """The SSE events of one watch, as (event name, data)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    async def next(self) -> tuple[str, dict[str, Any]]:
        name, data = "message", ""
        while True:
            line = (await asyncio.wait_for(self._resp.content.readline(), 10)).decode()
            assert line, "the stream ended without a cancelled event"
            line = line.rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
            elif not line and data:
                return name, json.loads(data)

    async def next_change(self) -> tuple[str, dict[str, Any]]:
        """The next event other than a progress report."""
        while True:
            name, data = await self.next()
            if name != "progress":
                return name, data


async def _watch(local: _LocalCluster, node: str, query: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = local.config.node(node).client_url + "/v1/watch?" + query
    return local.http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30))


async def test_a_watch_ends_when_its_users_password_changes_and_resumes_with_a_new_token(
    local: _LocalCluster,
) -> None:
    root = await _setup_auth(local)
    alice = await _token(local, "alice", "alice-pw")
    first = await _put(local, "app/a", alice)
    leader = await local.leader()
    follower = next(n for n in local.nodes if n != leader)
    async with await _watch(local, follower, f"prefix=app/&start_revision={first}", alice) as resp:
        assert resp.status == 200
        stream = _Stream(resp)
        assert (await stream.next_change())[0] == "created"
        name, data = await stream.next_change()
        assert (name, data["revision"]) == ("message", first)
        await _call(local, "POST", "/v1/auth/users/alice/password", {"password": "new"}, root)
        unseen = await _put(local, "app/b", root)
        name, data = await stream.next_change()
        assert name == "cancelled", (name, data)  # not app/b: alice's token is void
        assert (data["reason"], data["next_revision"]) == ("unauthenticated", unseen)
    fresh = await _token(local, "alice", "new")
    async with await _watch(local, follower, f"prefix=app/&start_revision={unseen}", fresh) as resp:
        stream = _Stream(resp)
        assert (await stream.next_change())[0] == "created"
        name, data = await stream.next_change()
        assert (name, data["revision"], data["events"][0]["key"]) == ("message", unseen, "app/b")


async def test_a_watch_opened_before_auth_was_turned_on_ends_then(
    local: _LocalCluster,
) -> None:
    start = await _put(local, "app/a", None)
    leader = await local.leader()
    async with await _watch(local, leader, f"prefix=app/&start_revision={start}", None) as resp:
        stream = _Stream(resp)
        assert (await stream.next_change())[0] == "created"
        assert (await stream.next_change())[1]["revision"] == start
        root = await _setup_auth(local)
        unseen = await _put(local, "app/secret", root)
        name, data = await stream.next_change()
        assert (name, data["reason"], data["next_revision"]) == (
            "cancelled",
            "unauthenticated",
            unseen,
        )


async def test_a_long_poll_whose_token_went_void_while_waiting_is_refused(
    local: _LocalCluster,
) -> None:
    root = await _setup_auth(local)
    alice = await _token(local, "alice", "alice-pw")
    start = await _put(local, "app/a", alice) + 1
    leader = await local.leader()
    poll = await _watch(local, leader, f"prefix=app/&start_revision={start}&wait=20", alice)
    waiting = asyncio.ensure_future(poll.__aenter__())
    await _eventually(lambda: len(local.nodes[leader].runtime.watches) == 1)  # it waits
    assert not waiting.done()
    await _call(local, "DELETE", "/v1/auth/users/alice", None, root)
    await _put(local, "app/b", root)
    resp = await asyncio.wait_for(waiting, 10)
    try:
        assert resp.status == 401, await resp.read()
        assert (await resp.json())["error"] == "bad_token"
    finally:
        resp.release()


async def test_the_client_resumes_a_watch_its_token_no_longer_admits(
    local: _LocalCluster,
) -> None:
    """Auth turned off and on again signs with a new key, so every token is void: the
    client's watch ends, it gets a new token with its password, and resumes at the
    first change it had not had."""
    root = await _setup_auth(local)
    first = await _put(local, "app/a", root)
    endpoints = [local.config.node(n).client_url for n in local.nodes]
    async with AsyncKV(endpoints, user="alice", password="alice-pw") as kv:
        watch = kv.watch(prefix="app/", start_revision=first)
        changes = aiter(watch)
        assert (await anext(changes)).key == "app/a"
        await _call(local, "POST", "/v1/auth/disable", None, root)
        await _call(local, "POST", "/v1/auth/enable")
        root = await _token(local, "root", "root-pw")
        later = await _put(local, "app/b", root)
        event = await asyncio.wait_for(anext(changes), 20)
        assert (event.key, event.revision) == ("app/b", later)
        assert watch.reconnects >= 1
        await watch.aclose()
