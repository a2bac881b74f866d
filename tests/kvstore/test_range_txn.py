"""Revisions, range reads, history, prev_revision CAS and transactions of KVStateMachine,
checked against a plain dict model (hypothesis) and one rule per test."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.types import Entry, EntryType
from kvstore.state.commands import (
    Command,
    Compare,
    Delete,
    Op,
    Put,
    SessionRef,
    Target,
    Txn,
    TxnDeleteRange,
    TxnOp,
    TxnPut,
    TxnRange,
    decode_command,
    encode_command,
)
from kvstore.state.history import Compacted, EventKind, FutureRevision
from kvstore.state.keyrange import Cursor, KeyRange, RangeQuery, prefix_end
from kvstore.state.machine import KVStateMachine
from kvstore.state.types import (
    DeleteRangeResult,
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
    RevisionMismatchResult,
    TxnResult,
    VersionMismatchResult,
)

KEYS = ["a", "ab", "abc", "b", "ba", "c", "é", "z\x00", "\U0001f600"]


class Driver:
    def __init__(self, sm: KVStateMachine | None = None) -> None:
        self.sm = sm if sm is not None else KVStateMachine()

    def run(self, command: Command) -> object:
        index = self.sm.applied_index + 1
        return self.sm.apply(Entry(term=1, index=index, data=encode_command(command)))


Model = dict[str, KeyValue]


class ModelStore:
    """The obvious implementation: a dict per revision, sorted() for every read."""

    def __init__(self) -> None:
        self.states: list[Model] = [{}]

    @property
    def now(self) -> Model:
        return self.states[-1]

    def write(self, changes: dict[str, bytes | None]) -> None:
        revision = len(self.states)
        state = dict(self.now)
        for key, value in changes.items():
            old = state.get(key)
            if value is None:
                state.pop(key, None)
            elif old is None:
                state[key] = KeyValue(key, value, 1, revision, revision)
            else:
                state[key] = KeyValue(key, value, old.version + 1, old.create_revision, revision)
        self.states.append(state)

    def slice(self, revision: int, keys: KeyRange) -> list[KeyValue]:
        state = self.states[revision]
        return [state[k] for k in sorted(state) if k in keys]


ranges = st.one_of(
    st.sampled_from(KEYS).map(KeyRange.single),
    st.sampled_from(["", "a", "ab", "b", "z", "é"]).map(KeyRange.prefix),
    st.tuples(st.sampled_from(["", *KEYS]), st.sampled_from([None, *KEYS])).map(
        lambda t: KeyRange(*t)
    ),
)
writes = st.lists(
    st.tuples(st.sampled_from(KEYS), st.one_of(st.none(), st.binary(max_size=3))),
    min_size=1,
    max_size=40,
)


def _apply_writes(ops: list[tuple[str, bytes | None]]) -> tuple[Driver, ModelStore]:
    d, model = Driver(), ModelStore()
    for key, value in ops:
        if value is None:
            if key in model.now:
                assert d.run(Delete(key)) == DeleteResult(len(model.states))
                model.write({key: None})
        else:
            result = d.run(Put(key, value))
            model.write({key: value})
            assert result == PutResult(len(model.states) - 1, model.now[key].version)
    return d, model


@settings(max_examples=150, deadline=None)
@given(writes, ranges, st.data())
def test_a_range_at_any_retained_revision_is_the_sorted_slice_of_the_dict(
    ops: list[tuple[str, bytes | None]], keys: KeyRange, data: st.DataObject
) -> None:
    d, model = _apply_writes(ops)
    assert d.sm.revision == len(model.states) - 1
    revision = data.draw(st.integers(0, d.sm.revision))  # 0 means the current one
    expected = model.slice(revision or d.sm.revision, keys)
    whole = d.sm.range(RangeQuery(keys, revision=revision))
    assert whole == RangeResult(revision or d.sm.revision, tuple(expected), len(expected), False)
    count = d.sm.range(RangeQuery(keys, revision=revision, count_only=True))
    assert (count.count, count.kvs) == (len(expected), ())
    newest = sorted(expected, key=lambda kv: (-kv.mod_revision, kv.key))
    for order, want in ((False, expected), (True, newest)):
        limit = data.draw(st.integers(1, 4))
        pages: list[KeyValue] = []
        after = None
        while True:
            q = RangeQuery(keys, revision, limit, newest_first=order, after=after)
            page = d.sm.range(q)
            assert len(page.kvs) <= limit and page.count == len(expected)
            pages += page.kvs
            if not page.more:
                break
            after = Cursor(page.kvs[-1].mod_revision, page.kvs[-1].key)
        assert pages == want


@settings(max_examples=100, deadline=None)
@given(writes)
def test_revisions_grow_by_one_per_write_and_create_revision_survives_updates(
    ops: list[tuple[str, bytes | None]],
) -> None:
    d, model = _apply_writes(ops)
    for kv in model.now.values():
        assert d.sm.get(kv.key) == kv
        assert kv.create_revision <= kv.mod_revision <= d.sm.revision


def test_create_revision_resets_on_re_create_and_version_restarts() -> None:
    d = Driver()
    d.run(Put("k", b"1"))
    d.run(Put("k", b"2"))
    assert d.sm.get("k") == KeyValue("k", b"2", 2, 1, 2)
    d.run(Delete("k"))
    d.run(Put("k", b"3"))
    assert d.sm.get("k") == KeyValue("k", b"3", 1, 4, 4)


def test_prev_revision_rejects_the_aba_sequence_that_prev_version_lets_through() -> None:
    d = Driver()
    first = d.run(Put("k", b"A", prev_revision=0))
    assert first == PutResult(1, 1)
    d.run(Delete("k"))
    d.run(Put("k", b"B"))  # another incarnation, version 1 again
    # A client that read the first incarnation (mod_revision 1) must be refused ...
    assert d.run(Put("k", b"C", prev_revision=1)) == RevisionMismatchResult(3)
    assert d.run(Delete("k", prev_revision=1)) == RevisionMismatchResult(3)
    assert d.sm.get("k") == KeyValue("k", b"B", 1, 3, 3)
    # ... which version-based CAS cannot do (documented limit of prev_version).
    assert d.run(Put("k", b"C", prev_version=1)) == PutResult(4, 2)
    assert d.run(Put("k", b"D", prev_revision=4)) == PutResult(5, 3)
    assert d.run(Put("new", b"x", prev_revision=0)) == PutResult(6, 1)
    assert d.run(Put("new", b"x", prev_revision=0)) == RevisionMismatchResult(6)
    assert d.run(Put("k", b"E", prev_version=9, prev_revision=5)) == VersionMismatchResult(3)


def test_reads_older_than_the_window_are_compacted_and_newer_are_future() -> None:
    d = Driver(KVStateMachine(history_revisions=3))
    for i in range(10):
        d.run(Put("k", str(i).encode()))
    assert d.sm.history.compact_revision == 7
    assert d.sm.range(RangeQuery(KeyRange.single("k"), revision=7)).kvs[0].value == b"6"
    with pytest.raises(Compacted):
        d.sm.range(RangeQuery(KeyRange.single("k"), revision=6))
    with pytest.raises(FutureRevision):
        d.sm.range(RangeQuery(KeyRange.single("k"), revision=11))
    events = list(d.sm.history.events_since(8))
    assert [(e.kind, e.revision, e.prev and e.prev.value) for e in events] == [
        (EventKind.PUT, 9, b"7"),
        (EventKind.PUT, 10, b"8"),
    ]


def test_history_and_past_reads_survive_a_snapshot_and_old_snapshots_still_restore() -> None:
    d = Driver(KVStateMachine(history_revisions=100))
    for i in range(5):
        d.run(Put(f"k{i % 2}", str(i).encode()))
    d.run(Delete("k0"))
    copy = KVStateMachine(history_revisions=100)
    copy.restore(d.sm.snapshot())
    assert copy.snapshot() == d.sm.snapshot()
    q = RangeQuery(KeyRange.prefix("k"), revision=3)
    assert copy.range(q) == d.sm.range(q)
    assert [kv.value for kv in copy.range(q).kvs] == [b"2", b"1"]
    smaller = KVStateMachine(history_revisions=2)
    smaller.restore(d.sm.snapshot())
    assert smaller.history.compact_revision == 4
    # Format 2 (no history): readable from its own revision on.
    old = KVStateMachine()
    old.restore(msgpack.packb([2, 9, 7, [["a", b"1", 2, 3, 7]], [], [], [], []]))
    assert old.range(RangeQuery(KeyRange.prefix(""))).kvs == (KeyValue("a", b"1", 2, 3, 7),)
    with pytest.raises(Compacted):
        old.range(RangeQuery(KeyRange.prefix(""), revision=6))


def test_prefix_end_is_the_first_string_past_the_prefix() -> None:
    assert prefix_end("ab") == "ac"
    assert prefix_end("") is None
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff"[:0] + "x\ud7ff") == "x\ue000"
    assert "ab\U0010ffff" in KeyRange.prefix("ab") and "ac" not in KeyRange.prefix("ab")


# --- transactions --------------------------------------------------------------------

compares = (
    st.builds(
        Compare,
        st.sampled_from(KEYS[:4]),
        st.sampled_from([Target.VERSION, Target.CREATE_REVISION, Target.MOD_REVISION]),
        st.sampled_from(list(Op)),
        st.integers(0, 6),
    )
    | st.builds(
        Compare,
        st.sampled_from(KEYS[:4]),
        st.just(Target.VALUE),
        st.sampled_from(list(Op)),
        st.binary(max_size=1),
    )
    | st.builds(
        Compare,
        st.sampled_from(KEYS[:4]),
        st.just(Target.EXISTS),
        st.sampled_from([Op.EQ, Op.NE]),
        st.booleans(),
    )
)


@st.composite
def branches(draw: st.DrawFn) -> tuple[TxnOp, ...]:
    ops: list[TxnOp] = []
    put_keys = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=3))
    for key in put_keys:
        ops.append(TxnPut(key, draw(st.binary(max_size=2))))
    for keys in draw(st.lists(ranges, max_size=2)):
        if any(k in keys for k in put_keys):
            ops.append(TxnRange(RangeQuery(keys)))
        else:
            ops.append(TxnDeleteRange(keys))
    return tuple(draw(st.permutations(ops)))


def _model_holds(c: Compare, kv: KeyValue | None) -> bool:
    if c.target is Target.EXISTS:
        return (kv is not None) is c.operand if c.op is Op.EQ else (kv is not None) is not c.operand
    if c.target is Target.VALUE and kv is None:
        return False
    actual = {
        Target.VERSION: kv.version if kv else 0,
        Target.CREATE_REVISION: kv.create_revision if kv else 0,
        Target.MOD_REVISION: kv.mod_revision if kv else 0,
        Target.VALUE: kv.value if kv else b"",
    }[c.target]
    return {
        Op.EQ: actual == c.operand,
        Op.NE: actual != c.operand,
        Op.LT: actual < c.operand,  # type: ignore[operator]
        Op.GT: actual > c.operand,  # type: ignore[operator]
    }[c.op]


@settings(max_examples=200, deadline=None)
@given(
    writes, st.lists(st.tuples(st.lists(compares, max_size=3), branches(), branches()), max_size=6)
)
def test_a_transaction_applies_exactly_its_branch_or_nothing(
    ops: list[tuple[str, bytes | None]],
    txns: list[tuple[list[Compare], tuple[TxnOp, ...], tuple[TxnOp, ...]]],
) -> None:
    d, model = _apply_writes(ops)
    for cs, then, other in txns:
        before = d.sm.revision
        succeeded = all(_model_holds(c, model.now.get(c.key)) for c in cs)
        result = d.run(Txn(tuple(cs), then, other))
        assert isinstance(result, TxnResult) and result.succeeded is succeeded
        # The model runs the chosen branch op by op on a scratch dict.
        branch = then if succeeded else other
        state = dict(model.now)
        changes: dict[str, bytes | None] = {}
        seen: list[list[str]] = []  # what each read in the branch must see
        for op in branch:
            if type(op) is TxnRange:
                seen.append(sorted(k for k in state if k in op.query.keys))
            elif type(op) is TxnPut:
                changes[op.key] = op.value
                state[op.key] = KeyValue(op.key, op.value, 0, 0, 0)
            elif type(op) is TxnDeleteRange:
                for key in [k for k in state if k in op.keys]:
                    changes[key] = None
                    del state[key]
        if changes:
            model.write(changes)
        assert d.sm.revision == before + (1 if changes else 0) == len(model.states) - 1
        assert result.revision == d.sm.revision
        everything = d.sm.range(RangeQuery(KeyRange("")))
        assert list(everything.kvs) == model.slice(len(model.states) - 1, KeyRange(""))
        assert len(result.results) == len(branch)
        for op, res in zip(branch, result.results, strict=True):
            if type(op) is TxnRange:
                assert type(res) is RangeResult
                assert [kv.key for kv in res.kvs] == seen.pop(0)
            elif type(op) is TxnDeleteRange:
                assert type(res) is DeleteRangeResult


def test_a_transaction_is_one_revision_and_its_reads_see_its_writes() -> None:
    d = Driver()
    d.run(Put("stock/apple", b"3"))
    txn = Txn(
        (Compare("stock/apple", Target.VALUE, Op.EQ, b"3"),),
        (
            TxnPut("stock/apple", b"2"),
            TxnPut("orders/1", b"apple"),
            TxnRange(RangeQuery(KeyRange.prefix("orders/"))),
        ),
        (TxnRange(RangeQuery(KeyRange.single("stock/apple"))),),
    )
    result = d.run(txn)
    assert result == TxnResult(
        True,
        2,
        (
            PutResult(2, 2),
            PutResult(2, 1),
            RangeResult(2, (KeyValue("orders/1", b"apple", 1, 2, 2),), 1, False),
        ),
    )
    again = d.run(txn)  # the compare fails now: the else branch reads, nothing changes
    assert isinstance(again, TxnResult) and not again.succeeded and again.revision == 2
    assert again.results[0].kvs[0].value == b"2"  # type: ignore[union-attr]
    assert [e.kv.key for e in d.sm.history.events_since(1)] == ["stock/apple", "orders/1"]


def test_a_retried_transaction_is_answered_from_its_session_not_applied_twice() -> None:
    d = Driver()
    txn = Txn(
        (), (TxnPut("a", b"1"), TxnRange(RangeQuery(KeyRange("")))), (), SessionRef("c", 1, 1)
    )
    first = d.run(txn)
    assert d.run(txn) == first and d.sm.revision == 1
    copy = KVStateMachine()
    copy.restore(d.sm.snapshot())  # the stored txn result travels in the snapshot
    assert Driver(copy).run(txn) == first and copy.revision == 1


def test_read_only_transactions_are_served_without_the_log() -> None:
    d = Driver()
    d.run(Put("a", b"1"))
    ro = Txn((Compare("a", Target.EXISTS, Op.EQ, True),), (TxnRange(RangeQuery(KeyRange(""))),))
    assert not ro.writes and d.sm.read_txn(ro).results[0].count == 1  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        d.sm.read_txn(Txn((), (TxnPut("a", b"2"),)))


@pytest.mark.parametrize(
    "command",
    [
        Put("k", b"v", None, None, 0),
        Put("k", b"v", 2, SessionRef("c", 3, 2), 17),
        Delete("k", None, None, 5),
        Delete("k", 1, SessionRef("c", 1, 1), 0),
        Txn(
            (
                Compare("a", Target.VALUE, Op.NE, b"x"),
                Compare("b", Target.EXISTS, Op.EQ, False),
                Compare("c", Target.MOD_REVISION, Op.LT, 9),
            ),
            (TxnPut("a", b"1"), TxnDeleteRange(KeyRange.prefix("p/"))),
            (TxnRange(RangeQuery(KeyRange("a", None), 0, 5, True, False, True, Cursor(3, "q"))),),
            SessionRef("c", 2, 1),
        ),
    ],
)
def test_new_commands_round_trip_and_plain_writes_keep_the_old_encoding(command: Command) -> None:
    assert decode_command(encode_command(command)) == command
    assert encode_command(Put("k", b"v", 1)) == msgpack.packb([1, "k", b"v", 1])
    assert encode_command(Delete("k")) == msgpack.packb([2, "k", None])


@pytest.mark.parametrize(
    "build",
    [
        lambda: Txn((), (TxnPut("a", b"1"), TxnPut("a", b"2"))),
        lambda: Txn((), (TxnPut("ab", b"1"), TxnDeleteRange(KeyRange.prefix("a")))),
        lambda: Compare("a", Target.EXISTS, Op.LT, True),
        lambda: Compare("a", Target.VALUE, Op.EQ, 3),
        lambda: Compare("a", Target.VERSION, Op.EQ, True),
        lambda: TxnRange(RangeQuery(KeyRange(""), revision=3)),
        lambda: Put("k", b"v", prev_revision=-1),
    ],
)
def test_malformed_transactions_are_refused_when_built(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_a_noop_does_not_disturb_history() -> None:
    d = Driver()
    d.run(Put("a", b"1"))
    d.sm.apply(Entry(term=1, index=2, type=EntryType.NOOP))
    assert d.sm.revision == 1 and len(d.sm.history) == 1
