"""`kv chaos --workload watch`: the checker of watcher streams on hand-made histories,
and one end-to-end run under mixed faults that must pass with watchers reconnecting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.chaos.history import Operation
from kvstore.chaos.watchers import Change, check_watchers

REPO_ROOT = Path(__file__).resolve().parents[2]
HISTORY: list[Change] = [
    (1, "put", "k0", b"a"),
    (2, "put", "k1", b"b"),
    (3, "delete", "k0", b""),
    (4, "put", "k1", b"c"),
]
FINAL = {"k1": (b"c", 2)}
ACKED = [
    Operation(
        client=0, kind="put", key="k1", call=0.0, ret=0.1, outcome="ok", value=b"c", revision=4
    )
]


def check(
    streams: list[list[Change]],
    histories: dict[str, list[Change]] | None = None,
    final: dict[str, tuple[bytes, int]] = FINAL,
) -> list[str]:
    every = {"n1": HISTORY, "n2": HISTORY, **(histories or {})}
    return check_watchers(every, streams, ACKED, final)


def test_streams_equal_to_the_history_pass() -> None:
    assert check([list(HISTORY), list(HISTORY)]) == []


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        (HISTORY[:2] + HISTORY[3:], "differs from the history at change #2"),  # a gap
        (HISTORY[:2] + HISTORY[1:], "repeated or out of order"),  # a repeat
        (HISTORY[:3], "stopped at 3 of 4"),  # never caught up
        ([(1, "put", "k0", b"x"), *HISTORY[1:]], "differs from the history at change #0"),
    ],
)
def test_a_gap_a_repeat_a_lag_or_a_wrong_value_is_reported(
    stream: list[Change], problem: str
) -> None:
    problems = check([list(HISTORY), stream])
    assert any(problem in p for p in problems), problems


def test_history_disagreement_lost_acknowledged_writes_and_final_state_are_reported() -> None:
    other = {"n3": [*HISTORY[:3], (4, "put", "k1", b"z")]}
    problems = check([list(HISTORY)], histories=other)
    assert any("node n3 holds another history" in p for p in problems)
    lost = check([HISTORY[:2]], histories={"n1": HISTORY[:2], "n2": HISTORY[:2]})
    assert any("acknowledged put of k1 at 4 missing" in p for p in lost)
    assert any("final state" in p for p in check([list(HISTORY)], final={"k1": (b"b", 1)}))


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_watchers_under_mixed_faults_see_exactly_the_committed_history(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kvstore.cli.chaos", "--out", str(out), "--workload", "watch"]
    cmd += ["--duration", "30", "--seed", "12", "--clients", "4"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=200)
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0 and "PASS" in result.stdout, report
    watch = json.loads((out / "summary.json").read_text())["checks"]["watch"]
    assert watch["problems"] == []
    assert watch["changes_received"] == [watch["history_revision"]] * 3
    assert watch["history_revision"] >= 100
    assert sum(watch["reconnects"]) >= 1, "no watcher was ever moved by a fault"
