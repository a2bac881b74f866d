"""`kv chaos --workload transfer`: money moves between accounts; the total never changes.

Beside the single-key workload (whose history and linearizability check are untouched),
clients run transfers through the Python client: read every account with ONE range
read (one revision), pick two, and send one transaction that moves an amount if both
accounts' mod_revisions are still the ones read. An auditor keeps reading all accounts
with range reads, linearizable and stale ones on every node.

What must hold, whatever the faults (the checker, `check_transfers`):
- every range read, at whatever revision and on whatever node, sums to the total: a
  transaction is applied entirely or not at all, and a read shows one revision;
- after recovery, every account exists and they sum to the total;
- some transfers were applied (otherwise the run proves nothing).
An unknown outcome (timeout) is fine for the sum: the transfer applied fully or not.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from kvstore.client import AsyncKV, ClusterUnavailable, Cmp, KVError, Op, OutcomeUnknown
from kvstore.client.tls import ClientTLS
from kvstore.client.txn import RangePage

PREFIX = "acct/"
ACCOUNTS = 8
START_BALANCE = 1000
TOTAL = ACCOUNTS * START_BALANCE


@dataclass
class TransferStats:
    applied: int = 0
    conflicts: int = 0
    unknown: int = 0
    unavailable: int = 0
    audits: int = 0
    bad_sums: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def account_sum(page: RangePage) -> int:
    return sum(int(item.value) for item in page.kvs)


class Transfers:
    """The transfer clients and the auditor; `start`, `stop`, then `check_transfers`."""

    def __init__(
        self,
        urls: list[str],
        seed: int,
        op_timeout_s: float,
        clients: int = 3,
        tls: ClientTLS | None = None,
    ):
        self.urls = urls
        self.tls = tls
        self.seed = seed
        self.timeout = op_timeout_s * 2
        self.clients = clients
        self.stats = TransferStats()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def setup(self) -> None:
        """Create the accounts in one transaction (only if none exists yet)."""
        async with AsyncKV(self.urls, timeout=self.timeout, tls=self.tls) as kv:
            puts = [Op.put(f"{PREFIX}{i}", str(START_BALANCE)) for i in range(ACCOUNTS)]
            await kv.txn().if_(Cmp.missing(f"{PREFIX}0")).then(*puts).commit()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.clients)]
        self._tasks += [asyncio.create_task(self._auditor(url)) for url in self.urls]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _audit(self, page: RangePage, where: str) -> None:
        self.stats.audits += 1
        if len(page.kvs) != ACCOUNTS or account_sum(page) != TOTAL:
            accounts = {item.key: item.value.decode() for item in page.kvs}
            bad = {"where": where, "revision": page.revision, "accounts": accounts}
            self.stats.bad_sums.append(bad)

    async def _worker(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-transfer-{index}")
        stats = self.stats
        async with AsyncKV(self.urls, timeout=self.timeout, tls=self.tls) as kv:
            while not self._stop.is_set():
                try:
                    page = await kv.range_page(prefix=PREFIX)
                    self._audit(page, "transfer read")
                    src, dst = rng.sample(page.kvs, 2)
                    amount = rng.randint(0, int(src.value))
                    answer = await (
                        kv.txn()
                        .if_(
                            Cmp.mod_revision(src.key) == src.mod_revision,
                            Cmp.mod_revision(dst.key) == dst.mod_revision,
                        )
                        .then(
                            Op.put(src.key, str(int(src.value) - amount)),
                            Op.put(dst.key, str(int(dst.value) + amount)),
                        )
                        .commit()
                    )
                except OutcomeUnknown:
                    stats.unknown += 1
                except ClusterUnavailable:
                    stats.unavailable += 1
                except (KVError, ValueError) as exc:
                    stats.errors.append(f"transfer: {type(exc).__name__}: {exc}")
                else:
                    if answer.succeeded:
                        stats.applied += 1
                    else:
                        stats.conflicts += 1

    async def _auditor(self, url: str) -> None:
        """Stale range reads on one node (any applied prefix of the log must balance)
        and, every few rounds, a linearizable one."""
        async with AsyncKV([url], timeout=self.timeout, tls=self.tls) as kv:
            rounds = 0
            while not self._stop.is_set():
                rounds += 1
                consistency = "linearizable" if rounds % 4 == 0 else "stale"
                try:
                    page = await kv.range_page(prefix=PREFIX, consistency=consistency)
                except KVError:
                    await asyncio.sleep(0.1)  # this node is down or cut off: try later
                    continue
                if page.kvs:  # a node that has not applied the setup yet holds none
                    self._audit(page, f"{consistency} read on {url}")
                await asyncio.sleep(0.05)


async def final_page(urls: list[str], timeout: float, tls: ClientTLS | None) -> RangePage:
    async with AsyncKV(urls, timeout=timeout, tls=tls) as kv:
        return await kv.range_page(prefix=PREFIX)


def check_transfers(stats: TransferStats, final: RangePage | None) -> list[str]:
    """The invariants of the module docstring, as one problem per violation."""
    problems = list(stats.errors)
    for bad in stats.bad_sums[:5]:
        problems.append(
            f"accounts do not sum to {TOTAL} in a {bad['where']} at revision "
            f"{bad['revision']}: {bad['accounts']}"
        )
    if final is None:
        problems.append("no final read of the accounts")
    elif len(final.kvs) != ACCOUNTS or account_sum(final) != TOTAL:
        problems.append(f"final accounts sum to {account_sum(final)}, not {TOTAL}: {final}")
    if stats.applied == 0:
        problems.append("no transfer was applied: the run proves nothing")
    return problems


def summary(stats: TransferStats, final: RangePage | None, problems: list[str]) -> dict[str, Any]:
    return {
        "applied": stats.applied,
        "conflicts": stats.conflicts,
        "unknown": stats.unknown,
        "unavailable": stats.unavailable,
        "audits": stats.audits,
        "final_revision": None if final is None else final.revision,
        "final_sum": None if final is None else account_sum(final),
        "expected_sum": TOTAL,
        "problems": problems,
    }
