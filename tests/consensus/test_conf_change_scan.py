"""A node asks at every campaign whether a committed membership change is still to be
handed out (`RaftLog.committed_change_not_handed_out`). After a restart with a long log
tail that question read every committed entry not yet applied, at every election
timeout: at a million keys, seconds of stalled loop each time. Now the committed
entries are read once, a bounded step per question."""

from __future__ import annotations

from consensus import Entry, EntryType, HardState, MemoryStorage
from consensus.log import CONF_SCAN_STEP, RaftLog

TAIL = 5 * CONF_SCAN_STEP


class _CountingStorage(MemoryStorage):
    """Counts the entries read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.read = 0

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        found = super().entries(lo, hi, max_bytes)
        self.read += len(found)
        return found


def _restarted_log(change_at: int | None) -> tuple[RaftLog, _CountingStorage]:
    """A log as after a restart: TAIL entries committed, none handed out yet."""
    storage = _CountingStorage()
    entries = [
        Entry(2, i, b"", EntryType.CONF_CHANGE if i == change_at else EntryType.NORMAL)
        for i in range(1, TAIL + 1)
    ]
    storage.save(HardState(2, "n1", TAIL), entries)
    storage.read = 0
    return RaftLog(storage), storage


def _ask(log: RaftLog, storage: _CountingStorage) -> bool:
    before = storage.read
    answer = log.committed_change_not_handed_out(after=0)
    assert storage.read - before <= CONF_SCAN_STEP, "one question read the whole tail"
    return answer


def test_a_tail_not_read_yet_counts_as_a_change_and_is_read_once() -> None:
    log, storage = _restarted_log(change_at=None)
    answers = [_ask(log, storage) for _ in range(TAIL // CONF_SCAN_STEP)]
    assert answers == [True] * (TAIL // CONF_SCAN_STEP - 1) + [False]
    assert storage.read == TAIL
    assert _ask(log, storage) is False
    assert storage.read == TAIL, "entries read before were read again"


def test_a_change_found_holds_until_it_is_handed_out() -> None:
    change = 3 * CONF_SCAN_STEP + 7
    log, storage = _restarted_log(change_at=change)
    assert all(_ask(log, storage) for _ in range(2 * TAIL // CONF_SCAN_STEP))
    handed_out = log.next_committed(max_bytes=None)
    assert handed_out[-1].index == TAIL
    assert _ask(log, storage) is False


def test_applying_past_the_unread_part_needs_no_reading() -> None:
    log, storage = _restarted_log(change_at=None)
    log.next_committed(max_bytes=None)  # the driver applies the tail first
    storage.read = 0
    assert _ask(log, storage) is False
    assert storage.read == 0
