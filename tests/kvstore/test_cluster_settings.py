"""Everything an apply result depends on comes from the log (issue 10, item 1): two
nodes whose cluster.toml disagree on `session_ttl_entries` / `max_sessions` apply the
same log to the same state and the same results; the settings the log carries are
kept in snapshots."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from consensus import Entry, MemoryStorage
from kvstore.runtime.node import NodeRuntime
from kvstore.state.commands import Put, SessionRef, SetSettings, encode_command
from kvstore.state.machine import KVStateMachine, SessionExpiredResult
from tests.kvstore.test_runtime import _eventually, _LocalCluster

pytestmark = pytest.mark.timeout(60)


def _session_log(first: int = 1) -> list[Entry]:
    """Client c1 writes, falls silent for five entries, then writes again; seven other
    clients open sessions meanwhile."""
    writes = [Put("a", b"1", session=SessionRef("c1", 1, 1))]
    writes += [Put(f"o{i}", b"x", session=SessionRef(f"other{i}", 1, 1)) for i in range(7)]
    writes += [Put("a", b"2", session=SessionRef("c1", 2, 2))]
    return [Entry(2, first + i, encode_command(cmd)) for i, cmd in enumerate(writes)]


def _runtime(tmp_path: Path, **tuning: int) -> NodeRuntime:
    cluster = _LocalCluster(tmp_path / "-".join(map(str, tuning.values())))
    config = dataclasses.replace(
        cluster.config, tuning=dataclasses.replace(cluster.config.tuning, **tuning)
    )
    return NodeRuntime(config, "n1", MemoryStorage())


async def test_nodes_with_different_tunings_apply_the_same_log_alike(tmp_path: Path) -> None:
    strict = _runtime(tmp_path, session_ttl_entries=3, max_sessions=2, history_revisions=2)
    lenient = _runtime(tmp_path, session_ttl_entries=1000, max_sessions=100, history_revisions=900)
    results = []
    for runtime in (strict, lenient):
        results.append([runtime.sm.apply(entry) for entry in _session_log()])
    assert results[0] == results[1], "the same log gave different results on two nodes"
    assert not any(isinstance(r, SessionExpiredResult) for r in results[0])
    assert strict.sm.fingerprint() == lenient.sm.fingerprint()
    for runtime in (strict, lenient):
        await runtime.transport.close()


def test_settings_come_from_the_log_and_travel_in_snapshots() -> None:
    log = [Entry(2, 1, encode_command(SetSettings(3, 2, 100, only_if_unset=True)))]
    log += [Entry(2, 2, encode_command(SetSettings(1000, 100, 100, only_if_unset=True)))]  # ignored
    log += _session_log(first=3)
    machines = [KVStateMachine(), KVStateMachine(session_ttl_entries=7, max_sessions=9)]
    outcomes = [[sm.apply(entry) for entry in log] for sm in machines]
    assert outcomes[0] == outcomes[1]
    assert isinstance(outcomes[0][-1], SessionExpiredResult)  # ttl 3 and 2 sessions, from the log
    assert machines[0].settings == machines[1].settings
    assert (machines[0].settings.session_ttl_entries, machines[0].settings.max_sessions) == (3, 2)  # type: ignore[union-attr]
    restored = KVStateMachine()
    restored.restore(machines[0].snapshot())
    assert restored.settings == machines[0].settings
    assert restored.fingerprint() == machines[0].fingerprint()
    # A later change through the log takes effect everywhere alike.
    change = Entry(2, len(log) + 1, encode_command(SetSettings(50, 5, 100, only_if_unset=False)))
    for sm in (*machines, restored):
        sm.apply(change)
        assert (sm.settings.session_ttl_entries, sm.settings.max_sessions) == (50, 5)  # type: ignore[union-attr]


async def test_the_first_leader_writes_its_settings_and_a_disagreeing_node_follows_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = _LocalCluster(tmp_path, session_ttl_entries=500, max_sessions=40)
    caplog.set_level(logging.WARNING)
    try:
        for node_id in ("n1", "n2", "n3"):
            await cluster.start(node_id)
        leader = await cluster.leader()
        status, _, _ = await cluster.call(leader, "PUT", "/v1/kv/k", b"v")
        assert status == 200
        runtimes = [node.runtime for node in cluster.nodes.values()]
        await _eventually(lambda: all(r.sm.settings is not None for r in runtimes))
        for runtime in runtimes:
            settings = runtime.sm.settings
            assert (settings.session_ttl_entries, settings.max_sessions) == (500, 40)  # type: ignore[union-attr]
        # A node restarted with another file logs the difference and follows the log.
        follower = next(n for n in cluster.nodes if n != leader)
        await cluster.stop(follower)
        cluster.config = dataclasses.replace(
            cluster.config,
            tuning=dataclasses.replace(cluster.config.tuning, session_ttl_entries=9),
        )
        await cluster.start(follower)
        restarted = cluster.nodes[follower].runtime
        await _eventually(lambda: restarted.sm.settings is not None)
        assert restarted.sm.settings.session_ttl_entries == 500  # type: ignore[union-attr]
        await _eventually(lambda: "session_ttl_entries" in caplog.text)
        assert "follows the log" in caplog.text
    finally:
        await cluster.close()
