"""The transfer workload of `kv chaos`: its checker, and a short run under faults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.chaos.transfers import (
    ACCOUNTS,
    START_BALANCE,
    TOTAL,
    Transfers,
    TransferStats,
    check_transfers,
)
from kvstore.client import KeyValue, RangePage

REPO_ROOT = Path(__file__).resolve().parents[2]


def page(values: list[int], revision: int = 9) -> RangePage:
    kvs = tuple(
        KeyValue(f"acct/{i}", str(v).encode(), 1, revision, 1) for i, v in enumerate(values)
    )
    return RangePage(revision, kvs, len(kvs), False, None)


def test_the_checker_passes_a_balanced_run_and_names_every_violation() -> None:
    balanced = page([START_BALANCE] * ACCOUNTS)
    assert check_transfers(TransferStats(applied=3), balanced) == []
    stats = TransferStats(applied=0)
    transfers = Transfers(["http://127.0.0.1:1"], 1, 1.0)
    transfers.stats = stats
    torn = page([START_BALANCE - 5] + [START_BALANCE] * (ACCOUNTS - 1), revision=7)
    transfers._audit(torn, "stale read on n2")
    transfers._audit(balanced, "transfer read")
    problems = check_transfers(stats, page([1] * ACCOUNTS))
    assert stats.audits == 2 and len(stats.bad_sums) == 1
    assert any("stale read on n2 at revision 7" in p for p in problems), problems
    assert any(f"final accounts sum to {ACCOUNTS}, not {TOTAL}" in p for p in problems)
    assert any("no transfer was applied" in p for p in problems)
    assert "no final read" in check_transfers(TransferStats(applied=1), None)[0]


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_transfer_run_under_faults_keeps_the_sum(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kvstore.cli.chaos", "--out", str(out), "--duration", "20",
           "--seed", "12", "--workload", "transfer"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=200)
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0 and "PASS" in result.stdout, report
    summary = json.loads((out / "summary.json").read_text())
    transfer = summary["checks"]["transfer"]
    assert transfer["final_sum"] == transfer["expected_sum"] == TOTAL
    assert transfer["applied"] > 50 and transfer["audits"] > 50 and transfer["problems"] == []
    assert summary["checks"]["linearizable"] is True  # the single-key history still checks
    assert (out / "latency.png").stat().st_size > 10_000
