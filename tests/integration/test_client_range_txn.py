"""The client's range reads, transactions and prev_revision against a real cluster, and
a transfer workload that keeps the sum of all accounts constant across kill -9 of the
leader (every transfer is one transaction; reads are one range at one revision)."""

from __future__ import annotations

import asyncio
import random

import pytest

from kvstore.client import (
    KV,
    AsyncKV,
    ClusterUnavailable,
    Cmp,
    KeyValue,
    NotFound,
    Op,
    OutcomeUnknown,
    PutResult,
    RevisionMismatch,
)
from tests.integration.harness import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def test_async_client_ranges_transactions_and_prev_revision(cluster: Cluster) -> None:
    async with AsyncKV(cluster.endpoints()) as kv:
        for i in range(7):
            await kv.put(f"cfg/{i}", f"v{i}")
        await kv.put("other", b"x")
        pages = kv.get_prefix("cfg/", page_size=2)
        got = [item async for item in pages]
        assert [item.key for item in got] == [f"cfg/{i}" for i in range(7)]
        assert got[3].value == b"v3" and got[3].create_revision == 4
        assert pages.revision == 8
        assert [i.key async for i in kv.range("cfg/5", "other", keys_only=True)] == [
            "cfg/5",
            "cfg/6",
        ]
        newest = [i.key async for i in kv.get_prefix("cfg/", newest_first=True, limit=2)]
        assert newest == ["cfg/6", "cfg/5"]
        assert len([i async for i in kv.range()]) == 8
        page = await kv.range_page(prefix="cfg/", count_only=True)
        assert page.count == 7 and page.kvs == ()

        assert await kv.get("missing", default=None) is None
        with pytest.raises(LookupError):  # NotFound is a LookupError
            await kv.get("missing")

        first = await kv.put("lock", b"a", prev_revision=0)
        await kv.delete("lock")
        await kv.put("lock", b"b")
        with pytest.raises(RevisionMismatch) as info:
            await kv.put("lock", b"c", prev_revision=first.revision)
        assert info.value.current_revision == first.revision + 2

        answer = await (
            kv.txn()
            .if_(Cmp.value("lock") == b"b", Cmp.missing("orders/1"), Cmp.version("lock") > 0)
            .then(Op.put("orders/1", "apple"), Op.delete("cfg/0"), Op.range(prefix="orders/"))
            .else_(Op.get("lock"))
            .commit()
        )
        assert answer.succeeded and answer.results[0] == PutResult(answer.revision, 1)
        assert answer.results[2].kvs[0].value == b"apple"  # type: ignore[union-attr]
        again = await kv.txn().if_(Cmp.missing("orders/1")).else_(Op.get("lock")).commit()
        assert not again.succeeded and again.revision == answer.revision
        old = await kv.range_page(prefix="cfg/", revision=7)  # before the txn deleted cfg/0
        assert old.count == 7 and old.revision == 7
        assert isinstance(ClusterUnavailable("x"), ConnectionError)
        assert isinstance(OutcomeUnknown("x"), TimeoutError)
        assert issubclass(NotFound, LookupError)


def test_blocking_client_ranges_and_transactions(cluster: Cluster) -> None:
    with KV(cluster.endpoints()) as kv:
        for i in range(5):
            kv.put(f"s/{i}", str(i))
        items = list(kv.get_prefix("s/", page_size=2))
        assert [item.value for item in items] == [b"0", b"1", b"2", b"3", b"4"]
        assert isinstance(items[0], KeyValue)
        answer = kv.txn().if_(Cmp.exists("s/1")).then(Op.delete_range(prefix="s/")).commit()
        assert answer.succeeded and answer.results[0].deleted == 5  # type: ignore[union-attr]
        assert list(kv.get_prefix("s/")) == []
        assert kv.get("s/1", default="gone") == "gone"


ACCOUNTS = 6
START_BALANCE = 100


async def _transfer(kv: AsyncKV, rng: random.Random) -> bool:
    """Move a random amount between two accounts read at one revision; True if applied.
    The compares on mod_revision make it fail (and be retried) if either moved since."""
    src, dst = rng.sample(range(ACCOUNTS), 2)
    page = await kv.range_page(prefix="acct/")
    accounts = {item.key: item for item in page.kvs}
    a, b = accounts[f"acct/{src}"], accounts[f"acct/{dst}"]
    amount = rng.randint(0, int(a.value))
    answer = await (
        kv.txn()
        .if_(Cmp.mod_revision(a.key) == a.mod_revision, Cmp.mod_revision(b.key) == b.mod_revision)
        .then(Op.put(a.key, str(int(a.value) - amount)), Op.put(b.key, str(int(b.value) + amount)))
        .commit()
    )
    return answer.succeeded


async def test_transfers_keep_the_sum_constant_across_leader_kill9(cluster: Cluster) -> None:
    async with AsyncKV(cluster.endpoints(), timeout=10.0) as kv:
        setup = kv.txn().then(*(Op.put(f"acct/{i}", str(START_BALANCE)) for i in range(ACCOUNTS)))
        assert (await setup.commit()).succeeded
    tally = {"applied": 0, "conflicts": 0, "unknown": 0, "unavailable": 0}
    stop = asyncio.Event()
    sums: list[int] = []

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        async with AsyncKV(cluster.endpoints(), timeout=10.0) as kv:
            while not stop.is_set():
                try:
                    applied = await _transfer(kv, rng)
                    tally["applied" if applied else "conflicts"] += 1
                except OutcomeUnknown:
                    tally["unknown"] += 1
                except ClusterUnavailable:
                    tally["unavailable"] += 1

    async def auditor() -> None:
        async with AsyncKV(cluster.endpoints(), timeout=10.0) as kv:
            while not stop.is_set():
                try:
                    page = await kv.range_page(prefix="acct/", consistency="stale")
                except ClusterUnavailable:
                    continue
                sums.append(sum(int(item.value) for item in page.kvs))
                await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(worker(seed)) for seed in range(6)]
    tasks.append(asyncio.create_task(auditor()))
    try:
        for _ in range(2):
            await asyncio.sleep(1.5)
            leader = await asyncio.to_thread(cluster.wait_leader, 15.0)
            await asyncio.to_thread(cluster.kill9, leader)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(cluster.start, leader)
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=40.0)
    async with AsyncKV(cluster.endpoints(), timeout=10.0) as kv:
        final = await kv.range_page(prefix="acct/")
    assert len(final.kvs) == ACCOUNTS
    assert sum(int(item.value) for item in final.kvs) == ACCOUNTS * START_BALANCE, final
    assert sums and set(sums) == {ACCOUNTS * START_BALANCE}, sorted(set(sums))
    assert tally["applied"] > 20, tally
