"""Log compaction that does not stall writes, at any state size.

Taking a snapshot has four steps, and only cheap ones run on the event loop:
1. capture (loop): the state at the snapshot's index without its keys (sessions and
   the like, few and small), then the keys a slice of SLICE_KEYS at a time, one slice
   per loop callback while applies go on, corrected at the end with the history
   (kvstore.state.snapshot_capture). No step costs more than ~1 ms at any key count,
   and no step runs while a save is in the persist worker, for up to a few ms
   (`Compactor._next_step`);
2. serialize and write (a worker thread of its own, never the persist thread, so the
   leader's fsyncs do not queue behind it): msgpack a chunk of keys at a time, the
   capture's corrections applied on the way, straight into the snapshot's own file,
   handing the GIL back to the loop after each chunk (`yield_gil`), fsync
   (`prepare_snapshot`);
3. commit (loop, between Readys): one small unsynced LevelDB batch pointing the log at
   the file (`commit_snapshot`). LevelDBStorage assumes one writer of its log, so this
   must never overlap `storage.save`, which the ready loop guarantees by calling it only
   while no Ready is being persisted;
4. forget (the worker thread): delete the entries the snapshot covers, and the old file,
   and give the memory the snapshot used back to the system (kvstore.runtime.free_memory).

A storage without the two-step interface (the tests' MemoryStorage) gets the bytes in
one `apply_snapshot` at step 3.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Protocol, runtime_checkable

from consensus.storage import WritableStorage
from consensus.types import SnapshotMeta
from kvstore.runtime.free_memory import release_free_memory
from kvstore.runtime.persist import DiskWork
from kvstore.runtime.stats import RuntimeStats
from kvstore.state.machine import KVStateMachine
from kvstore.state.snapshot import SnapshotView
from kvstore.state.snapshot_capture import SLICE_KEYS, CaptureAborted, KeyCapture

log = logging.getLogger("kvstore.snapshot")

GIL_YIELD_S = 0.0005
"""How long a worker thread sleeps to hand the GIL to the loop (`yield_gil`), and how
often a capture step held for a save in the persist worker checks again
(`Compactor._next_step`)."""
MAX_HELD_STEPS = 8
"""Checks a capture step waits for a save at most (~4 ms; a save takes ~1-3)."""
TRIM_EVERY_BYTES = 16 << 20
"""Free heap memory goes back to the system every this many bytes of log applied, as
well as after each snapshot (see `Compactor.trim_if_due`)."""


def yield_gil() -> None:
    """Sleep GIL_YIELD_S: called by a worker thread between chunks of snapshot work
    (and of deleting the log entries a snapshot covers, kvstore.runtime.leveldb_storage).

    Why: measured at 300,000 keys (stacks dumped during each stall), every stall the
    process spent on a CPU had the snapshot thread running Python code while the loop
    waited in its C run loop for the GIL. A waiting thread gets the GIL only after the
    interpreter's switch interval (5 ms), at each of the loop's many GIL acquisitions in
    one turn (every libuv callback takes it again), so a busy worker slows the loop
    tenfold. A sleep releases the GIL with the loop already waiting for it."""
    time.sleep(GIL_YIELD_S)


@runtime_checkable
class TwoStepStore(Protocol):
    """A storage that writes snapshot files off the loop (kvstore.runtime.leveldb_storage)."""

    def prepare_snapshot(self, meta: SnapshotMeta, fill: Callable[[BinaryIO], object]) -> Any: ...

    def commit_snapshot(self, meta: SnapshotMeta, file: Any) -> Callable[[], None]: ...

    def snapshot_bytes(self) -> int: ...


class _OneStep:
    """The two steps over `apply_snapshot`, for storages that keep snapshots in memory."""

    def __init__(self, storage: WritableStorage) -> None:
        self._storage = storage

    def prepare_snapshot(self, meta: SnapshotMeta, fill: Callable[[BinaryIO], object]) -> bytes:
        out = io.BytesIO()
        fill(out)
        return out.getvalue()

    def commit_snapshot(self, meta: SnapshotMeta, file: bytes) -> Callable[[], None]:
        self._storage.apply_snapshot(meta, file)
        return lambda: None

    def snapshot_bytes(self) -> int:
        return len(self._storage.snapshot_data() or b"")


def _forget_and_trim(forget: Callable[[], None], disk: DiskWork) -> None:
    """Step 4, then the freed memory of the whole snapshot back to the system."""
    with disk.running():
        forget()
    release_free_memory()


class Compactor:
    """At most one snapshot in the making; `store_if_ready` finishes it on the loop."""

    def __init__(
        self,
        sm: KVStateMachine,
        storage: WritableStorage,
        wake: Callable[[], None],
        name: str,
        stats: RuntimeStats,
        disk: DiskWork | None = None,
        slice_keys: int = SLICE_KEYS,
    ) -> None:
        """`disk`: told while a snapshot is written or its entries deleted (the Persister's:
        no save on the loop meanwhile), and telling while a save is in the persist worker
        (no capture step meanwhile, see `_next_step`); `slice_keys`: keys read per loop
        callback (tests use a few, to interleave)."""
        self.disk = disk or DiskWork()
        self._held = 0
        """Checks the next capture step has waited for a save (`_next_step`)."""
        self._sm = sm
        self._slice_keys = slice_keys
        self._storage = storage
        self._store: TwoStepStore = (
            storage if isinstance(storage, TwoStepStore) else _OneStep(storage)
        )
        self._wake = wake
        self._stats = stats
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"snapshot-{name}")
        self._capture: KeyCapture | None = None
        self._job: asyncio.Future[tuple[SnapshotMeta, Any, int, float]] | None = None
        self._meta: SnapshotMeta | None = None
        self._view: SnapshotView | None = None
        self._started = 0.0
        self._capture_s = 0.0
        self._loop_s = 0.0
        self.last: dict[str, Any] | None = None
        """Figures of the last snapshot stored, for `GET /v1/status`."""
        self.last_bytes = self._store.snapshot_bytes()
        """The size of the last snapshot (at start: the stored one's, so a restarted
        node does not take a whole new snapshot `snapshot_entries` after its last)."""
        self._applied_bytes_at_start = 0
        self._trimmed_at = 0
        """`stats.applied_bytes` when free memory was last given back."""

    def log_bytes_since(self) -> int:
        """Bytes of log applied since the last snapshot began (since start-up if none)."""
        return self._stats.applied_bytes - self._applied_bytes_at_start

    def installed(self, size: int) -> None:
        """A leader's snapshot of `size` bytes replaced the state: the log counts from
        it, as from one of our own (else a node that just received the whole state, a
        new one or one far behind, wrote it all out again `snapshot_every` entries on)."""
        self.last_bytes = size
        self._applied_bytes_at_start = self._stats.applied_bytes

    @property
    def running(self) -> bool:
        return self._capture is not None or self._job is not None

    def trim_if_due(self) -> None:
        """Give free heap memory back to the system if TRIM_EVERY_BYTES of log were
        applied since the last time (in the compaction thread, never during a snapshot).

        Why: snapshots, which trim too, come hundreds of thousands of entries apart at a
        million keys (tied to the state's size), and the freed memory of the requests,
        batches and LevelDB buffers in between stayed in the RSS: a trim at the end of a
        300,000-key fill gave back 3-5 MiB per node. It takes well under a millisecond."""
        applied = self._stats.applied_bytes
        if self.running or applied - self._trimmed_at < TRIM_EVERY_BYTES:
            return
        self._trimmed_at = applied
        self._executor.submit(release_free_memory)

    def start(self, meta: SnapshotMeta, sm: KVStateMachine | None = None) -> None:
        """Begin a snapshot of the state now (it must be the state at meta.index): the
        keys are read a slice per loop callback, then serialized in the background; the
        event loop is woken when the file is ready."""
        started = time.perf_counter()
        view, capture = (sm or self._sm).begin_snapshot(self._slice_keys)
        if view.applied_index != meta.index:
            capture.abandon()
            raise AssertionError(f"snapshot of index {view.applied_index} labelled {meta.index}")
        self._meta, self._view, self._capture = meta, view, capture
        self._applied_bytes_at_start = self._stats.applied_bytes
        self._started = started
        self._loop_s = time.perf_counter() - started
        self._next_step(asyncio.get_running_loop())

    def _step(self) -> None:
        capture, meta, view = self._capture, self._meta, self._view
        if capture is None or meta is None or view is None:
            return  # closed meanwhile
        loop = asyncio.get_running_loop()
        if self._held_for_a_save(loop):
            return
        started = time.perf_counter()
        try:
            if not capture.step():
                self._next_step(loop)
                return
            read, corrections = capture.finish()
        except CaptureAborted:
            self._capture = None
            return  # a leader's snapshot replaced the state: it will do
        finally:
            self._loop_s += time.perf_counter() - started
        self._capture = None
        self._capture_s = time.perf_counter() - self._started
        store, disk = self._store, self.disk

        def write() -> tuple[SnapshotMeta, Any, int, float]:
            began = time.perf_counter()
            full = view.with_keys(read, corrections)
            size = 0

            def fill(out: BinaryIO) -> None:
                nonlocal size
                size = full.write_to(out, yield_gil)

            with disk.running():
                file = store.prepare_snapshot(meta, fill)
            return meta, file, size, time.perf_counter() - began

        job = asyncio.get_running_loop().run_in_executor(self._executor, write)
        job.add_done_callback(lambda _: self._wake())
        self._job = job

    def _next_step(self, loop: asyncio.AbstractEventLoop) -> None:
        """Schedule the next capture step: at once, or, while a save is in the persist
        worker, once it has ended (checked every GIL_YIELD_S; after MAX_HELD_STEPS checks
        a step runs anyway, so a leader that saves back to back still captures). Why:
        with steps back to back the loop's thread never waits, and the worker, woken for
        a save, began it only once the capture had ended: at 568,000 keys a save began
        146 ms after it was asked for and took 7 ms on the disk, and at a million keys
        a busy leader's writes stalled 120-305 ms at some of its snapshots ("slow disk"
        warnings with a quick disk). Most likely the GIL: the loop's thread takes it
        again after every callback, and each take counts as a switch, so the interpreter
        never forces one for a waiting thread (an idle host does not show it: the worker
        then wins the GIL between two callbacks). Holding the steps leaves the loop only
        its own traffic while the worker saves, as between snapshots."""
        self._held = 0
        loop.call_soon(self._step)

    def _held_for_a_save(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether this step waits for the save in the persist worker (see `_next_step`)."""
        if not self.disk.saving or self._held >= MAX_HELD_STEPS:
            return False
        self._held += 1
        loop.call_later(GIL_YIELD_S, self._step)
        return True

    def store_if_ready(self) -> None:
        """Commit a finished snapshot (call only between Readys: it writes the log)."""
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
        meta, file, size, write_s = job.result()
        held = self._storage.snapshot_meta()
        if held is not None and held.index >= meta.index:
            return  # a newer snapshot (from the leader) was installed meanwhile
        started = time.perf_counter()
        forget = self._store.commit_snapshot(meta, file)
        # What is alive now is mostly the state just written out: long-lived objects
        # the cyclic collector would otherwise re-scan, all of them, on every full
        # collection (~0.4 s on the loop at 500,000 keys, measured). Frozen, they are
        # still freed by reference counting; only a cycle among them would be kept.
        gc.freeze()
        store_s = time.perf_counter() - started
        self._executor.submit(_forget_and_trim, forget, self.disk)
        self._trimmed_at = self._stats.applied_bytes
        self.last_bytes = size
        self._stats.snapshot_seconds.observe(self._capture_s + write_s + store_s)
        self.last = {
            "index": meta.index,
            "term": meta.term,
            "bytes": size,
            "capture_ms": round(self._capture_s * 1000, 1),
            "capture_loop_ms": round(self._loop_s * 1000, 1),
            "serialize_ms": round(write_s * 1000, 1),
            "store_ms": round(store_s * 1000, 1),
        }
        log.info(
            "compacted the log into a snapshot at index %d: %d bytes; capture %.0f ms "
            "(%.0f ms of it on the loop, in slices), serialize and write %.0f ms (thread), "
            "commit %.0f ms (loop)",
            meta.index,
            size,
            self._capture_s * 1000,
            self._loop_s * 1000,
            write_s * 1000,
            store_s * 1000,
        )

    def close(self) -> None:
        if self._capture is not None:
            self._capture.abandon()
            self._capture = None
        if self._job is not None:
            self._job.cancel()
        self._executor.shutdown(wait=True)
