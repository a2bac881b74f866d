"""What LevelDBStorage checks when it opens, so a damaged disk stops the node with a
message instead of letting it run on a log shorter than its promises (issue 10,
items 6 and 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plyvel
import pytest

from consensus.codec import encode_hard_state
from consensus.types import Entry, HardState
from kvstore.runtime.leveldb_storage import CorruptLogError, LevelDBStorage, _seal
from kvstore.server import StartupError, _open_storage


def _entries(terms: list[int]) -> list[Entry]:
    return [Entry(term, i + 1, b"v%d" % i) for i, term in enumerate(terms)]


def _tamper(path: Path, change: Any) -> None:
    db = plyvel.DB(str(path))
    try:
        change(db)
    finally:
        db.close()


def test_terms_that_go_down_along_the_log_stop_the_open(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    storage = LevelDBStorage(path)
    storage.save(HardState(3, None, 0), _entries([1, 3, 2]))
    storage.close()
    with pytest.raises(CorruptLogError, match="term") as caught:
        LevelDBStorage(path)
    assert str(path) in str(caught.value) and caught.value.index == 3


def test_a_commit_index_past_the_log_end_stops_the_open(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    storage = LevelDBStorage(path)
    storage.save(HardState(1, None, 10), _entries([1, 1, 1]))
    storage.close()
    with pytest.raises(CorruptLogError, match="commit index 10") as caught:
        LevelDBStorage(path)
    assert str(path) in str(caught.value)


def test_a_log_that_lost_its_committed_end_is_refused(tmp_path: Path) -> None:
    """LevelDB dropping the end of its .log loses the newest batches whole: entries AND
    the hard state written with them, so the log looks consistent, only shorter. The
    committed watermark kept beside it still knows better."""
    path = tmp_path / "raft"
    storage = LevelDBStorage(path)
    for i in range(1, 51):
        storage.save(HardState(2, "n1", i - 1), [Entry(2, i, b"x")])
    storage.save(HardState(2, "n1", 50), [])
    storage.close()

    def lose_the_tail(db: Any) -> None:  # what LevelDB's recovery from a half .log leaves
        for i in range(31, 51):
            db.delete(b"e" + i.to_bytes(8, "big"))
        db.put(b"hardstate", _seal(encode_hard_state(HardState(2, "n1", 30))))

    _tamper(path, lose_the_tail)
    with pytest.raises(CorruptLogError, match="committed") as caught:
        LevelDBStorage(path)
    text = str(caught.value)
    assert str(path) in text and "50" in text and "30" in text


def test_corruption_is_not_reported_as_a_lock(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    storage = LevelDBStorage(path)
    storage.save(HardState(1, None, 0), [Entry(1, i, b"x" * 1000) for i in range(1, 3001)])
    storage.close()
    _tamper(path, lambda db: db.compact_range())  # everything into .ldb tables
    tables = sorted(path.glob("*.ldb"), key=lambda p: p.stat().st_size)
    assert tables, "no table file to damage"
    victim = tables[-1]
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    victim.write_bytes(bytes(data))
    with pytest.raises(StartupError) as caught:
        _open_storage(path)
    text = str(caught.value)
    assert "in use by another process" not in text, text
    assert "corrupt" in text.lower() and str(path) in text
