"""What a chaos run leaves behind: counts, availability, the verdict, and a latency chart.

The summary is JSON so scripts and CI can read it; the chart is there because a person
looking at a failure wants to see first whether it lines up with a fault.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvstore.chaos.history import KINDS, OUTCOMES, Operation
from kvstore.chaos.nemesis import FaultWindow, faulted_time

OUTCOME_COLOURS = {"ok": "#2a9d45", "fail": "#e08a00", "unknown": "#d62728"}
KIND_COLOURS = {"kill": "#d62728", "pause": "#9467bd", "partition": "#1f77b4", "delay": "#8c8c8c"}


def op_counts(ops: Sequence[Operation]) -> dict[str, Any]:
    by_kind = {k: Counter(op.outcome for op in ops if op.kind == k) for k in KINDS}
    return {
        "total": len(ops),
        "by_outcome": {o: sum(1 for op in ops if op.outcome == o) for o in OUTCOMES},
        "by_kind": {k: {o: by_kind[k][o] for o in OUTCOMES} for k in KINDS},
    }


def in_fault(op: Operation, windows: Sequence[FaultWindow], end_of_run: float) -> bool:
    """An op counts as "during a fault" when it was called while one was in force."""
    return any(w.start <= op.call <= (w.end if w.end is not None else end_of_run) for w in windows)


def availability(
    ops: Sequence[Operation], windows: Sequence[FaultWindow], end_of_run: float
) -> dict[str, dict[str, Any]]:
    """Share of ok operations among those called during fault windows, and outside them."""
    groups: dict[str, list[Operation]] = {"during_faults": [], "outside_faults": []}
    for op in ops:
        during = in_fault(op, windows, end_of_run)
        groups["during_faults" if during else "outside_faults"].append(op)
    out = {}
    for name, group in groups.items():
        ok = sum(1 for op in group if op.outcome == "ok")
        share = round(ok / len(group), 4) if group else None
        out[name] = {"ok": ok, "total": len(group), "ok_share": share}
    return out


def latency_ms(ops: Sequence[Operation]) -> dict[str, float | None]:
    """Percentiles of ok operations (the others' durations say more about timeouts)."""
    values = sorted((op.ret - op.call) * 1000 for op in ops if op.outcome == "ok" and op.ret)

    def pct(p: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, math.ceil(p * len(values)) - 1)], 2)

    return {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)}


def build_summary(
    *,
    ops: Sequence[Operation],
    windows: Sequence[FaultWindow],
    end_of_run: float,
    settings: dict[str, Any],
    checks: dict[str, Any],
    verdict: str,
    reasons: Sequence[str],
) -> dict[str, Any]:
    spans = [(w.start, w.end if w.end is not None else end_of_run) for w in windows]
    return {
        "verdict": verdict,
        "reasons": list(reasons),
        "settings": settings,
        "ops": op_counts(ops),
        "latency_ms_ok": latency_ms(ops),
        "availability": availability(ops, windows, end_of_run),
        "faults": [w.to_json() for w in windows],
        "faulted_seconds": round(faulted_time(spans), 3),
        "workload_seconds": round(end_of_run, 3),
        "checks": checks,
    }


def plot_latency(
    path: Path,
    ops: Sequence[Operation],
    windows: Sequence[FaultWindow],
    end_of_run: float,
    title: str,
    timeout_s: float,
) -> None:
    """Each op's latency against its call time, fault windows shaded and labelled.

    Unknown outcomes without a return time are drawn at the client timeout, so they show
    up as a line along the top rather than vanish.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    try:
        kinds = list(KIND_COLOURS)
        for w in windows:
            end = w.end if w.end is not None else end_of_run
            colour = KIND_COLOURS.get(w.kind, "#bbbbbb")
            ax.axvspan(w.start, end, color=colour, alpha=0.12, lw=0)
            lane = kinds.index(w.kind) if w.kind in kinds else 0  # one text row per kind
            ax.text(
                w.start,
                0.99 - 0.045 * lane,
                w.label(),
                transform=ax.get_xaxis_transform(),
                fontsize=6,
                color=colour,
                va="top",
                clip_on=True,
            )
        for outcome in OUTCOMES:
            chosen = [op for op in ops if op.outcome == outcome]
            ys = [1000 * ((op.ret or op.call + timeout_s) - op.call) for op in chosen]
            ax.scatter(
                [op.call for op in chosen],
                [max(0.05, y) for y in ys],
                s=4,
                color=OUTCOME_COLOURS[outcome],
                label=f"{outcome} ({len(chosen)})",
                alpha=0.7,
                lw=0,
            )
        ax.set_yscale("log")
        ax.set_xlim(0, max(end_of_run, 1.0))
        ax.set_xlabel("time since the workload started (s)")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="lower right", fontsize=8, markerscale=3)
        ax.grid(True, which="both", alpha=0.2)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
