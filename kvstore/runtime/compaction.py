"""Log compaction that does not stall writes.

Taking a snapshot has three steps, and only the cheap ones run on the event loop:
1. capture (loop, right after `advance`): a shallow copy of the keys dict, which holds
   immutable values, so it is a consistent picture of the applied state (~8 ms for
   100,000 keys);
2. serialize (a worker thread of its own, never the persist thread, so the leader's
   fsyncs do not queue behind it): sort and msgpack (~150 ms for 100,000 keys);
3. store (loop, between Readys): `storage.apply_snapshot`, one synced LevelDB batch
   that also deletes the covered entries. LevelDBStorage assumes one writer, so this
   must never overlap `storage.save`, which the ready loop guarantees by calling it
   only while no Ready is being persisted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from consensus.storage import WritableStorage
from consensus.types import SnapshotMeta
from kvstore.runtime.stats import RuntimeStats
from kvstore.state.machine import KVStateMachine
from kvstore.state.snapshot import SnapshotView

log = logging.getLogger("kvstore.snapshot")

_Job = asyncio.Future[tuple[SnapshotMeta, bytes, float]]


class Compactor:
    """At most one snapshot in the making; `store_if_ready` finishes it on the loop."""

    def __init__(
        self,
        sm: KVStateMachine,
        storage: WritableStorage,
        wake: Callable[[], None],
        name: str,
        stats: RuntimeStats,
    ) -> None:
        self._sm = sm
        self._storage = storage
        self._wake = wake
        self._stats = stats
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"snapshot-{name}")
        self._job: _Job | None = None
        self._capture_s = 0.0
        self.last: dict[str, Any] | None = None
        """Figures of the last snapshot stored, for `GET /v1/status`."""

    @property
    def running(self) -> bool:
        return self._job is not None

    def start(self, meta: SnapshotMeta, sm: KVStateMachine | None = None) -> None:
        """Capture the state now (it must be the state at meta.index) and serialize it
        in the background; the event loop is woken when the bytes are ready."""
        started = time.perf_counter()
        view = (sm or self._sm).snapshot_view()
        if view.applied_index != meta.index:
            raise AssertionError(f"snapshot of index {view.applied_index} labelled {meta.index}")
        self._capture_s = time.perf_counter() - started
        job = asyncio.get_running_loop().run_in_executor(self._executor, _serialize, meta, view)
        job.add_done_callback(lambda _: self._wake())
        self._job = job

    def store_if_ready(self) -> None:
        """Store a finished snapshot (call only between Readys: it writes the log)."""
        job = self._job
        if job is None or not job.done():
            return
        self._job = None
        if job.cancelled():
            return
        error = job.exception()
        if error is not None:
            log.error("taking a snapshot failed: %s", error, exc_info=error)
            return
        meta, data, serialize_s = job.result()
        held = self._storage.snapshot_meta()
        if held is not None and held.index >= meta.index:
            return  # a newer snapshot (from the leader) was installed meanwhile
        started = time.perf_counter()
        self._storage.apply_snapshot(meta, data)
        store_s = time.perf_counter() - started
        self._stats.snapshot_seconds.observe(self._capture_s + serialize_s + store_s)
        self.last = {
            "index": meta.index,
            "term": meta.term,
            "bytes": len(data),
            "capture_ms": round(self._capture_s * 1000, 1),
            "serialize_ms": round(serialize_s * 1000, 1),
            "store_ms": round(store_s * 1000, 1),
        }
        log.info(
            "compacted the log into a snapshot at index %d: %d bytes; capture %.0f ms "
            "(loop), serialize %.0f ms (thread), store %.0f ms (loop)",
            meta.index,
            len(data),
            self._capture_s * 1000,
            serialize_s * 1000,
            store_s * 1000,
        )

    def close(self) -> None:
        if self._job is not None:
            self._job.cancel()
        self._executor.shutdown(wait=True)


def _serialize(meta: SnapshotMeta, view: SnapshotView) -> tuple[SnapshotMeta, bytes, float]:
    started = time.perf_counter()
    data = view.serialize()
    return meta, data, time.perf_counter() - started
