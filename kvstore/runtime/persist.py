"""Making a Ready durable: hard state and entries in one synced batch (kvstore.runtime.
leveldb_storage), on the loop thread or in a worker thread.

A leader syncs in the worker thread, so that its loop keeps reading peers and clients
while the disk is slow (inline, one entry's sync stalled a leader 236 ms during a
million-key fill, and the followers elected another); only a lone entry goes inline, and
only while the disk keeps proving fast (INLINE_PERSIST_LEADER); a follower saves small
Readys inline, and all of them while its disk proves fast (INLINE_PERSIST_FOLLOWER).
While a leader syncs, `syncing` is true and the runtime sends, on every tick and every
batch from a peer, what the core lets leave before the sync ends
(RaftNode.early_messages): heartbeats, so a slow disk does not cost the leader its
office; answers to forwarded proposals; and a commit both followers reached before the
leader's own disk did, which otherwise waited for that fsync and the thread's hand-back
to the loop (measured on a loaded machine: ~0.45 ms of hand-offs around a ~0.6 ms sync).
Its own copy still counts towards commitment only once durable, and it applies nothing
before.

The worker is a plain thread fed through a SimpleQueue that hands its result back with
one `call_soon_threadsafe`, not a ThreadPoolExecutor: `run_in_executor` wraps each sync
in a concurrent future chained to an asyncio one (submit, wrap, chain and copy the
state across), which cost the leader about 6 % of its CPU under writes (py-spy --gil).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from queue import SimpleQueue

from consensus import Ready
from consensus.storage import WritableStorage
from consensus.types import Entry, HardState
from kvstore.runtime.stats import RuntimeStats

log = logging.getLogger(__name__)

SLOW_PERSIST_S = 0.1
"""A Ready that takes longer than this to persist is logged: the disk is the bottleneck."""
INLINE_PERSIST_FOLLOWER = 8
"""A follower persists Readys of at most this many entries on the loop thread: it has
little else to do meanwhile, and the two thread hops cost more than they overlap. Once
its disk has proved fast (FAST_SAVES saves in a row under FAST_SAVE_S each, as for a
leader's lone entry), it persists every Ready there: under load the worker's hand-offs
(two thread hops, the GIL passed back and forth, an eventfd wake-up of the loop) and
the smaller Readys the loop made while the worker synced cost a follower more CPU than
the overlap saved (node CPU per write -10 %, 3 back-to-back pairs at concurrency 64).
A slow disk holds the follower's loop for one save at most, as for a leader."""
INLINE_PERSIST_LEADER = 1
"""A leader persists a Ready of at most this many entries on the loop thread too, once
its disk has proved quick (FAST_SAVES saves in a row under QUICK_SAVE_S each). That is
a lone write (concurrency 1): the hand-off to the worker and back cost ~0.35 ms each
way on a loaded machine, on the commit path of every write the leader answers, while
the followers' round trip (send, their fsync, the answer) is longer than the leader's
own fsync, so the loop has nothing to do meanwhile. Busier Readys, and any Ready once
a save was slower, go to the worker, where the two followers can commit an entry
before the leader's own sync ends: on a disk shared with other busy processes a lone
sync took up to 6 ms while the followers' took 2-3 ms, hence the low bar (a quiet disk
syncs a lone entry in 0.6-0.7 ms). A slow disk holds heartbeats back for one save at
most (due every 30 ms; an election after 150 ms, by default).

Neither kind of node saves on its loop while heavy disk work of its own runs
(`DiskWork`: a snapshot being written or installed, the entries it covers being
deleted), nor after it until the disk proved quick again: under load a leader's inline
save took 217 ms in such a window, longer than an election timeout, and its followers
elected another. Nor after any save slower than FAST_SAVE_S (a follower's small Readys
included) until FAST_SAVES saves in a row proved the disk fast. LevelDB's own background
compactions cannot be seen (no property tells one runs: `leveldb.stats` holds only
cumulative figures), so a save slowed by one is caught by that last rule."""
FAST_SAVE_S = 0.02
QUICK_SAVE_S = 0.002
FAST_SAVES = 8


class DiskWork:
    """The heavy disk work a node runs besides its log (snapshots: kvstore.runtime.
    compaction and snapshots); the Persister saves nothing on the loop meanwhile, and
    tells it in turn when a save is in its worker (`saving`). Thread-safe: the work runs
    in worker threads, the Persister asks on the loop."""

    def __init__(self) -> None:
        self.saving = False
        """A save is in the persist worker (`Persister.syncing`, on the loop thread): the
        capture of a snapshot waits meanwhile (kvstore.runtime.compaction)."""
        self._lock = threading.Lock()
        self._running = 0
        self.changes = 0
        """Pieces of work begun and ended so far: a Persister that saw fewer proves the
        disk quick afresh, by its saves after the work (even work that ran between two
        of its saves)."""

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
            self.changes += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self.changes += 1

    @property
    def busy(self) -> bool:
        return self._running > 0


class Persister:
    """Persists Readys for one node; owns the worker thread that syncs them."""

    def __init__(
        self, storage: WritableStorage, stats: RuntimeStats, node_id: str, data_dir: Path
    ) -> None:
        self.storage = storage
        self.disk = DiskWork()
        """Snapshot work tells the Persister here while it runs (see the module docstring)."""
        self._disk_seen = 0
        """`disk.changes` when the streaks below last restarted."""
        self._doubted = False
        """A save was slow, or disk work ran, since the disk last proved fast: a follower
        saves nothing on the loop, however small, until FAST_SAVES fast saves in a row."""
        self.stats = stats
        self.data_dir = data_dir
        self.persisted: HardState = storage.initial_state()
        """The hard state last made durable."""
        self.fast_saves = 0
        """Saves in a row that took under FAST_SAVE_S (the disk time, without hand-offs)."""
        self.quick_saves = 0
        """Saves in a row that took under QUICK_SAVE_S (a leader's lone entry: inline)."""
        self._last_save_s = 0.0
        """How long the worker's last save took (written by it before it wakes the loop)."""
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        # A daemon, so a node dropped without close() never holds the interpreter open;
        # each save is one atomic LevelDB batch, so exiting mid-save is a crash the log
        # already survives.
        self._worker = threading.Thread(target=self._run, name=f"persist-{node_id}", daemon=True)
        self._worker.start()

    @property
    def syncing(self) -> bool:
        """A Ready is being synced in the worker thread (the loop runs meanwhile)."""
        return self.disk.saving

    async def save(self, rd: Ready, leading: bool) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()  # uvloop's loop.time() moves in whole milliseconds
        if not self._inline(len(rd.entries), leading):
            self.disk.saving = True
            try:
                done = loop.create_future()
                self._jobs.put((loop, done, rd.hard_state, rd.entries))
                await done
            finally:
                self.disk.saving = False
            saved_in = self._last_save_s
        else:
            began = time.perf_counter()
            self.storage.save(rd.hard_state, rd.entries)
            saved_in = time.perf_counter() - began
        self.fast_saves = self.fast_saves + 1 if saved_in < FAST_SAVE_S else 0
        self._doubted = self.fast_saves < FAST_SAVES and (self._doubted or not self.fast_saves)
        self.quick_saves = self.quick_saves + 1 if saved_in < QUICK_SAVE_S else 0
        if rd.hard_state is not None:
            self.persisted = rd.hard_state
        elapsed = time.perf_counter() - started
        self.stats.persisted(elapsed, len(rd.entries))
        if elapsed > SLOW_PERSIST_S:
            log.warning(
                "slow disk: persisting %d entries took %.0f ms; every write waits for it "
                "(check the disk holding %s)",
                len(rd.entries),
                elapsed * 1000,
                self.data_dir,
            )

    def _inline(self, entries: int, leading: bool) -> bool:
        """Whether to save a Ready of `entries` entries on the loop thread."""
        disk = self.disk
        if disk.busy or disk.changes != self._disk_seen:  # the disk proves quick afresh
            self._disk_seen = disk.changes
            self.fast_saves = self.quick_saves = 0
            self._doubted = True
            return False
        if leading:
            return entries <= (INLINE_PERSIST_LEADER if self.quick_saves >= FAST_SAVES else 0)
        fast = self.fast_saves >= FAST_SAVES
        return fast or (entries <= INLINE_PERSIST_FOLLOWER and not self._doubted)

    def _run(self) -> None:
        """The worker thread: one save at a time, in the order the loop asked for them."""
        while (job := self._jobs.get()) is not None:
            loop, done, hard_state, entries = job
            error: BaseException | None = None
            began = time.perf_counter()
            try:
                self.storage.save(hard_state, entries)
            except BaseException as exc:  # handed to the awaiting loop, as run_in_executor did
                error = exc
            self._last_save_s = time.perf_counter() - began
            # RuntimeError: the loop closed while this save ran, so nobody waits for it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done, error)

    def close(self) -> None:
        """Let the worker finish the saves already asked for, then stop it."""
        self._jobs.put(None)
        self._worker.join()


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]", HardState | None, Sequence[Entry]]


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    """On the loop: wake the awaiting save, unless it was cancelled meanwhile."""
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
