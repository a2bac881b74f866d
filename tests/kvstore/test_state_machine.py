"""Rules of the replicated commands and of KVStateMachine, one test per rule."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.types import Entry, EntryType
from kvstore.config import Tuning
from kvstore.state.auth import Permission
from kvstore.state.auth_commands import (
    AuthDisable,
    AuthEnable,
    RoleAdd,
    RolePermission,
    UserAdd,
    UserRole,
)
from kvstore.state.commands import (
    MAX_CLIENT_ID_LENGTH,
    AsUser,
    Command,
    CommandDecodeError,
    Delete,
    Put,
    SessionRef,
    decode_command,
    encode_command,
)
from kvstore.state.machine import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_TTL_ENTRIES,
    ApplyOrderError,
    ApplyResult,
    DeleteResult,
    KeyValue,
    KVStateMachine,
    NotFoundResult,
    PutResult,
    SessionExpiredResult,
    SnapshotError,
    VersionMismatchResult,
)


class Driver:
    """Feeds a state machine entries with consecutive indexes, as the runtime does."""

    def __init__(self, sm: KVStateMachine | None = None) -> None:
        self.sm = sm if sm is not None else KVStateMachine()

    def entry(self, command: Command | None) -> Entry:
        index = self.sm.applied_index + 1
        if command is None:
            return Entry(term=1, index=index, type=EntryType.NOOP)
        return Entry(term=1, index=index, data=encode_command(command))

    def run(self, command: Command | None) -> ApplyResult | None:
        return self.sm.apply(self.entry(command))

    def put(self, key: str, value: bytes = b"v", prev: int | None = None, **s: int) -> ApplyResult:
        result = self.run(Put(key, value, prev, _session(**s)))
        assert result is not None
        return result

    def delete(self, key: str, prev: int | None = None, **s: int) -> ApplyResult:
        result = self.run(Delete(key, prev, _session(**s)))
        assert result is not None
        return result

    def noops(self, count: int) -> None:
        for _ in range(count):
            self.run(None)


def _session(client: str | None = None, seq: int = 0, fo: int = 0) -> SessionRef | None:
    if client is None:
        return None
    return SessionRef(client, seq, fo or 1)


# --- commands ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        Put("k", b"v", None, None),
        Put("", b"", 0, SessionRef("c", 3, 2)),
        Put("ключ", b"\x00\xff", 7, None),
        Delete("k", None, None),
        Delete("k", 4, SessionRef("client-1", 1, 1)),
    ],
)
def test_commands_round_trip_through_their_encoding(command: Command) -> None:
    assert decode_command(encode_command(command)) == command


def test_encoding_is_compact() -> None:
    assert len(encode_command(Put("k", b"v", None, None))) <= 8
    assert len(encode_command(Delete("k", 1, SessionRef("c", 1, 1)))) <= 10


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb(5),
        msgpack.packb([]),
        msgpack.packb([9, "k"]),
        msgpack.packb([True, "k", b"v", None]),
        msgpack.packb([1, "k", b"v"]),
        msgpack.packb([1, b"k", b"v", None]),
        msgpack.packb([1, "k", "v", None]),
        msgpack.packb([1, "k", b"v", -1]),
        msgpack.packb([1, "k", b"v", None, "c", 0, 1]),
        msgpack.packb([1, "k", b"v", None, "c", 2, 3]),
        msgpack.packb([1, "k", b"v", None, "", 1, 1]),
        msgpack.packb([2, "k", None, "c", 1]),
        msgpack.packb([1, "k", b"v", None]) + b"\x00",
    ],
)
def test_malformed_command_raises_command_decode_error(data: bytes) -> None:
    with pytest.raises(CommandDecodeError):
        decode_command(data)


@given(st.binary(max_size=64))
def test_decoding_arbitrary_bytes_yields_a_command_or_command_decode_error(data: bytes) -> None:
    try:
        command = decode_command(data)
    except CommandDecodeError:
        return
    assert decode_command(encode_command(command)) == command


@pytest.mark.parametrize(
    "make",
    [
        lambda: SessionRef("c", 0, 1),
        lambda: SessionRef("c", 2, 3),
        lambda: SessionRef("c", 2, 0),
        lambda: SessionRef("", 1, 1),
        lambda: SessionRef("x" * (MAX_CLIENT_ID_LENGTH + 1), 1, 1),
        lambda: Put("k", "not bytes", None, None),  # type: ignore[arg-type]
        lambda: Put("k", b"v", True, None),
        lambda: Delete("k", -1, None),
    ],
)
def test_invalid_commands_cannot_be_built(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


# --- keys, versions, revisions ---------------------------------------------------------


def test_revision_starts_at_zero_and_counts_applied_writes() -> None:
    d = Driver()
    assert d.sm.revision == 0
    d.put("a")
    d.put("a")
    d.put("b")
    d.delete("a")
    assert d.sm.revision == 4


def test_version_is_one_after_first_put_and_counts_writes_to_the_key() -> None:
    d = Driver()
    assert d.put("a") == PutResult(revision=1, version=1)
    d.put("b")
    assert d.put("a", b"2") == PutResult(revision=3, version=2)
    assert d.sm.get("a") == KeyValue("a", b"2", version=2, create_revision=1, mod_revision=3)


def test_delete_removes_the_key_and_a_later_put_recreates_it_at_version_one() -> None:
    d = Driver()
    d.put("a")
    d.put("a")
    assert d.delete("a") == DeleteResult(revision=3)
    assert d.sm.get("a") is None
    assert d.put("a", b"new") == PutResult(revision=4, version=1)
    assert d.sm.get("a") == KeyValue("a", b"new", version=1, create_revision=4, mod_revision=4)


def test_put_with_prev_version_succeeds_only_when_the_version_matches() -> None:
    d = Driver()
    d.put("a")
    assert d.put("a", b"x", prev=2) == VersionMismatchResult(current_version=1)
    assert d.put("a", b"x", prev=1) == PutResult(revision=2, version=2)


def test_put_with_prev_version_zero_only_creates() -> None:
    d = Driver()
    assert d.put("a", prev=0) == PutResult(revision=1, version=1)
    assert d.put("a", prev=0) == VersionMismatchResult(current_version=1)


def test_put_with_prev_version_on_a_missing_key_reports_version_zero() -> None:
    d = Driver()
    assert d.put("a", prev=3) == VersionMismatchResult(current_version=0)
    assert d.sm.get("a") is None


def test_failed_compare_and_set_does_not_bump_the_revision() -> None:
    d = Driver()
    d.put("a")
    d.put("a", prev=5)
    d.delete("a", prev=5)
    assert d.sm.revision == 1
    assert d.sm.get("a") == KeyValue("a", b"v", 1, 1, 1)


def test_delete_of_a_missing_key_is_not_found_whatever_prev_version_says() -> None:
    d = Driver()
    assert d.delete("a") == NotFoundResult()
    assert d.delete("a", prev=0) == NotFoundResult()
    assert d.delete("a", prev=2) == NotFoundResult()
    assert d.sm.revision == 0


def test_delete_with_prev_version_mismatch_reports_the_current_version() -> None:
    d = Driver()
    d.put("a")
    d.put("a")
    assert d.delete("a", prev=1) == VersionMismatchResult(current_version=2)
    assert d.delete("a", prev=2) == DeleteResult(revision=3)


def test_len_counts_live_keys() -> None:
    d = Driver()
    d.put("a")
    d.put("b")
    d.put("a")
    d.delete("b")
    assert len(d.sm) == 1


# --- entries -------------------------------------------------------------------------


def test_noop_entry_returns_none_but_advances_the_applied_index() -> None:
    d = Driver()
    assert d.run(None) is None
    assert d.sm.applied_index == 1
    assert d.sm.revision == 0


def test_applied_index_follows_every_entry() -> None:
    d = Driver()
    d.put("a")
    d.put("a", prev=9)
    d.run(None)
    assert d.sm.applied_index == 3


@pytest.mark.parametrize("index", [0, 1, 3])
def test_entry_index_gap_or_repeat_is_a_programming_error(index: int) -> None:
    d = Driver()
    d.put("a")
    before = d.sm.snapshot()
    with pytest.raises(ApplyOrderError):
        d.sm.apply(Entry(term=1, index=index, data=encode_command(Put("b", b"v", None, None))))
    assert d.sm.snapshot() == before


def test_undecodable_committed_entry_raises_and_leaves_the_state_untouched() -> None:
    d = Driver()
    d.put("a")
    before = d.sm.snapshot()
    with pytest.raises(CommandDecodeError):
        d.sm.apply(Entry(term=1, index=2, data=b"\x93garbage"))
    assert d.sm.snapshot() == before
    assert d.put("b") == PutResult(revision=2, version=1)


# --- snapshots -------------------------------------------------------------------------


def _busy_machine() -> Driver:
    d = Driver(KVStateMachine(session_ttl_entries=50, max_sessions=3))
    d.put("a", b"1")
    d.put("b", b"2", client="c1", seq=1)
    d.put("b", b"3", prev=9, client="c1", seq=2)
    d.delete("a", client="c2", seq=1)
    for i in range(5):
        d.put(f"k{i}", client=f"x{i}", seq=1)
    d.noops(3)
    return d


def test_snapshot_restore_round_trip_gives_an_equal_machine() -> None:
    d = _busy_machine()
    copy = KVStateMachine(session_ttl_entries=50, max_sessions=3)
    copy.restore(d.sm.snapshot())
    assert copy.snapshot() == d.sm.snapshot()
    assert copy.fingerprint() == d.sm.fingerprint()
    assert (copy.applied_index, copy.revision, len(copy)) == (
        d.sm.applied_index,
        d.sm.revision,
        len(d.sm),
    )
    assert copy.get("b") == d.sm.get("b")


def test_restore_replaces_the_state_wholesale() -> None:
    source = Driver()
    source.put("only")
    target = _busy_machine()
    target.sm.restore(source.sm.snapshot())
    assert target.sm.get("b") is None
    assert not target.sm.has_session("x4")
    assert target.sm.snapshot() == source.sm.snapshot()


def test_machines_keep_behaving_alike_after_a_restore() -> None:
    original = _busy_machine()
    restored = Driver(KVStateMachine(session_ttl_entries=50, max_sessions=3))
    restored.sm.restore(original.sm.snapshot())
    for d in (original, restored):
        d.put("k4", client="x4", seq=1)  # duplicate: stored result
        d.put("z", client="new", seq=1)  # evicts the least recently used session
        d.noops(60)  # every session expires
    assert original.sm.snapshot() == restored.sm.snapshot()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"junk",
        msgpack.packb([1, 0, 0, [], []]),
        msgpack.packb([2, 0, 0, [], [], []]),
        msgpack.packb([1, 0, 0, [["k", "not bytes", 1, 1, 1]], [], []]),
        msgpack.packb([1, 0, 0, [["k", b"v", 1, 1]], [], []]),
        msgpack.packb([1, 0, 0, [], [["c", 1, 1, [[1, 9, 9]]]], []]),
        msgpack.packb([1, -1, 0, [], [], []]),
    ],
)
def test_restore_rejects_a_bad_snapshot_and_keeps_the_state(data: bytes) -> None:
    d = _busy_machine()
    before = d.sm.snapshot()
    with pytest.raises(SnapshotError):
        d.sm.restore(data)
    assert d.sm.snapshot() == before


def test_the_snapshot_is_canonical_whatever_order_the_keys_were_written_in() -> None:
    ordered = [["a", b"1", 1, 2, 2], ["b", b"2", 1, 1, 1]]
    machines = []
    for keys in (ordered, ordered[::-1]):
        sm = KVStateMachine()
        sm.restore(msgpack.packb([1, 2, 2, keys, [], []]))
        machines.append(sm)
    assert machines[0].snapshot() == machines[1].snapshot()


def test_the_snapshot_holds_applied_index_and_sessions() -> None:
    d = _busy_machine()
    copy = Driver()
    copy.sm.restore(d.sm.snapshot())
    assert copy.sm.applied_index == d.sm.applied_index
    assert copy.put("k4", client="x4", seq=1) == PutResult(revision=8, version=1)
    assert copy.sm.revision == 8


# --- sessions --------------------------------------------------------------------------


def test_duplicate_request_returns_the_stored_result_without_applying_again() -> None:
    d = Driver()
    first = d.put("a", b"1", client="c", seq=1)
    assert d.put("a", b"1", client="c", seq=1) == first
    assert d.sm.revision == 1
    assert d.sm.get("a") == KeyValue("a", b"1", 1, 1, 1)


def test_duplicate_of_a_failed_compare_and_set_repeats_the_failure() -> None:
    d = Driver()
    assert d.put("a", prev=1, client="c", seq=1) == VersionMismatchResult(0)
    d.put("a")  # now version 1, so re-applying would succeed
    assert d.put("a", prev=1, client="c", seq=1) == VersionMismatchResult(0)
    assert d.sm.revision == 1


def test_duplicate_delete_returns_the_stored_result() -> None:
    d = Driver()
    d.put("a")
    assert d.delete("a", client="c", seq=1) == DeleteResult(2)
    d.put("a")
    assert d.delete("a", client="c", seq=1) == DeleteResult(2)
    assert d.sm.get("a") is not None


def test_a_new_session_opens_only_for_a_client_that_has_had_no_answer() -> None:
    d = Driver()
    assert d.put("a", client="c", seq=3, fo=2) == SessionExpiredResult()
    assert not d.sm.has_session("c")
    assert d.sm.revision == 0
    assert d.put("a", client="c", seq=2, fo=1) == PutResult(1, 1), "concurrent start"
    assert d.put("a", client="c", seq=1, fo=1) == PutResult(2, 2)
    assert d.put("a", client="c", seq=2, fo=1) == PutResult(1, 1), "stored, not re-applied"


def test_requests_of_a_session_may_apply_out_of_order_but_each_only_once() -> None:
    d = Driver()
    d.put("a", client="c", seq=1)
    assert d.put("b", client="c", seq=3) == PutResult(2, 1)
    assert d.put("c", client="c", seq=2) == PutResult(3, 1)
    assert d.put("b", client="c", seq=3) == PutResult(2, 1)
    assert d.sm.revision == 3


def test_results_below_first_outstanding_are_forgotten_and_answer_session_expired() -> None:
    d = Driver()
    d.put("a", client="c", seq=1)
    d.put("a", client="c", seq=2, fo=2)
    assert d.put("a", client="c", seq=1) == SessionExpiredResult()
    assert d.sm.revision == 2


def test_first_outstanding_never_moves_the_floor_back() -> None:
    d = Driver()
    d.put("a", client="c", seq=1)
    d.put("a", client="c", seq=3, fo=3)
    d.put("a", client="c", seq=4, fo=1)  # a delayed request carrying an old floor
    assert d.put("a", client="c", seq=2, fo=2) == SessionExpiredResult()


def test_stored_results_are_capped_by_raising_the_floor_past_the_lowest() -> None:
    d = Driver(KVStateMachine(max_results_per_session=3))
    for seq in range(1, 5):
        d.put("a", client="c", seq=seq)
    assert d.put("a", client="c", seq=1) == SessionExpiredResult()
    assert d.put("a", client="c", seq=2) == PutResult(2, 2)
    assert d.sm.revision == 4


def test_idle_session_expires_after_ttl_entries_and_answers_session_expired() -> None:
    d = Driver(KVStateMachine(session_ttl_entries=5))
    d.put("a", client="c", seq=1)  # index 1
    d.noops(5)  # indexes 2..6: still within 5 entries of its last use
    assert d.sm.has_session("c")
    d.run(None)  # index 7 > 1 + 5
    assert not d.sm.has_session("c")
    assert d.put("a", client="c", seq=1) == SessionExpiredResult()
    assert d.put("a", client="c", seq=2) == SessionExpiredResult()
    assert d.sm.revision == 1


def test_a_used_session_does_not_expire() -> None:
    d = Driver(KVStateMachine(session_ttl_entries=3))
    d.put("a", client="c", seq=1)
    for seq in range(2, 10):
        d.noops(2)
        d.put("a", client="c", seq=seq, fo=seq)
    assert d.sm.has_session("c")


def test_a_retry_extends_the_session_like_any_use() -> None:
    d = Driver(KVStateMachine(session_ttl_entries=3))
    d.put("a", client="c", seq=1)  # index 1
    d.noops(2)
    d.put("a", client="c", seq=1)  # index 4: within ttl, and uses the session
    d.noops(2)
    assert d.put("a", client="c", seq=1) == PutResult(1, 1)  # index 7 > 1 + 3


def test_expiry_is_decided_by_log_position_alone() -> None:
    runs = []
    for _ in range(2):
        d = Driver(KVStateMachine(session_ttl_entries=4))
        for i in range(6):
            d.put("k", client=f"c{i}", seq=1)
            d.noops(i % 3)
        runs.append((d.sm.snapshot(), [d.sm.has_session(f"c{i}") for i in range(6)]))
    assert runs[0] == runs[1]
    assert runs[0][1] == [False, False, False, False, True, True]


def test_the_least_recently_used_session_is_evicted_beyond_max_sessions() -> None:
    d = Driver(KVStateMachine(max_sessions=2))
    d.put("a", client="c1", seq=1)
    d.put("a", client="c2", seq=1)
    d.put("a", client="c1", seq=2)  # c2 is now the least recently used
    d.put("a", client="c3", seq=1)
    assert [d.sm.has_session(c) for c in ("c1", "c2", "c3")] == [True, False, True]
    assert d.put("a", client="c2", seq=2) == SessionExpiredResult()


def test_eviction_ties_after_restore_break_by_client_id() -> None:
    snapshot = msgpack.packb(
        [1, 10, 0, [], [["b", 1, 5, []], ["a", 1, 5, []], ["c", 1, 9, []]], []]
    )
    d = Driver(KVStateMachine(max_sessions=3))
    d.sm.restore(snapshot)
    d.put("k", client="d", seq=1)
    assert [d.sm.has_session(c) for c in "abcd"] == [False, True, True, True]


def test_a_dropped_session_cannot_be_reopened_by_a_retry_of_seq_one() -> None:
    d = Driver(KVStateMachine(max_sessions=1))
    d.put("a", client="c1", seq=1)
    d.put("a", client="c2", seq=1)  # evicts c1
    assert d.put("a", client="c1", seq=1) == SessionExpiredResult()
    assert d.sm.revision == 2


def test_the_record_of_dropped_sessions_is_bounded_by_max_sessions() -> None:
    d = Driver(KVStateMachine(max_sessions=2))
    for i in range(5):
        d.put("a", client=f"c{i}", seq=1)
    # c0, c1, c2 were dropped; only the last two (c1, c2) are remembered.
    assert d.put("a", client="c1", seq=1) == SessionExpiredResult()
    assert d.put("a", client="c0", seq=1) == PutResult(6, 6)


def test_reads_do_not_touch_sessions() -> None:
    d = Driver(KVStateMachine(session_ttl_entries=2))
    d.put("a", client="c", seq=1)
    before = d.sm.snapshot()
    d.sm.get("a")
    assert d.sm.snapshot() == before


def test_state_machine_defaults_match_the_tuning_defaults() -> None:
    assert Tuning().session_ttl_entries == DEFAULT_SESSION_TTL_ENTRIES
    assert Tuning().max_sessions == DEFAULT_MAX_SESSIONS


@pytest.mark.parametrize(
    "kwargs",
    [{"session_ttl_entries": 0}, {"max_sessions": 0}, {"max_results_per_session": -1}],
)
def test_limits_must_be_positive(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        KVStateMachine(**kwargs)


# --- properties ------------------------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c"])
_prev = st.none() | st.integers(min_value=0, max_value=3)
_sessions = st.none() | st.builds(
    lambda client, seq, back: SessionRef(client, seq, max(1, seq - back)),
    st.sampled_from(["c1", "c2", "c3", "c4"]),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=6),
)
_writes = st.one_of(
    st.builds(Put, _keys, st.binary(max_size=3), _prev, _sessions),
    st.builds(Delete, _keys, _prev, _sessions),
)
# Users, roles and the enabled flag change what a user's write does (kvstore.state.auth):
# replicas must agree on that too, and a retried write still applies at most once.
_users = st.sampled_from(["root", "u"])
_auth = st.one_of(
    st.builds(UserAdd, _users, st.just(b"salt"), st.just(b"hash")),
    st.builds(UserRole, _users, st.sampled_from(["root", "r"]), st.booleans()),
    st.builds(RoleAdd, st.just("r")),
    st.builds(
        RolePermission,
        st.just("r"),
        st.builds(Permission, st.sampled_from(["read", "write", "readwrite"]), _keys, st.just("")),
        st.booleans(),
    ),
    st.builds(AuthEnable, st.just(b"k" * 32)),
    st.builds(AuthDisable),
)
_commands = st.one_of(st.none(), _writes, st.builds(AsUser, _users, _writes), _auth)
_limits = st.fixed_dictionaries(
    {
        "session_ttl_entries": st.integers(min_value=1, max_value=12),
        "max_sessions": st.integers(min_value=1, max_value=3),
        "max_results_per_session": st.integers(min_value=1, max_value=4),
    }
)


@settings(max_examples=300, deadline=None)
@given(_limits, st.lists(_commands, max_size=60), st.data())
def test_replicas_fed_the_same_entries_end_in_identical_state(
    limits: dict[str, int], commands: list[Command | None], data: st.DataObject
) -> None:
    """The second replica is rebuilt from a snapshot midway, as a lagging follower is."""
    restore_at = data.draw(st.integers(min_value=0, max_value=len(commands)))
    a, b = Driver(KVStateMachine(**limits)), Driver(KVStateMachine(**limits))
    for i, command in enumerate(commands):
        if i == restore_at:
            b = Driver(KVStateMachine(**limits))
            b.sm.restore(a.sm.snapshot())
        entry = a.entry(command)
        result = a.sm.apply(entry)
        if i >= restore_at:
            assert b.sm.apply(entry) == result
    if restore_at == len(commands):
        b.sm.restore(a.sm.snapshot())
    assert b.sm.snapshot() == a.sm.snapshot()
    assert b.sm.fingerprint() == a.sm.fingerprint()


@settings(max_examples=200, deadline=None)
@given(st.lists(_commands, max_size=60))
def test_a_request_is_applied_at_most_once(commands: list[Command | None]) -> None:
    """Whatever the interleaving of retries, a (client, seq) changes the state at most once,
    and every answer to it is its first answer or SessionExpired. (Within the documented
    bound: the record of dropped sessions, max_sessions ids, covers all four clients.)"""
    d = Driver(KVStateMachine(session_ttl_entries=8, max_sessions=4, max_results_per_session=3))
    first: dict[tuple[str, int], ApplyResult] = {}
    for command in commands:
        before = d.sm.revision
        result = d.run(command)
        if command is None or command.session is None:
            continue
        request = (command.session.client_id, command.session.seq)
        if request in first:
            assert result in (first[request], SessionExpiredResult())
            assert d.sm.revision == before
        elif result != SessionExpiredResult():
            first[request] = result


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.builds(Put, _keys, st.binary(max_size=2), _prev) | st.builds(Delete, _keys, _prev))
)
def test_keys_follow_a_simple_model(commands: list[Command]) -> None:
    d = Driver()
    model: dict[str, tuple[bytes, int]] = {}
    revision = 0
    for command in commands:
        result = d.run(command)
        version = model[command.key][1] if command.key in model else 0
        if isinstance(command, Delete) and command.key not in model:
            assert result == NotFoundResult()
        elif command.prev_version is not None and command.prev_version != version:
            assert result == VersionMismatchResult(version)
        elif isinstance(command, Put):
            revision += 1
            model[command.key] = (command.value, version + 1)
            assert result == PutResult(revision, version + 1)
        else:
            revision += 1
            del model[command.key]
            assert result == DeleteResult(revision)
    assert d.sm.revision == revision
    assert {k: (kv.value, kv.version) for k in model if (kv := d.sm.get(k))} == model
    assert len(d.sm) == len(model)
