"""A deposed leader must not answer a linearizable read from its own state (issue 10,
item 11): the runtime confirms leadership with a ReadIndex round first."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus import Message
from tests.kvstore.test_runtime import _eventually, _LocalCluster

pytestmark = pytest.mark.timeout(60)


async def test_a_deposed_leader_does_not_serve_the_old_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = _LocalCluster(tmp_path, request_timeout_ms=800)
    try:
        for node_id in ("n1", "n2", "n3"):
            await cluster.start(node_id)
        old_id = await cluster.leader()
        status, _, body = await cluster.call(old_id, "PUT", "/v1/kv/k", b"v1")
        assert status == 200, body
        # The leader is cut off and its clock stops (a long pause): it hears nothing,
        # reaches no one, and keeps believing that it leads.
        old = cluster.nodes[old_id]
        monkeypatch.setattr(old.runtime.node, "tick", lambda: None)

        def drop(msgs: list[Message]) -> None:
            del msgs

        monkeypatch.setattr(old.runtime.transport, "send", drop)
        await old.runners[1].cleanup()  # its peer API: nothing reaches it any more
        others = [n for n in cluster.nodes if n != old_id]
        await _eventually(lambda: any(cluster.nodes[n].runtime.is_leader for n in others))
        new_id = next(n for n in others if cluster.nodes[n].runtime.is_leader)
        status, _, body = await cluster.call(new_id, "PUT", "/v1/kv/k", b"v2")
        assert status == 200, body  # the successor acknowledged the newer write
        assert old.runtime.is_leader, "the old leader must not know of its successor yet"
        status, _, body = await cluster.call(old_id, "GET", "/v1/kv/k")
        assert (status, body) != (200, b"v1"), "a deposed leader served the old value"
        assert status in (503, 504), (status, body)
    finally:
        await cluster.close()
