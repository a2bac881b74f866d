"""A write sent to a follower reaches the log as its user's (AsUser), however the follower
passes it to the leader (HTTP today, the peer link tomorrow): the apply-time permission
check (kvstore.state.auth_check) depends on it, and a follower's own request-time check
would hide its loss from every test that only looks at answers."""

from __future__ import annotations

import json

import pytest

from consensus.types import Entry, EntryType
from kvstore.state.commands import AsUser, Command, Put, decode_command
from kvstore.state.machine import KVStateMachine
from tests.kvstore.test_runtime import _LocalCluster

pytestmark = pytest.mark.timeout(60)


async def _ok(local: _LocalCluster, node: str, method: str, path: str, body: object = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    status, _, answer = await local.call(node, method, path, data)
    assert status == 200, (method, path, answer)


async def test_a_followers_write_reaches_the_log_with_its_user(
    local: _LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[Command] = []
    original = KVStateMachine.apply

    def recording(self: KVStateMachine, entry: Entry) -> object:
        if entry.type == EntryType.NORMAL:
            applied.append(decode_command(entry.data))
        return original(self, entry)

    monkeypatch.setattr(KVStateMachine, "apply", recording)
    leader = await local.leader()
    for user in ("root", "alice"):
        await _ok(local, leader, "PUT", f"/v1/auth/users/{user}", {"password": f"{user}-pw"})
    await _ok(local, leader, "PUT", "/v1/auth/users/root/roles/root")
    await _ok(local, leader, "PUT", "/v1/auth/roles/app")
    await _ok(local, leader, "POST", "/v1/auth/roles/app/permissions?access=write&prefix=app/")
    await _ok(local, leader, "PUT", "/v1/auth/users/alice/roles/app")
    await _ok(local, leader, "POST", "/v1/auth/enable")
    url = local.config.node(leader).client_url
    credentials = {"user": "alice", "password": "alice-pw"}
    async with local.http.post(url + "/v1/auth/token", json=credentials) as resp:
        assert resp.status == 200
        token = (await resp.json())["token"]
    followers = [n for n in local.nodes if n != leader]
    for node in followers:
        follower_url = local.config.node(node).client_url
        headers = {"Authorization": f"Bearer {token}"}
        async with local.http.put(
            f"{follower_url}/v1/kv/app/{node}", data=b"v", headers=headers
        ) as resp:
            assert resp.status == 200, await resp.read()
    for node in followers:
        assert AsUser("alice", Put(f"app/{node}", b"v")) in applied, applied[-4:]
    assert not any(type(c) is Put for c in applied), "a user's write reached the log bare"
