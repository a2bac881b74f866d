"""Latency histograms and per-process results of `kv bench`, mergeable across processes.

A log-bucketed histogram (buckets 1% wide) keeps memory fixed however long a
run lasts, and merging the results of N worker processes is a sum of counts;
quantiles are then accurate to about 1%, plenty for p50/p90/p99.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)


@dataclass(slots=True)
class LatencyHistogram:
    """Counts of latencies in buckets [1.01^i, 1.01^(i+1)) microseconds."""

    buckets: Counter[int] = field(default_factory=Counter)
    count: int = 0
    total_s: float = 0.0
    max_s: float = 0.0

    def record(self, seconds: float) -> None:
        micros = max(seconds * 1e6, 1.0)
        self.buckets[int(math.log(micros) / _LOG_GROWTH)] += 1
        self.count += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    def merge(self, other: LatencyHistogram) -> None:
        self.buckets.update(other.buckets)
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def quantile_ms(self, q: float) -> float:
        """The latency (ms) below which a fraction `q` of the samples fall (upper bucket edge)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(_GROWTH ** (index + 1) / 1000.0, self.max_s * 1000.0)
        return self.max_s * 1000.0

    def summary(self) -> dict[str, float]:
        return {
            "p50": round(self.quantile_ms(0.50), 3),
            "p90": round(self.quantile_ms(0.90), 3),
            "p99": round(self.quantile_ms(0.99), 3),
            "max": round(self.max_s * 1000.0, 3),
            "mean": round(self.total_s / self.count * 1000.0, 3) if self.count else 0.0,
        }


@dataclass(slots=True)
class BenchResult:
    """What one worker (process or thread) measured; `merge` folds others into it."""

    latencies: dict[str, LatencyHistogram] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    not_found: int = 0
    elapsed_s: float = 0.0
    ops_per_sec: float = 0.0

    def record(self, op: str, seconds: float) -> None:
        hist = self.latencies.get(op)
        if hist is None:
            hist = self.latencies[op] = LatencyHistogram()
        hist.record(seconds)

    @property
    def ok(self) -> int:
        return sum(h.count for h in self.latencies.values())

    def finish(self, elapsed_s: float) -> None:
        self.elapsed_s = elapsed_s
        self.ops_per_sec = self.ok / elapsed_s if elapsed_s > 0 else 0.0

    def merge(self, other: BenchResult) -> None:
        """Add another worker's result: rates add up because the workers ran side by side."""
        for op, hist in other.latencies.items():
            self.latencies.setdefault(op, LatencyHistogram()).merge(hist)
        self.errors.update(other.errors)
        self.not_found += other.not_found
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.ops_per_sec += other.ops_per_sec

    def overall(self) -> LatencyHistogram:
        total = LatencyHistogram()
        for hist in self.latencies.values():
            total.merge(hist)
        return total

    def to_json(self, settings: dict[str, Any]) -> dict[str, Any]:
        return {
            **settings,
            "elapsed_s": round(self.elapsed_s, 3),
            "ops": self.ok,
            "ops_per_sec": round(self.ops_per_sec, 1),
            "latency_ms": self.overall().summary(),
            "by_op": {
                op: {"ops": h.count, "latency_ms": h.summary()}
                for op, h in sorted(self.latencies.items())
            },
            "errors": dict(sorted(self.errors.items())),
            "not_found": self.not_found,
        }

    def to_text(self, settings: dict[str, Any]) -> str:
        head = " ".join(f"{k}={v}" for k, v in settings.items())
        by_op = ", ".join(f"{op} {h.count}" for op, h in sorted(self.latencies.items()))
        lines = [
            f"kv bench: {head}",
            f"  ops      {self.ok} ok ({by_op or 'none'}), {sum(self.errors.values())} errors, "
            f"{self.not_found} not found",
            f"  rate     {self.ops_per_sec:.1f} ops/s over {self.elapsed_s:.2f} s",
            f"  latency  {_fmt(self.overall())}",
        ]
        if len(self.latencies) > 1:
            lines += [f"  {op:<8} {_fmt(h)}" for op, h in sorted(self.latencies.items())]
        if self.errors:
            kinds = ", ".join(f"{kind} {n}" for kind, n in self.errors.most_common())
            lines.append(f"  errors   {kinds}")
        return "\n".join(lines)


def _fmt(hist: LatencyHistogram) -> str:
    s = hist.summary()
    return "  ".join(f"{name} {s[name]:.2f} ms" for name in ("p50", "p90", "p99", "max"))
