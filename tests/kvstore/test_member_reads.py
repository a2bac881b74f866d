"""Membership answers that could be stale or torn (issue 10, item 7): `GET /v1/members`
confirms leadership like a linearizable read, and a backup carries the membership of
the very index its state was taken at."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from consensus import Config, Membership
from kvstore.runtime import node as node_module
from kvstore.runtime.backup import decode_backup
from tests.kvstore.test_runtime import _LocalCluster

pytestmark = pytest.mark.timeout(60)


async def test_a_leader_without_a_quorum_does_not_vouch_for_the_membership(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without CheckQuorum the isolated leader keeps believing it leads: only a quorum
    # round can show that its answer may be stale.
    monkeypatch.setattr(node_module, "Config", functools.partial(Config, check_quorum=False))
    cluster = _LocalCluster(tmp_path, request_timeout_ms=500)
    try:
        for node_id in ("n1", "n2", "n3"):
            await cluster.start(node_id)
        leader = await cluster.leader()
        status, _, body = await cluster.call(leader, "GET", "/v1/members")
        assert status == 200 and json.loads(body)["leader"] == leader
        for node_id in [n for n in cluster.nodes if n != leader]:
            await cluster.stop(node_id)
        status, _, body = await cluster.call(leader, "GET", "/v1/members")
        assert status != 200, f"an unconfirmed leader vouched for the membership: {body!r}"
        assert status in (503, 504) and json.loads(body)["error"] in ("no_leader", "timeout")
        status, _, body = await cluster.call(leader, "GET", "/v1/members?consistency=stale")
        assert status == 200 and json.loads(body)["stale"] is True
    finally:
        await cluster.close()


async def test_a_backup_carries_the_membership_of_its_applied_index(tmp_path: Path) -> None:
    """The core's membership moves when a change is committed, before the runtime has
    applied it (while a persist is in progress); the backup must not mix the two."""
    cluster = _LocalCluster(tmp_path)
    try:
        for node_id in ("n1", "n2", "n3"):
            await cluster.start(node_id)
        leader = await cluster.leader()
        runtime = cluster.nodes[leader].runtime
        status, _, _ = await cluster.call(leader, "PUT", "/v1/kv/k", b"v")
        assert status == 200
        applied = runtime.node.membership
        # As during a persist: a committed change (n4 added) is in force in the core
        # but not yet applied to the state machine.
        ahead = Membership(applied.voters, ("n4",))
        runtime.node.membership = ahead
        try:
            status, _, blob = await cluster.call(leader, "GET", "/v1/snapshot")
        finally:
            runtime.node.membership = applied
        assert status == 200
        header = decode_backup(blob).header
        assert (header["voters"], header["learners"]) == (list(applied.voters), []), header
    finally:
        await cluster.close()
