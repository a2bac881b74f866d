"""bench/lock_bench.py's summary: the ratio is the median of per-round ratios (each
round's two systems ran back to back on the same machine), not a ratio of medians."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> object:
    spec = importlib.util.spec_from_file_location("lock_bench", ROOT / "bench" / "lock_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_is_the_median_of_per_round_ratios(tmp_path: Path) -> None:
    # Round 2 ran on a loaded machine: both systems slow. Per-round ratios 0.5, 0.5,
    # 2.0 (median 0.5); the ratio of the medians would be 200 / 100 = 2.0.
    ops = {1: (100, 50), 2: (10, 5), 3: (200, 400)}
    rows = []
    for round_no, (etcd, kv) in ops.items():
        for system, value in (("etcd", etcd), ("kv", kv)):
            rows.append(
                {
                    "system": system,
                    "setting": "keepalive",
                    "clients": 64,
                    "round": round_no,
                    "ops_per_s": value,
                    "errors": {"timeout": 1} if round_no == 2 else {},
                }
            )
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = load_bench().summarize(str(path))  # type: ignore[attr-defined]
    line = next(x for x in table.splitlines() if x.startswith("| keepalive"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells == [
        "keepalive",
        "64",
        "100 / 10 / 200",
        "50 / 5 / 400",
        "100",
        "50",
        "0.50 (0.50 / 0.50 / 2.00)",
    ]
    assert "errors: etcd keepalive round 2: {'timeout': 1}" in table
