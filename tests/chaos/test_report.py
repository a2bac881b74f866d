"""The chaos summary and chart: availability means "the cluster gave a definite answer",
the same in the summary, the runner's sanity check and the chart's colours."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.legend import Legend

from kvstore.chaos.history import Operation
from kvstore.chaos.nemesis import FaultWindow
from kvstore.chaos.report import (
    CATEGORY_LABELS,
    availability,
    category,
    latency_figure,
    plot_latency,
)
from tests.chaos.builders import cas, put


def delete_missing(call: float) -> Operation:
    return Operation(
        client=2,
        kind="delete",
        key="k",
        call=call,
        ret=call + 0.01,
        outcome="fail",
        error="not_found",
    )


def refused(call: float) -> Operation:
    return put("k", b"x", call, call + 0.01, outcome="fail", error="no_leader")


def history() -> tuple[list[Operation], list[FaultWindow]]:
    """Outside faults: ok writes, CAS that lost races (version_mismatch) and deletes of a
    missing key. During the faults (10..20 s and 15..25 s, overlapping): refusals and
    one unknown outcome."""
    outside = [put("k", b"%d" % i, 1 + i * 0.1, 1.05 + i * 0.1, version=i + 1) for i in range(10)]
    outside += [
        cas("k", b"y", 1, 3 + i * 0.1, 3.02 + i * 0.1, outcome="fail", version=11)
        for i in range(30)
    ]
    outside += [delete_missing(30 + i * 0.1) for i in range(5)]
    during = [refused(12 + i * 0.1) for i in range(4)]
    during += [put("k", b"z", 16, 16.5, version=12), put("k", b"u", 21, None)]
    windows = [
        FaultWindow("pause", "sigstop", 10.0, 20.0, ["n2"]),
        FaultWindow("partition", "majority", 15.0, 25.0, ["n1", "n3"]),
    ]
    return outside + during, windows


def test_definite_answers_outside_faults_are_full_availability() -> None:
    ops, windows = history()
    result = availability(ops, windows, end_of_run=40.0)
    outside, during = result["outside_faults"], result["during_faults"]
    assert outside == {
        "total": 45,
        "ok": 10,
        "definite_no": 35,
        "failed": 0,
        "unknown": 0,
        "available": 45,
        "availability": 1.0,
    }
    assert during["total"] == 6 and during["available"] == 1
    assert (during["failed"], during["unknown"]) == (4, 1)
    assert during["availability"] == round(1 / 6, 4)


def test_the_chart_colours_answers_apart_and_names_each_fault_band(tmp_path: Path) -> None:
    ops, windows = history()
    assert {category(op) for op in ops} == {"ok", "definite_no", "failed", "unknown"}
    fig = latency_figure(ops, windows, 40.0, "synthetic", timeout_s=1.0)
    try:
        ax = fig.axes[0]
        legends = [c for c in ax.get_children() if isinstance(c, Legend)]
        texts = [[t.get_text() for t in legend.get_texts()] for legend in legends]
        outcomes = next(t for t in texts if any(x.startswith("ok") for x in t))
        assert outcomes == [
            f"{CATEGORY_LABELS['ok']} (11)",
            f"{CATEGORY_LABELS['definite_no']} (35)",
            f"{CATEGORY_LABELS['failed']} (4)",
            f"{CATEGORY_LABELS['unknown']} (1)",
        ]
        faults = next(legend for legend in legends if legend.get_title().get_text() == "faults")
        assert [t.get_text() for t in faults.get_texts()] == [
            "1: pause:sigstop n2 (10.0-20.0 s)",
            "2: partition:majority n1,n3 (15.0-25.0 s)",
        ]
    finally:
        plt.close(fig)
    plot_latency(tmp_path / "latency.png", ops, windows, 40.0, "synthetic", 1.0)
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG")
