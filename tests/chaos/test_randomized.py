"""Histories of a simulated correct store must pass; provably corrupted copies must fail.

The simulator (tests/chaos/simulate.py) is linearizable by construction, with concurrent
clients, unknown outcomes that take effect late or never, and refused requests. Each
corruption changes one read so that no linearization can exist whatever the unknown
writes did, so the checker must reject it (a timeout would fail the test too).
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kvstore.chaos.history import Operation, read_history, write_history
from kvstore.chaos.linearizability import check_history
from tests.chaos.simulate import simulate

histories = st.builds(
    lambda seed, clients, operations, keys, unknown: simulate(
        random.Random(seed),
        clients=clients,
        operations=operations,
        keys=keys,
        unknown_rate=unknown,
    ),
    seed=st.integers(0, 2**32 - 1),
    clients=st.integers(1, 8),
    operations=st.integers(1, 150),
    keys=st.integers(1, 3),
    unknown=st.sampled_from([0.0, 0.1, 0.3]),
)

Corruption = Callable[[list[Operation], random.Random], tuple[Operation, Operation]]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(histories)
def test_simulated_histories_are_linearizable(history: list[Operation]) -> None:
    result = check_history(history)
    assert result.ok is True, result.explanation


def _ok_reads(history: list[Operation]) -> list[Operation]:
    return [op for op in history if op.kind == "get" and op.outcome == "ok"]


def _never_written(history: list[Operation], rng: random.Random) -> tuple[Operation, Operation]:
    read = rng.choice(_ok_reads(history))
    return read, dataclasses.replace(
        read, found=True, read_value=b"never written", read_version=read.read_version or 1
    )


def _impossible_version(
    history: list[Operation], rng: random.Random
) -> tuple[Operation, Operation]:
    """A version above the number of writes that could ever have hit the key."""
    read = rng.choice([op for op in _ok_reads(history) if op.found])
    writes = sum(1 for op in history if op.key == read.key and op.kind in ("put", "cas"))
    return read, dataclasses.replace(read, read_version=writes + 1)


def _overwritten(history: list[Operation], rng: random.Random) -> tuple[Operation, Operation]:
    """A read returning the value of write w0 although w0 < w1 < read in real time (w1 an
    acknowledged write): values are unique, so nothing can bring w0's value back."""
    candidates = []
    for read in _ok_reads(history):
        done = [w for w in history if w.key == read.key and w.is_write and w.outcome == "ok"]
        w1s = [w for w in done if w.ret is not None and w.ret < read.call]
        if not w1s:
            continue
        w1 = max(w1s, key=lambda w: w.call)
        w0s = [w for w in done if w.kind != "delete" and w.ret is not None and w.ret < w1.call]
        if w0s:
            candidates.append((read, rng.choice(w0s)))
    assume(candidates)
    read, w0 = rng.choice(candidates)
    return read, dataclasses.replace(read, found=True, read_value=w0.value, read_version=w0.version)


@SETTINGS
@given(
    histories,
    st.sampled_from([_never_written, _impossible_version, _overwritten]),
    st.randoms(use_true_random=False),
)
def test_corrupted_reads_are_rejected(
    history: list[Operation], corrupt: Corruption, rng: random.Random
) -> None:
    assume(any(op.found for op in _ok_reads(history)))
    original, changed = corrupt(history, rng)
    bad = [changed if op is original else op for op in history]
    result = check_history(bad)
    assert result.ok is False, (changed.describe(), result.explanation)
    assert result.key == changed.key
    assert result.window


@settings(max_examples=30, deadline=None)
@given(histories)
def test_histories_survive_a_json_round_trip(history: list[Operation]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "history.jsonl"
        write_history(path, history)
        assert read_history(path) == history


def test_two_thousand_operations_check_quickly() -> None:
    history = simulate(random.Random(7), clients=10, operations=2000, keys=5, unknown_rate=0.05)
    started = time.monotonic()
    result = check_history(history)
    elapsed = time.monotonic() - started
    print(f"\n2000 operations, 5 keys, 10 clients: checked in {elapsed:.3f} s")
    assert result.ok is True, result.explanation
    assert len(history) == 2000
