"""How much a snapshot's worker thread delays the event loop's thread, in one process.

Fills a KVStateMachine with `--keys` keys of 256 B, captures a snapshot a slice at a time
while writes go on (as a node does), then serializes it in a worker thread (as
kvstore.runtime.compaction does) and parses it back in another (as a joining node does),
while the main thread sleeps 0.5 ms in a loop and records how late each wake-up comes:
a late wake-up is the main thread waiting for the GIL (or for a CPU: compare with the
`idle` rows, where the worker only sleeps). Young collections over 3 ms are listed with
the thread that ran them. Independent of other processes' load only as far as the
`idle` rows say.

Usage (repository root): python bench/snapshot_gil_probe.py [--keys 300000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.types import Entry
from kvstore.runtime.compaction import yield_gil
from kvstore.state.commands import Put, encode_command
from kvstore.state.machine import KVStateMachine

_collections: list[tuple[int, float, str]] = []
_started = [0.0]


def _timed(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    if took > 0.003:
        _collections.append(
            (info["generation"], round(took * 1000, 1), threading.current_thread().name)
        )


def probe(name: str, work: Callable[[], None]) -> None:
    """Run `work` in a thread; print how late the main thread's 0.5 ms sleeps woke."""
    _collections.clear()
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    started = time.perf_counter()
    worker = threading.Thread(target=run, name="worker")
    worker.start()
    late: list[float] = []
    while not done.is_set():
        t = time.perf_counter()
        time.sleep(0.0005)
        late.append(time.perf_counter() - t - 0.0005)
    worker.join()
    late.sort()
    print(
        f"{name}: {(time.perf_counter() - started) * 1000:.0f} ms, {len(late)} wake-ups, "
        f"late >5 ms {sum(x > 0.005 for x in late)}, >10 ms {sum(x > 0.01 for x in late)}, "
        f"worst {late[-1] * 1000:.1f} ms; collections over 3 ms {_collections}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=300_000)
    args = parser.parse_args()
    n, value = args.keys, b"x" * 256
    sm = KVStateMachine()
    for i in range(n):
        sm.apply(Entry(1, i + 1, encode_command(Put(f"key-{i:08d}", value))))
    index = n
    view, capture = sm.begin_snapshot()
    while not capture.step():  # a write between slices, as on a node's loop
        index += 1
        sm.apply(Entry(1, index, encode_command(Put(f"key-{index % n:08d}", b"y" * 256))))
        gc.collect(0)
    chunks, corrections = capture.finish()
    gc.callbacks.append(_timed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snapshot.bin"

        def serialize() -> None:
            with path.open("wb") as out:
                view.with_keys(chunks, corrections).write_to(out, yield_gil)

        def parse() -> None:
            KVStateMachine.parse(path.read_bytes(), yield_gil)

        probe("idle", lambda: time.sleep(0.5))
        probe("serialize", serialize)
        probe("parse", parse)
        probe("idle", lambda: time.sleep(0.5))
        print(f"snapshot: {path.stat().st_size} bytes, {len(corrections)} corrections")


if __name__ == "__main__":
    main()
