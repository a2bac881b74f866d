"""`kv chaos --workload watch`: watchers under the nemesis, and what they must have seen.

While the usual clients write and the nemesis kills, pauses and partitions, a few
watchers follow every key from revision 1 through the client library (which reconnects
to the next node and resumes from its last revision by itself). The watchers start on
nodes drawn from the seed, so several nodes serve watches, and faults move them.

The verdict compares each watcher's stream with the committed history, read after
recovery from every node's retained history (the run keeps all of it):
- every node holds the same history (else the replicas disagree: not a watch problem,
  but nothing could be judged);
- each stream is exactly a prefix of that history: every revision once, in order, no
  gap (the watch covers every key, so revisions are consecutive), each with the same
  changes;
- each stream reached the end of the history once the cluster recovered;
- every acknowledged write is in the history at its revision, with its value;
- replaying the history gives the state every node holds at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kvstore.chaos.history import Operation
from kvstore.client import AsyncKV, ClusterUnavailable, WatchEvent
from kvstore.client.errors import KVError
from kvstore.client.tls import ClientTLS

Change = tuple[int, str, str, bytes]
"""(revision, "put" or "delete", key, value): one event as both sides know it."""

WATCH_TUNING: dict[str, int] = {"history_revisions": 1_000_000, "watch_progress_ms": 500}
"""Keep the whole run's history (so it can be read back and no watcher is compacted
away) and let idle watchers hear progress often."""


@dataclass
class Watchers:
    """One library watch per node, from revision 1, each recording what it received (each
    starts on a node drawn from the seed and moves on when that node fails)."""

    endpoints: Sequence[str]
    seed: int
    tls: ClientTLS | None = None
    streams: list[list[Change]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reconnects: list[int] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        for i in range(len(self.endpoints)):
            self.streams.append([])
            self.reconnects.append(0)
            self._tasks.append(asyncio.create_task(self._follow(i), name=f"watcher-{i}"))

    async def _follow(self, i: int) -> None:
        rng = random.Random(f"{self.seed}-watch-{i}")  # which node each watcher starts on
        async with AsyncKV(self.endpoints, rng=rng, tls=self.tls) as kv:
            watch = kv.watch(prefix="", start_revision=1, idle_timeout=2.0, give_up_after=600)
            try:
                async for event in watch:
                    assert type(event) is WatchEvent
                    self.streams[i].append(_change(event))
                    self.reconnects[i] = watch.reconnects
            except (KVError, ClusterUnavailable) as exc:
                self.errors.append(f"watcher {i}: {exc}")
            finally:
                self.reconnects[i] = watch.reconnects
                await watch.aclose()

    async def caught_up(self, revision: int, timeout: float) -> bool:
        """Until every watcher has received `revision`; False at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if all(s and s[-1][0] >= revision for s in self.streams):
                return True
            if any(t.done() for t in self._tasks):
                return False
            await asyncio.sleep(0.1)
        return False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _change(event: WatchEvent) -> Change:
    return (event.revision, event.type, event.key, event.value)


async def read_history(session: aiohttp.ClientSession, url: str) -> tuple[int, list[Change]]:
    """The node's whole retained history by long polls that answer at once; returns
    the node's revision and its changes in order."""
    changes: list[Change] = []
    start, revision = 1, -1
    while True:
        query = {"prefix": "", "start_revision": str(start), "wait": "0"}
        async with session.get(url + "/v1/watch", params=query) as resp:
            body: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{url} answered {resp.status} to a history read: {body}")
        revision = int(body["revision"])
        for e in body["events"]:
            value = base64.b64decode(e["value"])
            changes.append((int(e["mod_revision"]), e["type"], e["key"], value))
        start = int(body["next_revision"])
        if start > revision:
            return revision, changes


def check_watchers(
    histories: dict[str, list[Change]],
    streams: list[list[Change]],
    ops: list[Operation],
    final_state: dict[str, tuple[bytes, int]],
) -> list[str]:
    """Every problem found (empty: the watchers saw exactly the committed history)."""
    problems: list[str] = []
    reference = next(iter(histories.values()), [])
    for node, history in histories.items():
        if history != reference:
            problems.append(f"node {node} holds another history than the others")
    revisions = sorted({c[0] for c in reference})
    if revisions != list(range(1, len(revisions) + 1)):
        problems.append("the history read back is not every revision from 1 on")
    for i, stream in enumerate(streams):
        got = [c[0] for c in stream]
        if got != sorted(set(got)):
            problems.append(f"watcher {i}: revisions repeated or out of order")
        if stream != reference[: len(stream)]:
            pairs = enumerate(zip(stream, reference, strict=False))
            at = next((n for n, (a, b) in pairs if a != b), len(reference))
            problems.append(f"watcher {i}: differs from the history at change #{at}")
        elif len(stream) != len(reference):
            problems.append(f"watcher {i}: stopped at {len(stream)} of {len(reference)} changes")
    by_revision: dict[int, set[tuple[str, bytes]]] = {}
    for revision, kind, key, value in reference:
        if kind == "put":
            by_revision.setdefault(revision, set()).add((key, value))
    acknowledged = [
        op
        for op in ops
        if op.outcome == "ok" and op.kind in ("put", "cas") and op.revision is not None
    ]
    for op in acknowledged:
        if (op.key, op.value) not in by_revision.get(op.revision or 0, set()):
            problems.append(f"acknowledged {op.kind} of {op.key} at {op.revision} missing")
    replayed: dict[str, bytes] = {}
    for _, kind, key, value in reference:
        if kind == "put":
            replayed[key] = value
        else:
            replayed.pop(key, None)
    if replayed != {k: v for k, (v, _) in final_state.items()}:
        problems.append("replaying the history does not give the final state")
    return problems
