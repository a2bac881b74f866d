"""A write sent to a follower reaches the log as its user's (AsUser), however the follower
passes it to the leader (HTTP today, the peer link tomorrow): the apply-time permission
check (kvstore.state.auth_check) depends on it, and a follower's own request-time check
would hide its loss from every test that only looks at answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consensus.types import Entry, EntryType
from kvstore.state.commands import AsUser, Command, Put, decode_command
from kvstore.state.machine import KVStateMachine
from tests.kvstore.test_runtime import _LocalCluster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[_LocalCluster]:
    local = _LocalCluster(tmp_path)
    for node_id in ("n1", "n2", "n3"):
        await local.start(node_id)
    try:
        yield local
    finally:
        await local.close()


async def _ok(
    cluster: _LocalCluster, node: str, method: str, path: str, body: object = None
) -> None:
    data = None if body is None else json.dumps(body).encode()
    status, _, answer = await cluster.call(node, method, path, data)
    assert status == 200, (method, path, answer)


async def test_a_followers_write_reaches_the_log_with_its_user(
    cluster: _LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[Command] = []
    original = KVStateMachine.apply

    def recording(self: KVStateMachine, entry: Entry) -> object:
        if entry.type == EntryType.NORMAL:
            applied.append(decode_command(entry.data))
        return original(self, entry)

    monkeypatch.setattr(KVStateMachine, "apply", recording)
    leader = await cluster.leader()
    for user in ("root", "alice"):
        await _ok(cluster, leader, "PUT", f"/v1/auth/users/{user}", {"password": f"{user}-pw"})
    await _ok(cluster, leader, "PUT", "/v1/auth/users/root/roles/root")
    await _ok(cluster, leader, "PUT", "/v1/auth/roles/app")
    await _ok(cluster, leader, "POST", "/v1/auth/roles/app/permissions?access=write&prefix=app/")
    await _ok(cluster, leader, "PUT", "/v1/auth/users/alice/roles/app")
    await _ok(cluster, leader, "POST", "/v1/auth/enable")
    url = cluster.config.node(leader).client_url
    credentials = {"user": "alice", "password": "alice-pw"}
    async with cluster.http.post(url + "/v1/auth/token", json=credentials) as resp:
        assert resp.status == 200
        token = (await resp.json())["token"]
    followers = [n for n in cluster.nodes if n != leader]
    for node in followers:
        follower_url = cluster.config.node(node).client_url
        headers = {"Authorization": f"Bearer {token}"}
        async with cluster.http.put(
            f"{follower_url}/v1/kv/app/{node}", data=b"v", headers=headers
        ) as resp:
            assert resp.status == 200, await resp.read()
    for node in followers:
        assert AsUser("alice", Put(f"app/{node}", b"v")) in applied, applied[-4:]
    assert not any(type(c) is Put for c in applied), "a user's write reached the log bare"
