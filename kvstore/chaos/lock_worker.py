"""One lock client of `kv chaos --workload lock`, as a process of its own.

A process, not a task of the runner, so the nemesis can stop it for real (SIGSTOP): a
holder paused past its lease, keep-alives and all, is the scenario fencing exists for.

Each round: grant a lease of a short TTL and keep it alive in the background, queue for
the lock, wait until the lock is held, make a few fenced writes of "<worker> <token>
<seq>" to the shared key, release the lock and revoke the lease. The client does NOT
look at whether its lease is still alive before a write: it is the naive holder that
wakes up from a pause and writes as if nothing happened, and the store's fence check is
what must stop it. Every request is one JSON line (kvstore.chaos.lock_checker.LockEvent)
in the output file, written and flushed as soon as it is answered; times are the
machine's monotonic clock minus the run's start, so all workers and the runner share
one clock. SIGTERM ends the worker after its current round's release.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from kvstore.chaos.lock_checker import write_value
from kvstore.client import AsyncKV, ClusterUnavailable, KVError
from kvstore.client import leases as lease_api
from kvstore.client.errors import Fenced, InvalidRequest, LeaseNotFound
from kvstore.client.fence import Fence
from kvstore.client.tls import ClientTLS

ACQUIRE_TIMEOUT_S = 15.0
POLL_WAIT_S = 0.8


def outcome_of(exc: KVError) -> str:
    """The checker's outcome of a failed request (kvstore.chaos.lock_checker)."""
    if isinstance(exc, LeaseNotFound) or exc.code in ("lease_not_found", "not_queued"):
        return "gone"
    if isinstance(exc, Fenced):
        return "fenced"
    if isinstance(exc, ClusterUnavailable | InvalidRequest):
        return "fail"  # nothing was written (the client's contract)
    return "unknown"  # OutcomeUnknown and anything unforeseen: maybe applied


class Recorder:
    """Appends one JSON line per answered request, flushed at once."""

    def __init__(self, out: IO[str], worker: int, t0: float) -> None:
        self.out = out
        self.worker = worker
        self.t0 = t0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, kind: str, call: float, outcome: str, **fields: Any) -> None:
        event = {"worker": self.worker, "kind": kind, "call": round(call, 6)}
        event.update(ret=round(self.now(), 6), outcome=outcome, **fields)
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()


class LockWorker:
    def __init__(self, kv: AsyncKV, record: Recorder, args: argparse.Namespace) -> None:
        self.kv = kv
        self.record = record
        self.ttl: int = args.ttl
        self.key: str = args.key
        self.lock: str = args.lock
        self.path = f"/v1/locks/{quote(args.lock, safe='')}"
        self.rng = random.Random(f"{args.seed}-lock-{args.worker}")
        self.stop = asyncio.Event()
        self.seq = 0
        self.runner: int = args.runner

    async def run(self) -> None:
        """Rounds until SIGTERM, or until the runner is gone (killed without a chance to
        stop its clients: an orphan would otherwise knock on dead ports for ever)."""
        while not self.stop.is_set() and os.getppid() == self.runner:
            await self.round()
            await self._pause(self.rng.uniform(0.05, 0.3))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def round(self) -> None:
        call = self.record.now()
        try:
            lease = await lease_api.grant(self.kv, self.ttl, timeout=self.ttl)
        except KVError as exc:
            self.record("grant", call, outcome_of(exc), ttl=self.ttl)
            return await self._pause(0.2)
        self.record("grant", call, "ok", lease=lease, ttl=self.ttl)
        keeper = asyncio.create_task(self.keep_alive(lease))
        token = 0
        try:
            token = await self.enqueue(lease)
            if token and await self.wait_held(lease, token):
                await self.critical_section(lease, token)
        finally:
            keeper.cancel()
            if token:
                await self.call("release", lease, "DELETE", f"{self.path}?token={token}", token)
            await self.call("revoke", lease, "DELETE", f"{lease_api.LEASES}/{lease}", token)

    async def call(self, kind: str, lease: int, method: str, path: str, token: int) -> None:
        call = self.record.now()
        try:
            await self.kv.request(method, path, write=True, timeout=self.ttl)
        except KVError as exc:
            self.record(kind, call, outcome_of(exc), lease=lease, token=token)
        else:
            self.record(kind, call, "ok", lease=lease, token=token)

    async def keep_alive(self, lease: int) -> None:
        """A keep-alive every third of the TTL until the cluster says the lease is gone."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            call = self.record.now()
            try:
                await lease_api.keep_alive(self.kv, lease, timeout=self.ttl / 2)
            except KVError as exc:
                self.record("keepalive", call, outcome_of(exc), lease=lease)
                if isinstance(exc, LeaseNotFound):
                    return
            else:
                self.record("keepalive", call, "ok", lease=lease)

    async def enqueue(self, lease: int) -> int:
        call = self.record.now()
        try:
            answer = await self.kv.request(
                "POST", f"{self.path}?lease={lease}", write=True, timeout=self.ttl
            )
        except KVError as exc:
            self.record("enqueue", call, outcome_of(exc), lease=lease)
            return 0
        token = int(answer.json()["token"])
        self.record("enqueue", call, "ok", lease=lease, token=token)
        return token

    async def wait_held(self, lease: int, token: int) -> bool:
        deadline = self.record.now() + ACQUIRE_TIMEOUT_S
        while not self.stop.is_set() and self.record.now() < deadline:
            call = self.record.now()
            path = f"{self.path}?token={token}&wait={POLL_WAIT_S}"
            try:
                body = (await self.kv.request("GET", path, timeout=POLL_WAIT_S + 1.0)).json()
            except KVError:
                await self._pause(0.1)
                continue
            held, queued = bool(body.get("held")), bool(body.get("queued"))
            if held or not queued:
                self.record("poll", call, "ok", lease=lease, token=token, held=held, queued=queued)
                return held
        return False

    async def critical_section(self, lease: int, token: int) -> None:
        """A few acknowledged fenced writes; one that timed out or failed is made again
        (as a new write), so a holder paused in the middle of a request writes once more
        after it wakes up, with its old token."""
        fence = Fence(self.lock, token)
        wanted = self.rng.randint(3, 6)
        acknowledged = attempts = 0
        while acknowledged < wanted and attempts < wanted + 5:
            attempts += 1
            self.seq += 1
            value = write_value(self.record.worker, token, self.seq)
            call = self.record.now()
            fields: dict[str, Any] = {"lease": lease, "token": token, "seq": self.seq}
            try:
                put = await self.kv.put(self.key, value, fence=fence)
            except KVError as exc:
                self.record("write", call, outcome_of(exc), value=value, **fields)
                if isinstance(exc, Fenced):
                    return  # the lock was lost: take it again
            else:
                self.record("write", call, "ok", value=value, revision=put.revision, **fields)
                acknowledged += 1
            if self.stop.is_set():
                return
            await asyncio.sleep(self.rng.uniform(0.05, 0.25))


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    urls = args.urls.split(",")
    with Path(args.out).open("a", encoding="utf-8") as out:
        tls = ClientTLS(ca_file=args.cacert) if args.cacert else None
        async with AsyncKV(urls, timeout=args.timeout, tls=tls) as kv:
            worker = LockWorker(kv, Recorder(out, args.worker, args.t0), args)
            loop.add_signal_handler(signal.SIGTERM, worker.stop.set)
            await worker.run()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", required=True, help="client URLs, comma-separated")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--t0", type=float, required=True, help="the run's monotonic start")
    parser.add_argument("--ttl", type=int, required=True)
    parser.add_argument("--lock", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True, help="per call, retries included")
    parser.add_argument("--out", required=True)
    parser.add_argument("--runner", type=int, required=True, help="the parent's PID")
    parser.add_argument("--cacert", default=None, help="the CA of https nodes")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
