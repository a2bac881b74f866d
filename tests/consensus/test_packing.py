"""consensus.packing: reused Packers give packb's bytes, and never serve two callers at once."""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest

from consensus.packing import PackerPool, pack

VALUES: list[Any] = [
    [0, "key-00000001", b"x" * 256, None],
    [5, 123456, 0, b"\x94\x00"],
    [[3, 5, "n1", "n2", True, 123456, 0, 0, 7]] * 4,
    {"a": [1.5, -(2**63), 2**64 - 1, "é"]},
    [],
]


@pytest.mark.parametrize("value", VALUES)
def test_pack_gives_what_packb_gives(value: Any) -> None:
    assert pack(value) == msgpack.packb(value, use_bin_type=True)
    assert pack(value) == msgpack.packb(value, use_bin_type=True)  # and again, reused


def test_a_packer_is_reused_dropped_when_its_buffer_grew_and_after_a_failure() -> None:
    made: list[Any] = []

    def new_packer() -> msgpack.Packer:
        made.append(msgpack.Packer(use_bin_type=True, buf_size=1024))
        return made[-1]

    pool = PackerPool(new_packer, keep_up_to=1024)
    for value in VALUES:
        assert pool.pack(value) == msgpack.packb(value)
    assert len(made) == 1 and pool.idle() == 1
    big = [b"y" * 2000]
    assert pool.pack(big) == msgpack.packb(big)
    assert pool.idle() == 0  # its buffer grew: not kept
    with pytest.raises(TypeError):
        pool.pack([object()])
    assert pool.idle() == 0
    assert pool.pack(VALUES[0]) == msgpack.packb(VALUES[0])
    assert len(made) == 3 and pool.idle() == 1


def test_pack_each_packs_in_order_with_one_packer_kept_only_if_no_buffer_grew() -> None:
    made: list[Any] = []

    def new_packer() -> msgpack.Packer:
        made.append(msgpack.Packer(use_bin_type=True, buf_size=1024))
        return made[-1]

    pool = PackerPool(new_packer, keep_up_to=1024)
    assert pool.pack_each(VALUES) == [msgpack.packb(v) for v in VALUES]
    assert len(made) == 1 and pool.idle() == 1
    big = [b"y" * 2000]
    assert pool.pack_each([VALUES[0], big]) == [msgpack.packb(VALUES[0]), msgpack.packb(big)]
    assert pool.idle() == 0  # its buffer grew for one of them: not kept
    with pytest.raises(TypeError):
        pool.pack_each([VALUES[0], [object()]])
    assert pool.idle() == 0 and len(made) == 2


class _ExclusivePacker:
    """Fails if a second caller enters while one is inside; inside, waits at the test's
    current barrier, so callers that overlap at all overlap here."""

    def __init__(self, barrier: list[threading.Barrier]) -> None:
        self.barrier = barrier
        self.inside = False

    def pack(self, value: Any) -> bytes:
        assert not self.inside, "one Packer served two callers at once"
        self.inside = True
        try:
            self.barrier[0].wait()
            return msgpack.packb(value)
        finally:
            self.inside = False


def test_concurrent_callers_each_get_a_packer_of_their_own() -> None:
    """The event loop, the persist worker and the snapshot writer encode at once."""
    callers = 4
    barrier = [threading.Barrier(1)]  # alone: no wait
    made: list[_ExclusivePacker] = []

    def new_packer() -> _ExclusivePacker:
        made.append(_ExclusivePacker(barrier))
        return made[-1]

    pool = PackerPool(new_packer)
    pool.pack("first, alone")  # a packer waits in the pool: it must not serve two
    barrier[0] = threading.Barrier(callers, timeout=5)  # all callers inside at once
    failures: list[BaseException] = []
    results: dict[int, bytes] = {}

    def encode(i: int) -> None:
        try:
            results[i] = pool.pack([i, b"v" * i])
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=encode, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert failures == []
    assert results == {i: msgpack.packb([i, b"v" * i]) for i in range(callers)}
    assert len(made) == callers and pool.idle() == callers
    barrier[0] = threading.Barrier(1)
    pool.pack("again, alone")
    assert len(made) == callers  # a kept packer, no new one
