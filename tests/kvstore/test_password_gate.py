"""Token requests cannot flood a node with password hashing (kvstore.api.password_gate):
one check at a time, a bounded queue, and a 503 with Retry-After beyond it."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

import kvstore.api.auth
from kvstore.api.password_gate import MAX_WAITING, PASSWORD_GATE_KEY, GateBusy, PasswordGate
from tests.kvstore.test_runtime import _eventually, _LocalCluster

pytestmark = pytest.mark.timeout(60)


class _HeldCheck:
    """A password check that blocks its worker thread until released, counting how many
    run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return self.release.wait(10)
        finally:
            with self._lock:
                self.running -= 1


async def test_one_check_at_a_time_a_bounded_queue_and_busy_beyond_it() -> None:
    gate, held = PasswordGate(parallel=1, max_waiting=2), _HeldCheck()
    calls = [asyncio.ensure_future(gate.check(held)) for _ in range(3)]
    await _eventually(lambda: held.running == 1)
    with pytest.raises(GateBusy):
        await gate.check(held)  # one running, two waiting: the fourth is refused at once
    held.release.set()
    assert await asyncio.gather(*calls) == [True, True, True]
    assert held.most == 1
    assert await gate.check(lambda: False) is False  # free again


async def test_a_waiter_that_gives_up_frees_its_place() -> None:
    gate, held = PasswordGate(parallel=1, max_waiting=1), _HeldCheck()
    running = asyncio.ensure_future(gate.check(held))
    await _eventually(lambda: held.running == 1)
    waiting = asyncio.ensure_future(gate.check(held))
    await _eventually(lambda: gate.waiting == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gate.waiting == 0
    queued = asyncio.ensure_future(gate.check(held))  # the freed place is taken again
    await _eventually(lambda: gate.waiting == 1)
    held.release.set()
    assert (await running, await queued) == (True, True)


async def test_a_flood_of_token_requests_gets_503_busy_past_the_queue(
    local: _LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = await local.leader()
    url = local.config.node(leader).client_url

    async def call(method: str, path: str, body: object = None) -> tuple[int, dict, bytes]:
        data = None if body is None else json.dumps(body).encode()
        async with local.http.request(method, url + path, data=data) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    assert (await call("PUT", "/v1/auth/users/root", {"password": "pw"}))[0] == 200
    assert (await call("PUT", "/v1/auth/users/root/roles/root"))[0] == 200
    assert (await call("POST", "/v1/auth/enable"))[0] == 200
    held = _HeldCheck()
    monkeypatch.setattr(kvstore.api.auth, "password_matches", lambda *_: held())
    login = {"user": "root", "password": "pw"}
    queued = [asyncio.ensure_future(call("POST", "/v1/auth/token", login)) for _ in range(17)]
    gate = local.nodes[leader].runners[0].app[PASSWORD_GATE_KEY]
    await _eventually(lambda: held.running == 1 and gate.waiting == MAX_WAITING)
    status, headers, body = await call("POST", "/v1/auth/token", login)
    assert (status, json.loads(body)["error"], headers["Retry-After"]) == (503, "busy", "1")
    held.release.set()
    answers = await asyncio.gather(*queued)
    assert [a[0] for a in answers] == [200] * (1 + MAX_WAITING)
    assert held.most == 1
