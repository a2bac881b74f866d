"""What a node answers when forwarding or proposing fails, by what really happened
(issue 10, items 5 and 11): 503 only for a write that was certainly never proposed,
504 `timeout` when it may have been. A follower forwards writes over the peer link
(kvstore.runtime.via_leader)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consensus import Config, DropReason, ForwardedProposal, ProposeRequest, ProposeResponse
from consensus.leader import Leadership
from kvstore.runtime import node as node_module
from kvstore.runtime.requests import PendingRequests
from tests.kvstore.test_runtime import _LocalCluster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[_LocalCluster]:
    """Three nodes whose requests time out after 800 ms (the test's indirect parameter
    overrides it)."""
    local = _LocalCluster(tmp_path, request_timeout_ms=getattr(request, "param", 800))
    for node_id in ("n1", "n2", "n3"):
        await local.start(node_id)
    try:
        yield local
    finally:
        await local.close()


async def test_a_forwarded_write_whose_answer_is_lost_is_a_timeout(
    cluster: _LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower hands the write to the leader over the peer link; if it never hears
    where the leader put it, the write may have happened: 504, never 503."""
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    lost: list[ForwardedProposal] = []
    monkeypatch.setattr(
        PendingRequests, "forwarded_outcomes", lambda self, outcomes, applied: lost.extend(outcomes)
    )
    status, _, body = await cluster.call(follower, "PUT", "/v1/kv/sent", b"v")
    assert lost, "the write was not forwarded over the peer link"
    assert status == 504 and json.loads(body)["error"] == "timeout", body
    # It was proposed, and it did take effect: a 503 would have been a lie.
    status, _, body = await cluster.call(leader, "GET", "/v1/kv/sent")
    assert (status, body) == (200, b"v")


# A refusal comes back at once; the long timeout keeps a loaded machine's slow round
# trip from turning it into a 504 (which would be a true answer, but not this test's).
@pytest.mark.parametrize("cluster", [10_000], indirect=True)
async def test_a_write_the_leader_refuses_is_never_proposed(
    cluster: _LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    refused: list[ProposeRequest] = []

    def refuse(self: Leadership, msg: ProposeRequest) -> None:
        refused.append(msg)
        zeros = (0,) * len(msg.request_ids)
        reason = DropReason.TOO_MANY_UNCOMMITTED.value
        self._send(ProposeResponse(self.term, self.id, msg.sender, msg.request_ids, zeros, reason))

    monkeypatch.setattr(Leadership, "propose_for", refuse)
    status, _, body = await cluster.call(follower, "PUT", "/v1/kv/unsent", b"v")
    assert refused, "the write was not forwarded over the peer link"
    # Refused: never proposed, so a definite, retryable 503 that says why.
    assert status == 503 and json.loads(body)["error"] == "overloaded", body
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
