"""`kv chaos --workload lock`: the checker on hand-made histories (good ones pass; an
overlapping critical section, a decreasing token, an early lease expiry and a lost or
phantom write each fail with a message saying so), the holder-pause schedule, and one
end-to-end run under faults and holder pauses that must pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvstore.chaos.lock_checker import LockEvent, StoreWrite, check_locks
from kvstore.chaos.lock_clients import HOLDER_PAUSE, holder_schedule

REPO_ROOT = Path(__file__).resolve().parents[2]
TTL = 2.0


def ev(
    worker: int, kind: str, call: float, ret: float, outcome: str = "ok", **kw: Any
) -> LockEvent:
    lease = kw.pop("lease", 10 if worker == 0 else 20)
    return LockEvent(
        worker=worker, kind=kind, call=call, ret=ret, outcome=outcome, lease=lease, **kw
    )


def holder(
    worker: int,
    token: int,
    start: float,
    writes: list[tuple[int, float]],
    end: float,
    held_at: float | None = None,
) -> list[LockEvent]:
    """A whole round: grant at `start`, queue, told it holds at `held_at`, fenced writes
    (revision, call time), release and revoke at `end`."""
    held = start + 0.03 if held_at is None else held_at
    events = [
        ev(worker, "grant", start, start + 0.01, ttl=TTL),
        ev(worker, "enqueue", start + 0.01, start + 0.02, token=token),
        ev(worker, "poll", start + 0.02, held, token=token, held=True),
    ]
    for seq, (revision, call) in enumerate(writes, 1):
        value = f"{worker} {token} {seq}"
        events.append(
            ev(
                worker,
                "write",
                call,
                call + 0.01,
                token=token,
                seq=seq,
                value=value,
                revision=revision,
            )
        )
    events.append(ev(worker, "release", end, end + 0.01, token=token))
    events.append(ev(worker, "revoke", end + 0.01, end + 0.02, token=token))
    return events


def applied_of(events: list[LockEvent]) -> list[StoreWrite]:
    return sorted((e.revision, e.value) for e in events if e.kind == "write" and e.outcome == "ok")


def problems(events: list[LockEvent], applied: list[StoreWrite] | None = None) -> list[str]:
    return check_locks(events, applied_of(events) if applied is None else applied).problems


GOOD = holder(0, 11, 0.0, [(12, 0.1), (13, 0.2)], 0.3) + holder(
    1, 21, 0.05, [(14, 0.4), (15, 0.5)], 0.6, held_at=0.35
)


def test_holders_one_after_the_other_pass() -> None:
    result = check_locks(GOOD, applied_of(GOOD))
    assert result.problems == []
    assert result.stats["writes_applied"] == 4
    assert result.stats["critical_sections_applied"] == 2
    assert result.stats["early_expiries"] == 0


def test_a_holder_paused_past_its_ttl_and_fenced_passes() -> None:
    """The classic scenario done right: worker 0 stops after a keep-alive sent at 0.7 s,
    its lease ends, worker 1 holds from 2.8 s (> 0.7 + TTL), and worker 0's write after
    waking is refused (fenced) and not applied."""
    first = holder(0, 11, 0.0, [(12, 0.1)], 5.0)
    first.insert(3, ev(0, "keepalive", 0.7, 0.71))
    first.insert(4, ev(0, "write", 4.0, 4.01, "fenced", token=11, seq=2, value="0 11 2"))
    second = holder(1, 21, 0.05, [(14, 2.9), (15, 3.0)], 3.2, held_at=2.8)
    result = check_locks(first + second, applied_of(first + second))
    assert result.problems == []
    assert result.stats["writes_fenced"] == 1
    assert result.stats["leases_expired"] == 1
    assert result.stats["shortest_expiry_s"] == 2.1  # told at 2.8, keep-alive sent at 0.7


def test_an_overlapping_critical_section_fails() -> None:
    applied = [(12, "0 11 1"), (14, "1 21 1"), (15, "0 11 2"), (16, "1 21 2")]
    found = problems(GOOD, applied)
    assert any(
        "critical sections overlap: worker 0 with token 11 wrote at revisions 12 and 15, "
        "and worker 1 with token 21 wrote in between (revisions 14-14)" in p
        for p in found
    ), found


def test_a_decreasing_token_fails() -> None:
    """Worker 0's write lands after worker 1's: the fence did not stop a stale holder."""
    applied = [(12, "0 11 1"), (14, "1 21 1"), (15, "1 21 2"), (16, "0 11 2")]
    found = problems(GOOD, applied)
    assert any(
        p.startswith(
            "token went down: revision 16 (worker 0, token 11, write #2) was applied "
            "after revision 15 (worker 1, token 21, write #2)"
        )
        for p in found
    ), found


def test_a_token_shared_by_two_workers_fails() -> None:
    applied = [(12, "0 11 1"), (13, "1 11 1"), (14, "0 11 2")]
    found = problems(GOOD, applied)
    assert any("token 11 was used by several workers: [0, 1]" in p for p in found), found


@pytest.mark.parametrize(
    ("evidence", "how"),
    [
        (ev(1, "poll", 0.9, 2.6, token=21, held=True), "worker 1 with token 21 was told it holds"),
        (ev(0, "keepalive", 2.5, 2.6, "gone"), "its keepalive answered lease_not_found"),
        (ev(0, "write", 2.5, 2.6, "fenced", token=11, value="0 11 9"), "its fenced write"),
        (ev(0, "poll", 2.5, 2.6, token=11, queued=False), "its token 11 had left the queue"),
    ],
)
def test_an_early_expiry_fails(evidence: LockEvent, how: str) -> None:
    """Worker 0's last acknowledged keep-alive was SENT at 0.7 s: its lease must live until
    2.7 s at least, yet an answer received at 2.6 s shows it gone."""
    events = holder(0, 11, 0.0, [(12, 0.1)], 4.0)
    events.insert(3, ev(0, "keepalive", 0.7, 0.8))
    events += [ev(1, "grant", 0.3, 0.31, ttl=TTL), ev(1, "enqueue", 0.31, 0.32, token=21)]
    events.append(evidence)
    found = problems(events, [(12, "0 11 1")])
    assert any(
        p.startswith("lease 10 of worker 0 (TTL 2 s) ended early: seen gone at 2.600 s")
        and how in p
        and "only 1.900 s after the send of its last acknowledged keep-alive at 0.700 s" in p
        for p in found
    ), found


def test_the_early_expiry_check_is_conservative() -> None:
    """Gone at 2.71 s after a keep-alive sent at 0.7 s is within the bound (even though it
    was acknowledged at 0.8 s); so is anything after the client's own release."""
    events = holder(0, 11, 0.0, [(12, 0.1)], 4.0)
    events.insert(3, ev(0, "keepalive", 0.7, 0.8))
    events.append(ev(0, "keepalive", 2.6, 2.71, "gone"))
    assert problems(events, [(12, "0 11 1")]) == []
    released = holder(0, 11, 0.0, [(12, 0.1)], 0.2)
    released.append(ev(1, "poll", 0.25, 0.3, token=21, held=True, lease=20))
    assert problems(released, [(12, "0 11 1")]) == []
    late = holder(0, 11, 0.0, [(12, 0.1)], 0.35)[-2:]  # released after that: early
    released[-3:-1] = late
    assert any("seen gone at 0.300 s" in p for p in problems(released, [(12, "0 11 1")]))


def test_lost_refused_phantom_and_repeated_writes_fail() -> None:
    lost = problems(GOOD, [(12, "0 11 1"), (13, "0 11 2"), (14, "1 21 1")])
    assert any("acknowledged write '1 21 2' (revision 15) is not in the store" in p for p in lost)
    refused = [*GOOD, ev(0, "write", 0.25, 0.26, "fenced", token=11, seq=3, value="0 11 3")]
    applied = [*applied_of(GOOD), (16, "0 11 3")]
    assert any(
        "'0 11 3' was refused (fenced) but the store applied it" in p
        for p in problems(refused, applied)
    )
    phantom = problems(GOOD, [*applied_of(GOOD), (16, "3 99 1")])
    assert any("the store applied '3 99 1' (revision 16) nobody sent" in p for p in phantom)
    twice = [*GOOD, ev(1, "write", 0.55, 0.56, "unknown", token=21, seq=3, value="1 21 3")]
    found = problems(twice, [*applied_of(GOOD), (16, "1 21 3"), (17, "1 21 3")])
    assert any("'1 21 3' was applied more than once: [16, 17]" in p for p in found)
    assert any("only 0 fenced writes" in p for p in problems([], []))


def test_holder_pauses_outlast_the_ttl_and_end_before_the_run() -> None:
    plan = holder_schedule(7, 60.0, ttl=2)
    assert len(plan) >= 5
    assert all(f.kind == HOLDER_PAUSE and f.track == "clients" for f in plan)
    assert all(f.duration > 2 + 1.0 and f.end <= 59.5 for f in plan)
    assert plan == holder_schedule(7, 60.0, ttl=2)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_lock_clients_under_faults_and_holder_pauses_pass(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kvstore.cli.chaos", "--out", str(out), "--workload", "lock"]
    cmd += ["--duration", "20", "--seed", "3", "--clients", "4"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=200)
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0 and "PASS" in result.stdout, report
    lock = json.loads((out / "summary.json").read_text())["checks"]["lock"]
    assert lock["problems"] == []
    assert lock["workers"] == 4
    assert lock["writes_applied"] >= 20, lock
    assert lock["critical_sections_applied"] >= 4, lock
    assert lock["holder_pauses"] >= 1, lock
    assert lock["leases_expired"] >= 1, "no lease ever ran out"
    assert lock["shortest_expiry_s"] >= 2.0
