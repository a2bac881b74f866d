"""What a chaos run leaves behind: counts, availability, the verdict, and a latency chart.

The summary is JSON so scripts and CI can read it; the chart is there because a person
looking at a failure wants to see first whether it lines up with a fault.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvstore.chaos.history import KINDS, OUTCOMES, Operation
from kvstore.chaos.nemesis import FaultWindow, faulted_time

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFINITE_ERRORS = frozenset({"version_mismatch", "not_found"})
"""Refusals that are answers: the cluster was there and said a definite no."""
CATEGORIES = ("ok", "definite_no", "failed", "unknown")
CATEGORY_LABELS = {
    "ok": "ok",
    "definite_no": "definite no (version_mismatch, not_found)",
    "failed": "failed (unavailable, refused)",
    "unknown": "unknown outcome",
}
CATEGORY_COLOURS = {
    "ok": "#2a9d45",
    "definite_no": "#1f9bd1",
    "failed": "#e08a00",
    "unknown": "#d62728",
}
MAX_BAND_ENTRIES = 16
KIND_COLOURS = {
    "kill": "#d62728",
    "pause": "#9467bd",
    "partition": "#1f77b4",
    "delay": "#8c8c8c",
    "pause-holder": "#e377c2",
}


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


def category(op: Operation) -> str:
    """What an operation says about availability: "ok", "definite_no" (a correct
    version_mismatch or not_found), "failed" (no usable answer), or "unknown"."""
    if op.outcome == "fail":
        return "definite_no" if op.error in DEFINITE_ERRORS else "failed"
    return op.outcome


def is_available(op: Operation) -> bool:
    """The one definition of availability: the cluster gave a definite answer (ok or a
    definite no). A compare-and-set that lost a race was served, not refused."""
    return category(op) in ("ok", "definite_no")


def availability(
    ops: Sequence[Operation], windows: Sequence[FaultWindow], end_of_run: float
) -> dict[str, dict[str, Any]]:
    """Availability (see `is_available`) of the operations called during fault windows
    and of those called outside them, with the count of each category."""
    groups: dict[str, list[Operation]] = {"during_faults": [], "outside_faults": []}
    for op in ops:
        during = in_fault(op, windows, end_of_run)
        groups["during_faults" if during else "outside_faults"].append(op)
    out = {}
    for name, group in groups.items():
        counts = Counter(category(op) for op in group)
        available = counts["ok"] + counts["definite_no"]
        share = round(available / len(group), 4) if group else None
        out[name] = {
            "total": len(group),
            **{c: counts[c] for c in CATEGORIES},
            "available": available,
            "availability": share,
        }
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
    """Write `latency_figure` to `path` (PNG)."""
    import matplotlib.pyplot as plt

    fig = latency_figure(ops, windows, end_of_run, title, timeout_s)
    try:
        fig.savefig(path)
    finally:
        plt.close(fig)


def latency_figure(
    ops: Sequence[Operation],
    windows: Sequence[FaultWindow],
    end_of_run: float,
    title: str,
    timeout_s: float,
) -> Figure:
    """Each op's latency against its call time, coloured by `category`, with every
    fault window shaded, numbered and named in a legend of its own. The caller closes it.

    Unknown outcomes without a return time are drawn at the client timeout, so they show
    up as a line along the top rather than vanish.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    try:
        bands = []
        for number, w in enumerate(windows, 1):
            end = w.end if w.end is not None else end_of_run
            colour = KIND_COLOURS.get(w.kind, "#bbbbbb")
            # Overlapping bands stay apart: an outline, a number on top, a legend entry.
            ax.axvspan(w.start, end, facecolor=colour, alpha=0.10, edgecolor=colour, lw=0.8)
            ax.text(
                w.start,
                0.99 - 0.045 * ((number - 1) % 4),  # staggered, so close starts stay legible
                str(number),
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                color=colour,
                va="top",
                clip_on=True,
            )
            name = f"{number}: {w.label()} ({w.start:.1f}-{end:.1f} s)"
            bands.append(Patch(facecolor=colour, edgecolor=colour, alpha=0.3, label=name))
        dots = []
        for name in CATEGORIES:
            chosen = [op for op in ops if category(op) == name]
            ys = [1000 * ((op.ret or op.call + timeout_s) - op.call) for op in chosen]
            dots.append(
                ax.scatter(
                    [op.call for op in chosen],
                    [max(0.05, y) for y in ys],
                    s=4,
                    color=CATEGORY_COLOURS[name],
                    label=f"{CATEGORY_LABELS[name]} ({len(chosen)})",
                    alpha=0.7,
                    lw=0,
                )
            )
        ax.set_yscale("log")
        ax.set_xlim(0, max(end_of_run, 1.0))
        ax.set_xlabel("time since the workload started (s)")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title(title, fontsize=10)
        outcomes = ax.legend(handles=dots, loc="lower right", fontsize=8, markerscale=3)
        ax.add_artist(outcomes)
        if bands:
            shown = bands[:MAX_BAND_ENTRIES]
            more = len(bands) - len(shown)
            if more:
                shown.append(Patch(facecolor="white", label=f"... and {more} more faults"))
            ax.legend(
                handles=shown,
                title="faults",
                loc="upper left",
                bbox_to_anchor=(1.0, 1.0),
                fontsize=7,
                title_fontsize=8,
            )
        ax.grid(True, which="both", alpha=0.2)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig
