"""Operation records: what is accepted, how they read, and the JSON-lines round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvstore.chaos.history import Operation, read_history, write_history
from tests.chaos.builders import cas, delete, get, put


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    ops = [
        put("k", b"plain text", 0.5, 1.25, version=1),
        put("k", b"\xff\x00 not utf-8", 1.5, None),
        cas("k", "é".encode(), 1, 2.0, 3.0, outcome="fail", version=2),
        delete("k", 3.0, 4.0, outcome="fail", error="not_found", prev=2),
        get("k", b"", 4.0, 5.0, version=3),
        get("other key/with slash", None, 5.0, 6.0),
        Operation(
            client=7, kind="get", key="k", call=6.0, ret=7.0, outcome="fail", error="no_leader"
        ),
        Operation(
            client=3,
            kind="put",
            key="k",
            value=b"v",
            call=7.0,
            ret=9.0,
            outcome="ok",
            revision=42,
            version=5,
        ),
    ]
    path = tmp_path / "history.jsonl"
    write_history(path, ops)
    assert read_history(path) == ops
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(ops)
    assert json.loads(lines[0])["value"] == "plain text"  # readable when it can be
    assert "value_b64" in json.loads(lines[1])


def test_read_history_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    good = '{"client":1,"kind":"get","key":"k","call":0,"ret":1,"outcome":"ok","found":false}'
    path.write_text(good + "\n\n" + '{"client":1,"kind":"get","key":"k","colour":1}\n')
    with pytest.raises(ValueError, match=r"history.jsonl:3: .*colour"):
        read_history(path)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"kind": "cas", "value": b"v"}, "prev_version"),
        ({"kind": "put"}, "bytes value"),
        ({"kind": "put", "value": b"v", "prev_version": 1}, "is a cas"),
        ({"kind": "get", "ret": None}, "return time"),
        ({"kind": "get", "ret": -1.0}, "before call"),
        ({"kind": "get", "outcome": "fail", "error": "not_found"}, "found=False"),
        ({"kind": "get", "found": True}, "read_value"),
        ({"kind": "delete", "outcome": "fail", "error": "version_mismatch"}, "prev_version"),
        ({"kind": "scan"}, "kind"),
    ],
)
def test_records_a_recorder_could_only_get_wrong_are_refused(
    fields: dict[str, object], problem: str
) -> None:
    base: dict[str, object] = {
        "client": 1,
        "key": "k",
        "call": 0.0,
        "ret": 1.0,
        "outcome": "ok",
        "found": False,
    }
    base.update(fields)
    if base["kind"] != "get":
        base.pop("found")
    with pytest.raises(ValueError, match=problem):
        Operation(**base)  # type: ignore[arg-type]


def test_unknown_outcome_may_keep_the_time_the_client_gave_up() -> None:
    op = put("k", b"v", 1.0, 2.0, outcome="unknown", error="timeout")
    assert op.end == float("inf")
    assert "unknown outcome" in op.describe()


def test_describe_says_what_happened() -> None:
    assert "get('k') → b'v' (version 3)" in get("k", b"v", 0.0, 1.0, version=3).describe()
    assert "not found" in get("k", None, 0.0, 1.0).describe()
    text = cas("k", b"x", 2, 0.0, 1.0, outcome="fail", version=4).describe()
    assert "prev_version=2" in text
    assert "failed version_mismatch (current version 4)" in text
