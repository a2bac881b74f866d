"""The pieces behind `GET /metrics`: buckets, outcomes, and the exposition they make."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvstore.api.metrics import RequestStats, outcome
from kvstore.runtime.stats import Buckets, RuntimeStats


def test_buckets_follow_prometheus_le_semantics() -> None:
    b = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        b.observe(v)
    # le is "less than or equal": 0.1 falls in the 0.1 bucket, 1.0 in the 1.0 bucket.
    assert b.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert b.count == 5
    assert abs(b.sum - 8.65) < 1e-9


def test_outcomes_are_a_small_fixed_set() -> None:
    assert [outcome(s) for s in (200, 404, 409, 400, 413, 503, 504, 500)] == [
        "ok",
        "not_found",
        "conflict",
        "rejected",
        "rejected",
        "unavailable",
        "timeout",
        "error",
    ]


def test_request_stats_group_by_operation_and_outcome() -> None:
    stats = RequestStats()
    stats.observe("put", 200, 0.002)
    stats.observe("put", 201, 0.004)
    stats.observe("put", 504, 5.0)
    assert sorted(stats.by_label) == [("put", "ok"), ("put", "timeout")]
    assert stats.by_label[("put", "ok")].count == 2


def test_leader_history_is_bounded() -> None:
    stats = RuntimeStats()
    for term in range(50):
        stats.leader_changed(term, "n1", "test")
    assert stats.leader_changes == 50
    assert len(stats.leader_history) == 20 and stats.leader_history[-1].term == 49


def test_exposition_of_a_histogram_parses() -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import HistogramMetricFamily

    b = Buckets((0.5,))
    b.observe(0.2)

    class One:
        def collect(self):  # type: ignore[no-untyped-def]
            family = HistogramMetricFamily("x_seconds", "doc")
            family.add_metric([], b.cumulative(), b.sum)
            yield family

    registry = CollectorRegistry()
    registry.register(One())  # type: ignore[arg-type]
    (family,) = text_string_to_metric_families(generate_latest(registry).decode())
    by_name = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert by_name[("x_seconds_bucket", "0.5")] == 1
    assert by_name[("x_seconds_count", None)] == 1
