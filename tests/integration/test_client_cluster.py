"""The Python client (`AsyncKV` and `KV`) against a real three-node cluster.

Every client method in both flavours, exactly-once increments across a kill -9 of
the leader, `update` from 20 concurrent writers, and a dead endpoint listed first.
Clusters come from the `cluster` fixture (conftest.py); every process is stopped by
PID at teardown. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from kvstore.client import (
    KV,
    AsyncKV,
    ClusterUnavailable,
    KeyValue,
    NotFound,
    OutcomeUnknown,
    VersionMismatch,
)
from tests.integration.harness import Cluster, free_ports, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("integration"),
    pytest.mark.timeout(60),
]


def increment(old: bytes | None) -> bytes:
    return str(int(old or b"0") + 1).encode()


async def async_wait_for(
    condition: Callable[[], Awaitable[object]], timeout: float, what: str
) -> object:
    """Poll an async condition until it is truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await condition()
            if result:
                return result
        except (NotFound, ClusterUnavailable) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what} ({last!r})")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ every method


async def test_async_client_every_method(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    async with AsyncKV(cluster.endpoints(), timeout=10.0) as kv:
        # put / get (linearizable)
        result = await kv.put("greeting", b"hello")
        assert result.version == 1 and result.revision >= 1
        item = await kv.get("greeting")
        assert item == KeyValue("greeting", b"hello", 1, result.revision, result.revision)
        assert kv.leader_url == cluster.url(leader)

        # get stale: every node eventually serves the value from its own state
        for node_id in cluster.nodes:
            async with AsyncKV([cluster.url(node_id)], timeout=5.0) as one:

                async def stale_read(one: AsyncKV = one) -> bool:
                    return (await one.get("greeting", "stale")).value == b"hello"

                await async_wait_for(stale_read, 10.0, f"a stale read on {node_id}")

        # cas: matching version succeeds, a stale one raises VersionMismatch
        second = await kv.cas("greeting", "hi", prev_version=1)
        assert second.version == 2 and second.revision > result.revision
        with pytest.raises(VersionMismatch) as mismatch:
            await kv.cas("greeting", b"nope", prev_version=1)
        assert mismatch.value.current_version == 2
        with pytest.raises(VersionMismatch):
            await kv.cas("greeting", b"nope", prev_version=0)  # create-only on an existing key
        assert (await kv.get("greeting")).value == b"hi"

        # update: creates a missing key, then read-modify-writes it (sync and async fn)
        assert (await kv.update("counter", increment)).version == 1

        async def async_increment(old: bytes | None) -> bytes:
            return increment(old)

        assert (await kv.update("counter", async_increment)).version == 2
        assert (await kv.get("counter")).value == b"2"

        # delete
        revision = await kv.delete("greeting")
        assert revision > second.revision
        with pytest.raises(NotFound):
            await kv.get("greeting")
        with pytest.raises(NotFound):
            await kv.delete("greeting")
        with pytest.raises(NotFound):
            await kv.get("never-written", "stale")

        # status of any node, and of a pinned one
        status = await kv.status()
        assert status.id in cluster.nodes and status.leader == leader
        for node_id in cluster.nodes:
            pinned = await kv.status(cluster.url(node_id))
            assert pinned.id == node_id and pinned.term >= 1

        # cluster_status: one reachable row per node, exactly one leader
        rows = await kv.cluster_status()
        assert sorted(r.node_id for r in rows) == sorted(cluster.nodes)
        assert all(r.reachable for r in rows)
        assert [r.node_id for r in rows if r.status and r.status.role == "leader"] == [leader]


def test_blocking_client_every_method(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    with KV(cluster.endpoints(), timeout=10.0) as kv:
        result = kv.put("greeting", b"hello")
        assert result.version == 1
        revision, version = result
        assert kv.get("greeting") == KeyValue("greeting", b"hello", 1, revision, revision)
        assert kv.get("greeting", consistency="linearizable").version == version

        for node_id in cluster.nodes:
            with KV([cluster.url(node_id)], timeout=5.0) as one:
                wait_until(
                    lambda one=one: one.get("greeting", "stale").value == b"hello",
                    10.0,
                    f"a stale read on {node_id}",
                )

        assert kv.cas("greeting", b"hi", 1).version == 2
        with pytest.raises(VersionMismatch) as mismatch:
            kv.cas("greeting", b"nope", 1)
        assert mismatch.value.current_version == 2

        assert kv.update("counter", increment).version == 1
        assert kv.update("counter", increment).version == 2
        assert kv.get("counter").value == b"2"

        assert kv.delete("greeting", prev_version=2) > revision
        with pytest.raises(NotFound):
            kv.get("greeting")
        with pytest.raises(NotFound):
            kv.delete("greeting")

        status = kv.status()
        assert status.leader == leader
        assert kv.status(cluster.url(leader)).role == "leader"
        rows = kv.cluster_status()
        assert sorted(r.node_id for r in rows) == sorted(cluster.nodes)
        assert all(r.reachable for r in rows)
    with pytest.raises(Exception, match="closed"):
        kv.get("counter")


# ------------------------------------------------------ exactly-once across kill -9


@dataclass
class Tally:
    acked: int = 0
    unknown: int = 0
    failed: int = 0
    versions: list[int] = field(default_factory=list)


async def test_increments_across_leader_kill9_apply_exactly_once(cluster: Cluster) -> None:
    """Concurrent `update` increments while the leader is killed with SIGKILL.

    Writes retried after the crash keep their sequence number, so none applies
    twice: the final count is at least the acknowledged increments (none lost) and
    at most acknowledged + OutcomeUnknown (no duplicates). Each acknowledged
    increment wrote its own version of the key.
    """
    old_leader = cluster.wait_leader()
    tally = Tally()
    stop = asyncio.Event()
    clients = [AsyncKV(cluster.endpoints(), timeout=8.0) for _ in range(4)]

    async def worker(kv: AsyncKV) -> None:
        while not stop.is_set():
            try:
                result = await kv.update("counter", increment, max_attempts=64)
            except OutcomeUnknown:
                tally.unknown += 1
            except (ClusterUnavailable, VersionMismatch):
                tally.failed += 1  # definitely not applied
            else:
                tally.acked += 1
                tally.versions.append(result.version)

    async def acked_at_least(count: int) -> bool:
        return tally.acked >= count

    try:
        tasks = [asyncio.create_task(worker(clients[i % len(clients)])) for i in range(8)]
        await async_wait_for(lambda: acked_at_least(30), 10.0, "30 increments before the kill")
        await asyncio.to_thread(cluster.kill9, old_leader)
        acked_at_kill = tally.acked
        await async_wait_for(
            lambda: acked_at_least(acked_at_kill + 30), 15.0, "30 increments after the kill"
        )
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20.0)

        new_leader = await asyncio.to_thread(cluster.wait_leader, 10.0)
        assert new_leader != old_leader
        final = int((await clients[0].get("counter")).value)
    finally:
        stop.set()
        for kv in clients:
            await kv.close()

    assert tally.acked <= final <= tally.acked + tally.unknown, tally
    assert len(set(tally.versions)) == len(tally.versions), "two increments wrote one version"

    # The killed node comes back and converges to the same count: no replica applied twice.
    cluster.start(old_leader)
    async with AsyncKV([cluster.url(old_leader)], timeout=5.0) as kv:

        async def caught_up() -> bool:
            return (await kv.get("counter", "stale")).value == str(final).encode()

        await async_wait_for(caught_up, 15.0, f"{old_leader} to catch up to {final}")


# ---------------------------------------------------- 20 concurrent writers


async def test_update_from_20_concurrent_writers_loses_nothing(cluster: Cluster) -> None:
    writers, each = 20, 5
    clients = [AsyncKV(cluster.endpoints(), timeout=15.0) for _ in range(writers)]

    async def writer(kv: AsyncKV) -> list[int]:
        return [(await kv.update("hits", increment, max_attempts=200)).version for _ in range(each)]

    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(writer(kv) for kv in clients)), timeout=18.0
        )
        final = await clients[0].get("hits")
    finally:
        for kv in clients:
            await kv.close()
    versions = sorted(v for vs in results for v in vs)
    assert versions == list(range(1, writers * each + 1))
    assert final.value == str(writers * each).encode() and final.version == writers * each


def test_blocking_update_from_20_threads_loses_nothing(cluster: Cluster) -> None:
    writers, each = 20, 3
    errors: list[BaseException] = []
    with KV(cluster.endpoints(), timeout=15.0) as kv:

        def writer() -> None:
            try:
                for _ in range(each):
                    kv.update("hits", increment, max_attempts=200)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer) for _ in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=18.0)
        assert not any(t.is_alive() for t in threads), "a writer thread is stuck"
        assert errors == []
        assert kv.get("hits").value == str(writers * each).encode()


# ------------------------------------------------------------ dead endpoint


async def test_async_client_moves_past_a_dead_endpoint(cluster: Cluster) -> None:
    (dead_port,) = free_ports(1)
    dead = f"http://127.0.0.1:{dead_port}"
    async with AsyncKV([dead, *cluster.endpoints().split(",")], timeout=10.0) as kv:
        assert kv.endpoints[0] == dead
        assert (await kv.put("k", b"v")).version == 1
        assert (await kv.get("k")).value == b"v"
        assert kv.leader_url in cluster.endpoints().split(",")
    async with AsyncKV([dead], timeout=2.0) as only_dead:
        started = time.monotonic()
        with pytest.raises(ClusterUnavailable):
            await only_dead.get("k")
        with pytest.raises(ClusterUnavailable):
            await only_dead.put("k", b"never")  # refused connections: nothing was sent
        assert time.monotonic() - started < 6.0


def test_blocking_client_moves_past_a_dead_endpoint(cluster: Cluster) -> None:
    (dead_port,) = free_ports(1)
    dead = f"http://127.0.0.1:{dead_port}"
    follower = next(n for n in cluster.nodes if n != cluster.wait_leader())
    with KV(f"{dead},{cluster.url(follower)}", timeout=10.0) as kv:
        assert kv.put("k", "v").version == 1
        assert kv.get("k").value == b"v"
        assert kv.status().leader is not None
