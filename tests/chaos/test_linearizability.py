"""Hand-written histories with a known verdict, one per kind of anomaly the checker is for.

Times are small integers; an operation [a, b] took effect at one instant within it.
"""

from __future__ import annotations

import pytest

from kvstore.chaos.history import Operation
from kvstore.chaos.linearizability import CheckResult, check_history
from tests.chaos.builders import cas, delete, get, put


def check(*ops: Operation, **kwargs: object) -> CheckResult:
    return check_history(list(ops), **kwargs)  # type: ignore[arg-type]


def assert_violation(result: CheckResult, key: str, *culprits: Operation) -> None:
    assert result.ok is False, result.explanation
    assert result.key == key
    assert f"key {key!r}" in result.explanation
    for op in culprits:
        assert op in result.window, result.explanation
        assert op.describe() in result.explanation


def test_a_sequential_history_of_every_kind_is_linearizable() -> None:
    result = check(
        get("k", None, 0, 1),
        put("k", b"a", 2, 3, version=1),
        get("k", b"a", 4, 5, version=1),
        cas("k", b"b", 1, 6, 7, version=2),
        cas("k", b"c", 1, 8, 9, outcome="fail", version=2),
        delete("k", 10, 11, prev=2),
        delete("k", 12, 13, outcome="fail", error="not_found"),
        cas("k", b"d", 0, 14, 15, version=1),
        get("k", b"d", 16, 17, version=1),
    )
    assert result.ok is True, result.explanation
    assert result.window == []


def test_stale_read_is_rejected_and_the_window_shows_why() -> None:
    newer = put("k", b"b", 2, 3, version=2)
    stale = get("k", b"a", 4, 5, version=1)
    result = check(put("k", b"a", 0, 1, version=1), newer, stale)
    assert_violation(result, "k", stale)
    assert result.window == [newer, stale]
    assert "b'b' (version 2)" in result.explanation  # what the key held instead


def test_lost_write_is_rejected() -> None:
    lost = put("k", b"b", 2, 3)
    later = get("k", b"a", 6, 7)
    result = check(put("k", b"a", 0, 1), lost, get("k", b"a", 4, 5), later)
    assert_violation(result, "k", lost)
    assert later not in result.window  # the first read that misses the write suffices


@pytest.mark.parametrize("prev", [0, 2, 5])
def test_cas_accepted_on_a_wrong_version_is_rejected(prev: int) -> None:
    accepted = cas("k", b"b", prev, 2, 3)
    assert_violation(check(put("k", b"a", 0, 1), accepted), "k", accepted)


def test_a_value_seen_then_unseen_is_rejected() -> None:
    old_again = get("k", b"a", 5, 6, client=4)
    result = check(
        put("k", b"a", 0, 1),
        put("k", b"b", 2, 10),  # still running when both reads happen
        get("k", b"b", 3, 4, client=3),
        old_again,
    )
    assert_violation(result, "k", old_again)


def test_an_unknown_write_taking_effect_late_is_accepted() -> None:
    result = check(
        put("k", b"a", 0, 1, version=1),
        put("k", b"b", 2, None),
        get("k", b"a", 3, 4, version=1),
        get("k", b"a", 50, 51, version=1),
        get("k", b"b", 100, 101, version=2),
    )
    assert result.ok is True, result.explanation


def test_an_unknown_write_that_never_takes_effect_is_accepted() -> None:
    result = check(
        put("k", b"a", 0, 1, version=1),
        put("k", b"b", 2, None),
        delete("k", 3, None),
        get("k", b"a", 10, 11, version=1),
    )
    assert result.ok is True, result.explanation


def test_an_unknown_write_takes_effect_at_most_once_and_not_before_its_call() -> None:
    early = get("k", b"u", 0, 1)
    assert_violation(check(early, put("k", b"u", 2, None)), "k", early)
    again = get("k", b"u", 6, 7)
    result = check(
        put("k", b"u", 0, None),
        get("k", b"u", 2, 3),
        put("k", b"b", 4, 5),
        again,
    )
    assert_violation(result, "k", again)


@pytest.mark.parametrize("winner", [b"a", b"b"])
def test_overlapping_writes_may_take_effect_in_either_order(winner: bytes) -> None:
    result = check(
        put("k", b"a", 0, 10, client=1),
        put("k", b"b", 1, 9, client=2),
        get("k", winner, 11, 12, version=2),
    )
    assert result.ok is True, result.explanation


@pytest.mark.parametrize("seen", [None, b"a"])
def test_a_read_overlapping_a_write_may_see_before_or_after(seen: bytes | None) -> None:
    result = check(put("k", b"a", 0, 10), get("k", seen, 1, 2), get("k", b"a", 11, 12))
    assert result.ok is True, result.explanation


@pytest.mark.parametrize("reported", [None, 3])
def test_a_failed_cas_is_information(reported: int | None) -> None:
    # The key was at version 1, so a cas expecting 1 must have succeeded.
    refused = cas("k", b"b", 1, 2, 3, outcome="fail", version=reported)
    assert_violation(check(put("k", b"a", 0, 1, version=1), refused), "k", refused)
    racing = check(
        put("k", b"a", 0, 1, version=1),
        put("k", b"z", 2, 5, version=2),
        cas("k", b"b", 1, 3, 4, outcome="fail", version=2),
    )
    assert racing.ok is True, racing.explanation


def test_a_failed_cas_must_report_the_version_the_key_had() -> None:
    wrong = cas("k", b"b", 0, 2, 3, outcome="fail", version=2)
    assert_violation(check(put("k", b"a", 0, 1, version=1), wrong), "k", wrong)


def test_delete_outcomes_must_match_the_key() -> None:
    missing = delete("k", 2, 3, outcome="fail", error="not_found")
    assert_violation(check(put("k", b"a", 0, 1), missing), "k", missing)
    phantom = delete("k", 0, 1)
    assert_violation(check(phantom), "k", phantom)
    fine = check(put("k", b"a", 0, 1), delete("k", 2, 3), get("k", None, 4, 5))
    assert fine.ok is True, fine.explanation


def test_a_definite_failure_never_takes_effect_but_an_unknown_one_may() -> None:
    seen = get("k", b"b", 2, 3)
    refused = put("k", b"b", 0, 1, outcome="fail", error="no_leader")
    assert_violation(check(refused, seen), "k", seen)
    # 409 session_expired filed as a failure still means "maybe applied".
    expired = put("k", b"b", 0, 1, outcome="fail", error="session_expired")
    assert check(expired, seen).ok is True


def test_versions_returned_by_writes_are_checked() -> None:
    skipped = put("k", b"b", 2, 3, version=3)
    assert_violation(check(put("k", b"a", 0, 1, version=1), skipped), "k", skipped)
    recreated = put("k", b"c", 6, 7, version=1)
    ok = check(put("k", b"a", 0, 1, version=1), delete("k", 2, 3), recreated)
    assert ok.ok is True, ok.explanation


def test_keys_are_checked_independently_and_the_bad_one_is_named() -> None:
    bad = get("b", b"never written", 0, 1)
    result = check(
        put("a", b"1", 0, 1),
        get("a", b"1", 2, 3),
        bad,
        put("c", b"1", 0, 1),
        get("c", None, 2, 3),
    )
    assert_violation(result, "b", bad)
    assert result.violations == ["b", "c"]
    assert "the key's state when the history began (missing)" in result.explanation


def test_initial_state_is_where_keys_start() -> None:
    history = [get("k", b"x", 0, 1, version=3), put("k", b"y", 2, 3, version=4)]
    assert check(*history).ok is False
    assert check(*history, initial_state={"k": (b"x", 3)}).ok is True


def test_window_stays_short_in_a_long_history() -> None:
    ops = []
    for i in range(200):
        ops.append(put("k", b"v%d" % i, 4 * i, 4 * i + 1, version=i + 1))
        ops.append(get("k", b"v%d" % i, 4 * i + 2, 4 * i + 3, version=i + 1))
    stale = get("k", b"v150", 900, 901, version=151)
    result = check(*ops, stale)
    assert_violation(result, "k", stale)
    assert len(result.window) <= 3, result.explanation


def test_running_out_of_time_gives_no_verdict() -> None:
    # 30 overlapping writes, then a read nothing explains: proving that means ruling
    # out every order of the writes, far more than 0.2 s allows.
    ops = [put("k", b"%d" % i, 0, 100, client=i) for i in range(30)]
    ops.append(get("k", b"no such value", 101, 102, version=30))
    result = check(*ops, time_limit=0.2)
    assert result.ok is None
    assert result.undecided == ["k"]
    assert "could not be decided" in result.explanation
