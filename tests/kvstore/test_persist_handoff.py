"""The leader's persist worker (kvstore.runtime.persist): saves run off the loop thread,
one at a time in the order asked, and a failing save raises in the awaiting coroutine
(what run_in_executor did before the worker became a plain thread and queue); a lone
entry is saved on the loop only while the disk keeps proving fast."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from consensus import Entry, HardState, Ready
from consensus.storage import MemoryStorage
from kvstore.runtime import persist
from kvstore.runtime.persist import FAST_SAVES, INLINE_PERSIST_FOLLOWER, Persister
from kvstore.runtime.stats import RuntimeStats

pytestmark = pytest.mark.timeout(30)


class _RecordingDisk(MemoryStorage):
    """Memory storage that notes which thread saved what, and fails on request."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[tuple[int, int]] = []  # (thread ident, first entry index)
        self.fail_on: int | None = None
        self.slow_on: int | None = None
        self.slow_s = 2 * persist.FAST_SAVE_S

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        if entries and entries[0].index == self.fail_on:
            raise OSError("disk full")
        if entries and entries[0].index == self.slow_on:
            time.sleep(self.slow_s)
        self.saves.append((threading.get_ident(), entries[0].index if entries else 0))
        super().save(hard_state, entries)


def _ready(index: int, term: int = 1, count: int = 1) -> Ready:
    return Ready(
        hard_state=HardState(term, "n1", 0),
        entries=tuple(Entry(term, i, b"x%d" % i) for i in range(index, index + count)),
        messages=(),
        committed=(),
        read_states=(),
    )


async def test_a_leader_saves_off_the_loop_in_order_and_hears_failures(tmp_path: Path) -> None:
    disk = _RecordingDisk()
    persister = Persister(disk, RuntimeStats(), "n1", tmp_path)
    try:
        await asyncio.gather(*(persister.save(_ready(i), leading=True) for i in (1, 2, 3)))
        loop_thread = threading.get_ident()
        assert [index for _, index in disk.saves] == [1, 2, 3]
        assert all(thread != loop_thread for thread, _ in disk.saves)
        assert persister.persisted == HardState(1, "n1", 0)
        assert not persister.syncing

        disk.fail_on = 4
        with pytest.raises(OSError, match="disk full"):
            await persister.save(_ready(4), leading=True)
        assert not persister.syncing
        disk.fail_on = None
        await persister.save(_ready(4, term=2), leading=True)  # the worker survived it
        assert persister.persisted == HardState(2, "n1", 0)
        assert [index for _, index in disk.saves] == [1, 2, 3, 4]
    finally:
        persister.close()
    assert not persister._worker.is_alive()


async def test_a_lone_entry_is_saved_on_the_loop_only_while_the_disk_proves_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persist, "QUICK_SAVE_S", 0.05)  # a busy machine's scheduling: not slow
    disk = _RecordingDisk()
    persister = Persister(disk, RuntimeStats(), "n1", tmp_path)
    loop_thread = threading.get_ident()

    def on_loop(index: int) -> bool:
        return dict((i, t) for t, i in disk.saves)[index] == loop_thread

    try:
        for index in range(1, FAST_SAVES + 1):  # not proved fast yet: the worker saves
            await persister.save(_ready(index), leading=True)
        assert not any(on_loop(i) for i in range(1, FAST_SAVES + 1))
        at = FAST_SAVES + 1
        await persister.save(_ready(at), leading=True)
        assert on_loop(at), "a lone entry on a fast disk is saved on the loop"
        await persister.save(_ready(at + 1, count=2), leading=True)
        assert not on_loop(at + 1), "two entries go to the worker, however fast the disk"
        disk.slow_on, disk.slow_s = at + 3, 2 * persist.QUICK_SAVE_S
        await persister.save(_ready(at + 3), leading=True)  # proves the disk slow...
        await persister.save(_ready(at + 4), leading=True)
        assert not on_loop(at + 4), "after a slow save the worker saves again"
        assert persister.quick_saves == 1
    finally:
        persister.close()


async def test_a_follower_saves_every_ready_on_the_loop_only_while_the_disk_proves_fast(
    tmp_path: Path,
) -> None:
    disk = _RecordingDisk()
    persister = Persister(disk, RuntimeStats(), "n2", tmp_path)
    loop_thread = threading.get_ident()
    big = INLINE_PERSIST_FOLLOWER + 1

    def on_loop(index: int) -> bool:
        return dict((i, t) for t, i in disk.saves)[index] == loop_thread

    try:
        await persister.save(_ready(1, count=big), leading=False)
        assert not on_loop(1), "a big Ready goes to the worker until the disk proved fast"
        at = 1 + big
        for _ in range(FAST_SAVES):  # small Readys are saved on the loop anyway
            await persister.save(_ready(at), leading=False)
            assert on_loop(at)
            at += 1
        await persister.save(_ready(at, count=big), leading=False)
        assert on_loop(at), "on a fast disk every Ready is saved on the loop"
        at += big
        disk.slow_on = at
        await persister.save(_ready(at, count=big), leading=False)  # proves the disk slow
        at += big
        await persister.save(_ready(at, count=big), leading=False)
        assert not on_loop(at), "after a slow save a big Ready goes to the worker again"
        at += big
        for _ in range(FAST_SAVES - 1):  # the big one counted too
            await persister.save(_ready(at), leading=False)
            assert not on_loop(at), "after a slow save even a small Ready goes to the worker"
            at += 1
        await persister.save(_ready(at, count=big), leading=False)
        assert on_loop(at), "once the disk proved fast again, every Ready is saved inline"
    finally:
        persister.close()


@pytest.mark.parametrize("leading", [True, False], ids=["leader", "follower"])
async def test_nothing_is_saved_on_the_loop_while_or_after_heavy_disk_work_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leading: bool
) -> None:
    """A snapshot written or installed, or its entries deleted (DiskWork): a save on the
    loop then took 217 ms and cost a leader its office. None goes there in the window,
    nor after it until the disk proved quick again, however quick it was before."""
    monkeypatch.setattr(persist, "QUICK_SAVE_S", 0.05)  # a busy machine's scheduling: not slow
    disk = _RecordingDisk()
    persister = Persister(disk, RuntimeStats(), "n1", tmp_path)
    loop_thread = threading.get_ident()
    saved = 0

    async def save() -> bool:
        """Saves a lone entry; True if that happened on the loop thread."""
        nonlocal saved
        saved += 1
        await persister.save(_ready(saved), leading=leading)
        return dict((i, t) for t, i in disk.saves)[saved] == loop_thread

    try:
        for _ in range(FAST_SAVES):
            await save()
        assert await save(), "proved quick: a lone entry is saved on the loop"
        with persister.disk.running():
            for _ in range(FAST_SAVES + 1):
                assert not await save(), "no save on the loop while the disk is busy"
        for _ in range(FAST_SAVES):
            assert not await save(), "after it, the disk must prove quick afresh"
        assert await save()
        with persister.disk.running():  # work that ran between two saves counts too
            pass
        assert not await save()
    finally:
        persister.close()


@pytest.mark.parametrize("leading", [True, False], ids=["worker", "inline"])
def test_the_save_time_is_measured_finer_than_the_loops_clock(
    tmp_path: Path, leading: bool
) -> None:
    """kv_storage_fsync_duration_seconds and the slow-disk warning: on uvloop, which the
    server runs on, loop.time() moves in whole milliseconds, so a save measured with it
    read 0 on the loop thread and 1 ms or 0 through the worker whatever it took."""
    uvloop = pytest.importorskip("uvloop", reason="the server's loop; on Windows there is none")
    disk = _RecordingDisk()
    disk.slow_on, disk.slow_s = 1, 0.0003
    stats = RuntimeStats()
    persister = Persister(disk, stats, "n1", tmp_path)

    async def save() -> None:
        await persister.save(_ready(1), leading=leading)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(save())
    finally:
        persister.close()
    assert stats.persist_seconds.count == 1
    assert 0.0003 <= stats.persist_seconds.sum < 0.0009, stats.persist_seconds.sum
