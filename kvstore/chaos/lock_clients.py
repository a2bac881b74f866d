"""`kv chaos --workload lock`: lock clients as processes, the holder-pause fault, the verdict.

Beside the usual single-key clients (whose linearizability check is untouched), a few
lock clients (kvstore.chaos.lock_worker, one process each) take one lock with a lease
of a short TTL, make fenced writes to one shared key and release. The nemesis gets one
more fault kind on a track of its own, `pause-holder`: it asks the cluster which lease
holds the lock, finds the client process that was granted that lease, and stops it
(SIGSTOP) for longer than the TTL, then resumes it. The lease expires meanwhile,
another client takes the lock and writes, and the resumed one writes with its old
token: the store must refuse that write (409 fenced).

After recovery the store's history of the shared key is read back from every node
(kept in the run directory as locks/applied.jsonl), and kvstore.chaos.lock_checker
judges it with what the clients recorded (locks/worker-N.jsonl). Every client
process is stopped by its PID, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import aiohttp

from kvstore.chaos.cluster import LocalCluster
from kvstore.chaos.lock_checker import LockEvent, check_locks
from kvstore.chaos.nemesis import END_MARGIN_S, ClientFault, FaultWindow, PlannedFault
from kvstore.chaos.watchers import read_history

LOCK_NAME = "chaos/lock"
REGISTER_KEY = "chaos/lock-register"
"""The shared key every holder appends its fenced writes to (one put each)."""
LOCK_TTL = 2
LOCK_WORKERS = 4
HOLDER_PAUSE = "pause-holder"
HOLDER_SEARCH_S = 3.0


def holder_schedule(seed: int, duration: float, ttl: int = LOCK_TTL) -> list[PlannedFault]:
    """Holder pauses on their own track: each lasts 1.5 to 3.5 s past the TTL, with 3 to 6 s
    between them (time for the lock to change hands), all ending before the run does."""
    rng = random.Random(f"{seed}-holder-pauses")
    plan, at = [], 2.0
    while True:
        length = rng.uniform(ttl + 1.5, ttl + 3.5)
        if at + length > duration - END_MARGIN_S:
            return plan
        plan.append(
            PlannedFault(
                round(at, 3),
                round(length, 3),
                HOLDER_PAUSE,
                "past-ttl",
                rng.randrange(1 << 30),
                "clients",
            )
        )
        at += length + rng.uniform(3.0, 6.0)


class LockClients:
    """The lock client processes of one run: `start`, `fault_handlers`, `stop`, `judge`."""

    def __init__(
        self,
        urls: list[str],
        run_dir: Path,
        *,
        seed: int,
        t0: float,
        op_timeout_s: float,
        workers: int = LOCK_WORKERS,
        ttl: int = LOCK_TTL,
        ca_file: str | None = None,
    ) -> None:
        self.urls = urls
        self.ca_file = ca_file
        """The run's CA for https nodes, handed to every client process."""
        self.dir = run_dir / "locks"
        self.seed = seed
        self.t0 = t0
        self.timeout = op_timeout_s * 2
        self.workers = workers
        self.ttl = ttl
        self.procs: list[subprocess.Popen[bytes]] = []
        self.paused: set[int] = set()
        self.stuck: set[int] = set()
        """Clients that did not end by themselves when asked to (killed at the deadline)."""
        self._logs: list[IO[bytes]] = []

    def events_path(self, worker: int) -> Path:
        return self.dir / f"worker-{worker}.jsonl"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for worker in range(self.workers):
            cmd = [sys.executable, "-m", "kvstore.chaos.lock_worker", "--urls", ",".join(self.urls)]
            cmd += ["--worker", str(worker), "--t0", repr(self.t0), "--ttl", str(self.ttl)]
            cmd += ["--lock", LOCK_NAME, "--key", REGISTER_KEY, "--seed", str(self.seed)]
            cmd += ["--timeout", str(self.timeout), "--out", str(self.events_path(worker))]
            cmd += ["--runner", str(os.getpid())]
            if self.ca_file is not None:
                cmd += ["--cacert", self.ca_file]
            log = (self.dir / f"worker-{worker}.log").open("ab")
            self._logs.append(log)
            self.procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

    def fault_handlers(self, cluster: LocalCluster) -> dict[str, ClientFault]:
        async def pause_holder(fault: PlannedFault, window: FaultWindow) -> Any:
            return await self._pause_holder(cluster.session, window)

        return {HOLDER_PAUSE: pause_holder}

    async def _pause_holder(self, session: aiohttp.ClientSession, window: FaultWindow) -> Any:
        """Stop the client that holds the lock AND knows it (it recorded being told so, so
        it is inside its critical section); retried for a few seconds, since the lock
        may be between holders or the cluster unable to say during another fault."""
        deadline = time.monotonic() + HOLDER_SEARCH_S
        found = None
        while found is None and time.monotonic() < deadline:
            found = await self._holder(session)
            if found is None:
                await asyncio.sleep(0.1)
        if found is None:
            window.detail = "no client was found inside its critical section: nothing paused"
            return None
        worker, lease, token = found
        os.kill(self.procs[worker].pid, signal.SIGSTOP)
        self.paused.add(worker)
        window.targets = [f"lock-client-{worker}"]
        window.detail = f"holder of token {token} (lease {lease}, TTL {self.ttl} s) stopped"
        return lambda: self._resume(worker)

    def _resume(self, worker: int) -> None:
        if worker in self.paused:
            self.paused.discard(worker)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.procs[worker].pid, signal.SIGCONT)

    async def _holder(self, session: aiohttp.ClientSession) -> tuple[int, int, int] | None:
        """(worker, lease, token) of the lock's holder, as the first node that answers
        says, if that worker is running and was told it holds."""
        path = f"/v1/locks/{quote(LOCK_NAME, safe='')}"
        holder = None
        for url in self.urls:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(url + path) as resp:
                    if resp.status == 200:
                        holder = (await resp.json()).get("holder")
                        break
        if holder is None:
            return None
        lease, token = holder["lease"], holder["token"]
        for event in self.events():
            told = event.kind == "poll" and event.held and event.lease == lease
            if told and self.procs[event.worker].poll() is None:
                return event.worker, lease, token
        return None

    def events(self) -> list[LockEvent]:
        """Everything the clients recorded so far (a line being written is skipped)."""
        events = []
        for worker in range(len(self.procs)):
            path = self.events_path(worker)
            if not path.exists():
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, TypeError):
                    events.append(LockEvent.from_json(json.loads(line)))
        return events

    async def stop(self, timeout: float = 20.0) -> None:
        """Resume any paused client, SIGTERM (each finishes its round: release, revoke),
        SIGKILL whoever is still there at the deadline; all by PID."""
        for worker in list(self.paused):
            self._resume(worker)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for worker, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.stuck.add(worker)
                proc.kill()
                proc.wait(5.0)
        for log in self._logs:
            log.close()
        self._logs.clear()


async def judge_locks(
    clients: LockClients,
    cluster: LocalCluster,
    windows: list[FaultWindow],
    reasons: list[str],
) -> dict[str, Any]:
    """After recovery and `stop`: the shared key's applied writes, read back from every
    node's history, checked against what the clients saw. Returns the summary's part."""
    applied_by_node = {}
    for node_id in cluster.ids:
        _, changes = await read_history(cluster.session, cluster.client_url(node_id))
        applied_by_node[node_id] = [
            (revision, value.decode("utf-8", "replace"))
            for revision, kind, key, value in changes
            if key == REGISTER_KEY and kind == "put"
        ]
    applied = next(iter(applied_by_node.values()), [])
    lines = (json.dumps({"revision": r, "value": v}) + "\n" for r, v in applied)
    (clients.dir / "applied.jsonl").write_text("".join(lines), encoding="utf-8")
    result = check_locks(clients.events(), applied)
    problems = [
        f"node {node} holds another history of {REGISTER_KEY} than the others"
        for node, writes in applied_by_node.items()
        if writes != applied
    ] + result.problems
    for worker, proc in enumerate(clients.procs):
        if worker in clients.stuck or proc.returncode != 0:
            log = clients.dir / f"worker-{worker}.log"
            how = "did not stop when asked" if worker in clients.stuck else "crashed"
            problems.append(f"lock client {worker} {how} (exit {proc.returncode}; see {log})")
    reasons += [f"lock: {p}" for p in problems]
    pauses = [w for w in windows if w.kind == HOLDER_PAUSE]
    return {
        **result.stats,
        "problems": problems,
        "ttl": clients.ttl,
        "holder_pauses": sum(1 for w in pauses if w.targets),
        "holder_pauses_planned": len(pauses),
    }
