"""Flow control in bytes (Config.max_inflight_bytes): a follower far behind, such as a new
node after its snapshot, gets a few batches per acknowledgement. It used to get the whole
window at once (64 batches of 1 MiB, read, decoded and encoded in one turn), which at a
million keys stalled the leader's loop for a second and cost it its office."""

from __future__ import annotations

from consensus import Config, Entry
from consensus.progress import Progress

MIB = 1 << 20


def _batch(first: int) -> list[Entry]:
    """Two entries of half a MiB each (Entry.size counts 24 bytes of framing)."""
    return [Entry(1, first + i, b"x" * (MIB // 2 - 24)) for i in range(2)]


def _replicating(max_inflight_bytes: int) -> Progress:
    config = Config("n1", ("n1", "n2"), max_inflight=64, max_inflight_bytes=max_inflight_bytes)
    progress = Progress(1, config)
    progress.become_replicate()
    return progress


def test_bytes_in_flight_pause_a_follower_until_it_acknowledges() -> None:
    progress = _replicating(2 * MIB)
    progress.sent(_batch(1))
    assert not progress.is_paused()
    progress.sent(_batch(3))
    assert progress.is_paused(), "a third MiB would go out before any acknowledgement"
    assert progress.maybe_update(2)
    assert not progress.is_paused()
    assert progress.inflight_bytes == MIB
    progress.become_probe()
    assert progress.inflight_bytes == 0


def test_a_batch_larger_than_the_limit_still_goes_when_nothing_is_in_flight() -> None:
    progress = _replicating(1)
    assert not progress.is_paused()
    progress.sent(_batch(1))
    assert progress.is_paused()
    progress.maybe_update(2)
    assert not progress.is_paused()


def test_small_batches_are_limited_by_count_as_before() -> None:
    progress = _replicating(2 * MIB)
    for index in range(1, 65):
        assert not progress.is_paused()
        progress.sent([Entry(1, index, b"v")])
    assert progress.is_paused()
