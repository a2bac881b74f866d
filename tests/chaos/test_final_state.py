"""End-of-run checks: replicas agree, and the data they ended with is explained."""

from __future__ import annotations

from kvstore.chaos.linearizability import check_acknowledged_writes, check_convergence
from tests.chaos.builders import delete, get, put


def test_converged_replicas_report_nothing() -> None:
    same = {"a": (b"1", 2), "b": (b"x", 1)}
    assert check_convergence({"n1": same, "n2": dict(same), "n3": dict(same)}) == []
    assert check_convergence({}) == []


def test_diverged_replicas_are_named_per_key() -> None:
    problems = check_convergence(
        {
            "n1": {"a": (b"1", 2), "b": (b"x", 1)},
            "n2": {"a": (b"1", 2), "b": (b"y", 2)},
            "n3": {"a": (b"1", 2)},
        }
    )
    assert len(problems) == 1
    assert problems[0].startswith("key 'b' differs between nodes:")
    for part in ("n1 b'x' (version 1)", "n2 b'y' (version 2)", "n3 missing"):
        assert part in problems[0]


HISTORY = [
    put("k", b"a", 0, 1, version=1),
    put("k", b"b", 2, 3, version=2),
    put("k", b"maybe", 4, None),
    put("gone", b"g", 0, 1, version=1),
    delete("gone", 2, 3),
]


def test_final_state_explained_by_the_last_acknowledged_writes() -> None:
    assert check_acknowledged_writes(HISTORY, {"k": (b"b", 2)}) == []


def test_a_write_with_unknown_outcome_may_be_the_last_one() -> None:
    assert check_acknowledged_writes(HISTORY, {"k": (b"maybe", 3)}) == []


def test_an_acknowledged_write_lost_at_the_end_is_reported() -> None:
    problems = check_acknowledged_writes(HISTORY, {"k": (b"a", 1)})
    assert len(problems) == 1
    assert problems[0].startswith("key 'k': the final state (b'a' (version 1))")


def test_final_states_nothing_explains_are_reported() -> None:
    cases = [
        {"k": (b"b", 5)},  # right value, impossible version
        {},  # 'k' vanished although nobody deleted it
        {"k": (b"b", 2), "gone": (b"g", 1)},  # a deleted key came back
        {"k": (b"b", 2), "stray": (b"s", 1)},  # a key nobody wrote
    ]
    for final in cases:
        problems = check_acknowledged_writes(HISTORY, final)
        assert len(problems) == 1, (final, problems)


def test_the_final_read_comes_after_every_operation() -> None:
    # A read during the run saw 'b'; the final state may not go back to 'a'.
    history = [put("k", b"a", 0, 1), put("k", b"b", 2, 10), get("k", b"b", 3, 4)]
    assert check_acknowledged_writes(history, {"k": (b"b", 2)}) == []
    assert len(check_acknowledged_writes(history, {"k": (b"a", 1)})) == 1
