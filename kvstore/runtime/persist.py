"""Making a Ready durable: hard state and entries in one synced batch (kvstore.runtime.
leveldb_storage), on the loop thread or in a worker thread.

A leader always syncs in the worker thread, so that its loop keeps reading peers and
clients while the disk is slow (inline, one entry's sync stalled a leader 236 ms during
a million-key fill, and the followers elected another). While it syncs, `syncing` is
true and the runtime sends, on every tick and every batch from a peer, what the core
lets leave before the sync ends (RaftNode.early_messages): heartbeats, so a slow disk
does not cost the leader its office; answers to forwarded proposals; and a commit
both followers reached before the leader's own disk did, which otherwise waited for
that fsync and the thread's hand-back to the loop (measured on a loaded machine:
~0.45 ms of hand-offs around a ~0.6 ms sync). Its own copy still counts towards
commitment only once durable, and it applies nothing before.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from consensus import Ready
from consensus.storage import WritableStorage
from consensus.types import HardState
from kvstore.runtime.stats import RuntimeStats

log = logging.getLogger(__name__)

SLOW_PERSIST_S = 0.1
"""A Ready that takes longer than this to persist is logged: the disk is the bottleneck."""
INLINE_PERSIST_FOLLOWER = 8
"""A follower persists Readys of at most this many entries on the loop thread: it has
little else to do meanwhile, and the two thread hops cost more than they overlap."""


class Persister:
    """Persists Readys for one node; owns the worker thread that syncs them."""

    def __init__(
        self, storage: WritableStorage, stats: RuntimeStats, node_id: str, data_dir: Path
    ) -> None:
        self.storage = storage
        self.stats = stats
        self.data_dir = data_dir
        self.persisted: HardState = storage.initial_state()
        """The hard state last made durable."""
        self.syncing = False
        """A Ready is being synced in the worker thread (the loop runs meanwhile)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"persist-{node_id}")

    async def save(self, rd: Ready, leading: bool) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if leading or len(rd.entries) > INLINE_PERSIST_FOLLOWER:
            self.syncing = True
            try:
                await loop.run_in_executor(
                    self._executor, self.storage.save, rd.hard_state, rd.entries
                )
            finally:
                self.syncing = False
        else:
            self.storage.save(rd.hard_state, rd.entries)
        if rd.hard_state is not None:
            self.persisted = rd.hard_state
        elapsed = loop.time() - started
        self.stats.persisted(elapsed, len(rd.entries))
        if elapsed > SLOW_PERSIST_S:
            log.warning(
                "slow disk: persisting %d entries took %.0f ms; every write waits for it "
                "(check the disk holding %s)",
                len(rd.entries),
                elapsed * 1000,
                self.data_dir,
            )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
