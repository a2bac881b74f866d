"""A snapshot's capture, a slice per loop callback, waits while a save is in the persist
worker (kvstore.runtime.compaction, Compactor._next_step): with its steps back to back
on a busy leader, the worker began its saves only once the capture had ended (146 ms
after they were asked for, at 568,000 keys), and every write waited for them. The hold
is bounded, so a capture still ends while saves follow one another."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consensus.storage import MemoryStorage
from consensus.types import Entry, Membership, SnapshotMeta
from kvstore.runtime.compaction import MAX_HELD_STEPS, Compactor
from kvstore.runtime.persist import DiskWork
from kvstore.runtime.stats import RuntimeStats
from kvstore.state import snapshot_capture
from kvstore.state.commands import Put, encode_command
from kvstore.state.machine import KVStateMachine

pytestmark = pytest.mark.timeout(30)

KEYS = 200
SLICE_KEYS = 10
"""20 capture steps."""


async def test_capture_steps_wait_for_a_save_in_the_worker_but_not_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sm = KVStateMachine()
    for i in range(KEYS):
        sm.apply(Entry(1, i + 1, encode_command(Put(f"k{i:04d}", b"v"))))
    disk = DiskWork()
    disk.saving = True  # as the Persister sets it while its worker saves
    steps: list[tuple[bool, int]] = []  # (a save was in the worker, checks held) per step
    captured = asyncio.Event()
    compactor = Compactor(
        sm, MemoryStorage(), captured.set, "n1", RuntimeStats(), disk, slice_keys=SLICE_KEYS
    )
    real_step = snapshot_capture.KeyCapture.step

    def step(capture: snapshot_capture.KeyCapture) -> bool:
        steps.append((disk.saving, compactor._held))
        disk.saving = len(steps) < 5  # saves back to back at first, then none
        return real_step(capture)

    monkeypatch.setattr(snapshot_capture.KeyCapture, "step", step)
    try:
        compactor.start(SnapshotMeta(sm.applied_index, 1, Membership(("n1",))))
        await asyncio.wait_for(captured.wait(), 20)  # the capture ends all the same
        compactor.store_if_ready()
        assert compactor.last is not None and compactor.last["index"] == KEYS
    finally:
        compactor.close()
    held = [checks for during_a_save, checks in steps if during_a_save]
    free = [checks for during_a_save, checks in steps if not during_a_save]
    assert held == [MAX_HELD_STEPS] * 5, "a step ran while a save waited for the GIL"
    assert free and set(free) == {0}, "a step waited with no save in the worker"
