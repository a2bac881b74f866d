"""Users, roles, permissions and the apply-time check in the state machine (issue 11).

Examples for each rule, then two hypothesis checks: KeyAccess's range questions
against a brute-force answer over a small alphabet, and a stateful run of random
grants, revokes, role and user changes and writes on behalf of users, against a plain
model of who may write what; a second machine restored from a snapshot taken mid-run
and fed the same later entries must end with the same bytes (determinism), and a
retried write of a session answers what it answered first even after its permission
was revoked (exactly once).
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from consensus.types import Entry, EntryType
from kvstore.state.auth import ROOT, AuthState, KeyAccess, Permission
from kvstore.state.auth_commands import (
    AuthDisable,
    AuthEnable,
    RoleAdd,
    RoleDelete,
    RolePermission,
    UserAdd,
    UserDelete,
    UserPassword,
    UserRole,
)
from kvstore.state.commands import (
    AsUser,
    Command,
    Compare,
    Delete,
    LeaseGrant,
    LeaseRevoke,
    LockAcquire,
    Op,
    Put,
    SessionRef,
    Target,
    Txn,
    TxnDeleteRange,
    TxnPut,
    TxnRange,
    decode_command,
    encode_command,
)
from kvstore.state.keyrange import KeyRange, RangeQuery
from kvstore.state.machine import KVStateMachine
from kvstore.state.types import AuthResult, PutResult, TxnResult

KEY = b"k" * 32
OK = AuthResult("", "")


class Applier:
    def __init__(self, sm: KVStateMachine | None = None) -> None:
        self.sm = sm if sm is not None else KVStateMachine()
        self.entries: list[Entry] = []

    def apply(self, command: Command) -> object:
        entry = Entry(1, self.sm.applied_index + 1, encode_command(command), EntryType.NORMAL)
        self.entries.append(entry)
        return self.sm.apply(entry)

    def as_user(self, user: str, command: Command) -> object:
        return self.apply(AsUser(user, command))  # type: ignore[arg-type]


def _code(result: object) -> str:
    assert type(result) is AuthResult, result
    return result.code


def with_root_and_alice(prefix: str = "app/", access: str = "readwrite") -> Applier:
    a = Applier()
    assert a.apply(UserAdd("root", b"s", b"h")) == OK
    assert a.apply(UserRole("root", ROOT, grant=True)) == OK
    assert a.apply(UserAdd("alice", b"s", b"h")) == OK
    assert a.apply(RoleAdd("app")) == OK
    grant = RolePermission("app", Permission(access, prefix, prefix[:-1] + "0"), grant=True)
    assert a.apply(grant) == OK
    assert a.apply(UserRole("alice", "app", grant=True)) == OK
    assert a.apply(AuthEnable(KEY)) == OK
    return a


# ------------------------------------------------------------------ examples


def test_enable_needs_a_root_user_holding_root() -> None:
    a = Applier()
    assert _code(a.apply(AuthEnable(KEY))) == "no_root_user"
    a.apply(UserAdd("root", b"s", b"h"))
    assert _code(a.apply(AuthEnable(KEY))) == "no_root_user"
    a.apply(UserRole("root", ROOT, grant=True))
    assert a.apply(AuthEnable(KEY)) == OK
    assert a.sm.auth.enabled and a.sm.auth.key == KEY
    assert a.apply(AuthEnable(b"x" * 32)) == OK  # enabling again keeps the key
    assert a.sm.auth.key == KEY


def test_users_and_roles_answer_their_refusals() -> None:
    a = Applier()
    a.apply(UserAdd("bob", b"s", b"h"))
    assert _code(a.apply(UserAdd("bob", b"s", b"h"))) == "user_exists"
    assert _code(a.apply(UserDelete("carol"))) == "user_not_found"
    assert _code(a.apply(UserRole("bob", "nope", grant=True))) == "role_not_found"
    assert _code(a.apply(UserRole("bob", ROOT, grant=False))) == "role_not_granted"
    assert _code(a.apply(RoleDelete(ROOT))) == "bad_role"
    assert _code(a.apply(RolePermission(ROOT, Permission("read", "a", ""), True))) == "bad_role"
    a.apply(RoleAdd("r"))
    assert _code(a.apply(RoleAdd("r"))) == "role_exists"
    missing = RolePermission("r", Permission("read", "a", "b"), grant=False)
    assert _code(a.apply(missing)) == "permission_not_found"
    a.apply(UserRole("bob", "r", grant=True))
    a.apply(RoleDelete("r"))
    assert a.sm.auth.users["bob"].roles == set()  # a deleted role leaves its holders


def test_generation_is_the_index_of_the_last_password_change() -> None:
    a = Applier()
    a.apply(UserAdd("bob", b"s", b"h"))
    first = a.sm.auth.users["bob"].generation
    assert first == a.sm.applied_index
    a.apply(UserPassword("bob", b"s2", b"h2"))
    second = a.sm.auth.users["bob"].generation
    a.apply(UserDelete("bob"))
    a.apply(UserAdd("bob", b"s", b"h"))
    assert len({first, second, a.sm.auth.users["bob"].generation}) == 3


def test_writes_are_checked_at_apply_against_the_state_of_their_position() -> None:
    a = with_root_and_alice()
    assert type(a.as_user("alice", Put("app/x", b"1"))) is PutResult
    refused = a.as_user("alice", Put("other", b"1"))
    assert _code(refused) == "permission_denied" and "'other'" in refused.message  # type: ignore[union-attr]
    assert a.sm.get("other") is None
    # The revoke's entry comes before the write's: the write is refused.
    a.apply(RolePermission("app", Permission("read", "app/", "app0"), grant=False))
    assert _code(a.as_user("alice", Put("app/x", b"2"))) == "permission_denied"
    assert _code(a.as_user("alice", Delete("app/x"))) == "permission_denied"
    kv = a.sm.get("app/x")
    assert kv is not None and kv.value == b"1"
    assert type(a.as_user("root", Put("anything", b"r"))) is PutResult


def test_read_only_permission_does_not_write_and_unknown_user_is_refused() -> None:
    a = with_root_and_alice(access="read")
    assert _code(a.as_user("alice", Put("app/x", b"1"))) == "permission_denied"
    assert _code(a.as_user("mallory", Put("app/x", b"1"))) == "permission_denied"


def test_commands_without_a_user_or_with_auth_off_are_not_checked() -> None:
    a = with_root_and_alice()
    assert type(a.apply(Put("other", b"1"))) is PutResult  # admitted while auth was off
    a.as_user("root", AuthDisable())
    assert not a.sm.auth.enabled and a.sm.auth.key == b""
    assert type(a.as_user("alice", Put("other", b"2"))) is PutResult


def test_transactions_need_every_key_they_touch_in_both_branches() -> None:
    a = with_root_and_alice()
    inside = Compare("app/a", Target.VERSION, Op.EQ, 0)
    outside = Compare("zzz", Target.VERSION, Op.EQ, 0)
    put = TxnPut("app/a", b"1")
    assert type(a.as_user("alice", Txn((inside,), (put,)))) is TxnResult
    assert _code(a.as_user("alice", Txn((outside,), (put,)))) == "permission_denied"
    wide_delete = TxnDeleteRange(KeyRange("app/", None))
    assert _code(a.as_user("alice", Txn((), (put,), (wide_delete,)))) == "permission_denied"
    read_all = TxnRange(RangeQuery(KeyRange("", None)))
    assert _code(a.as_user("alice", Txn((), (put, read_all)))) == "permission_denied"
    own = TxnRange(RangeQuery(KeyRange.prefix("app/")))
    assert type(a.as_user("alice", Txn((), (TxnPut("app/b", b"2"), own)))) is TxnResult


def test_locks_and_lease_revokes_need_write_on_their_keys() -> None:
    a = with_root_and_alice()
    lease = a.as_user("alice", LeaseGrant(10))
    lease_id = lease.lease  # type: ignore[union-attr]
    assert _code(a.as_user("alice", LockAcquire("jobs", lease_id))) == "permission_denied"
    assert a.as_user("alice", LockAcquire("app/lock", lease_id)).token > 0  # type: ignore[union-attr]
    a.as_user("root", Put("outside", b"v", lease=lease_id))
    assert _code(a.as_user("alice", LeaseRevoke(lease_id))) == "permission_denied"
    assert a.sm.get("outside") is not None
    assert a.as_user("root", LeaseRevoke(lease_id)).deleted == 1  # type: ignore[union-attr]


def test_auth_commands_need_root_except_ones_own_password() -> None:
    a = with_root_and_alice()
    assert _code(a.as_user("alice", RoleAdd("mine"))) == "permission_denied"
    assert _code(a.as_user("alice", UserRole("alice", ROOT, True))) == "permission_denied"
    assert _code(a.as_user("alice", UserPassword("root", b"s", b"h"))) == "permission_denied"
    assert a.as_user("alice", UserPassword("alice", b"s", b"new")) == OK
    assert _code(a.as_user("alice", AuthDisable())) == "permission_denied"
    assert _code(a.as_user("root", UserDelete("root"))) == "bad_user"
    assert _code(a.as_user("root", UserRole("root", ROOT, False))) == "bad_role"
    assert a.as_user("root", RoleAdd("mine")) == OK


def test_a_denied_write_in_a_session_answers_the_same_on_retry() -> None:
    a = with_root_and_alice()
    put = Put("other", b"1", session=SessionRef("c1", 1, 1))
    first = a.as_user("alice", put)
    assert _code(first) == "permission_denied"
    a.apply(RolePermission("app", Permission("readwrite", "", ""), grant=True))
    assert a.as_user("alice", put) == first  # exactly once: the stored answer
    restored = KVStateMachine()
    restored.restore(a.sm.snapshot())  # the stored refusal travels in the snapshot
    assert restored.snapshot() == a.sm.snapshot()
    b = Applier(restored)
    assert b.as_user("alice", put) == first


def test_auth_state_travels_in_the_snapshot_and_old_formats_restore_open() -> None:
    a = with_root_and_alice()
    restored = KVStateMachine()
    restored.restore(a.sm.snapshot())
    assert restored.auth.enabled and restored.auth.key == KEY
    assert restored.auth.users["alice"].roles == {"app"}
    assert restored.auth.to_wire() == a.sm.auth.to_wire()
    fields = list(msgpack.unpackb(a.sm.snapshot(), raw=False))
    old = msgpack.packb([5, *fields[1:-1]], use_bin_type=True)  # format 5: no auth state
    older = KVStateMachine()
    older.restore(old)
    assert not older.auth.enabled and not older.auth.users and older.get("app/x") is None


def test_auth_commands_round_trip_through_their_bytes() -> None:
    commands: list[Command] = [
        AuthEnable(KEY),
        AuthDisable(),
        UserAdd("u", b"s", b"h"),
        UserPassword("u", b"s", b"h"),
        UserDelete("u"),
        UserRole("u", "r", grant=False),
        RoleAdd("r"),
        RoleDelete("r"),
        RolePermission("r", Permission("write", "a", ""), grant=True),
        AsUser("u", Put("k", b"v", session=SessionRef("c", 3, 2))),
        AsUser("u", RoleAdd("r")),
    ]
    for command in commands:
        assert decode_command(encode_command(command)) == command
    with pytest.raises(ValueError):
        AsUser("u", AsUser("v", Put("k", b"v")))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UserAdd("a/b", b"s", b"h")


# ------------------------------------------------------------------ KeyAccess vs brute force

BOUNDS = ["", "a", "aa", "ab", "b", "ba", "c", "cc"]
PROBES = ["a\0", "aab", "abc", "b\0", "bb", "ca", "d"]


def _inside(key: str, start: str, end: str | None) -> bool:
    return key >= start and (end is None or end == "" or key < end)


@settings(max_examples=300, deadline=None)
@given(
    ranges=st.lists(st.tuples(st.sampled_from(BOUNDS), st.sampled_from(BOUNDS)), max_size=4),
    start=st.sampled_from(BOUNDS),
    end=st.sampled_from([*BOUNDS[1:], None]),
)
def test_key_access_answers_as_brute_force(
    ranges: list[tuple[str, str]], start: str, end: str | None
) -> None:
    spans = [(s, e) for s, e in ranges if e == "" or e > s]
    access = KeyAccess(spans)
    for key in {*BOUNDS, *PROBES}:
        assert access.key(key) == any(_inside(key, s, e) for s, e in spans), key
    if end is not None and end <= start:
        return
    # Every range starts or ends at a BOUND, so the first key of a gap and the first
    # key of an overlap are among the probes: the brute-force answers are exact.
    probes = [k for k in sorted({*BOUNDS, *PROBES}) if _inside(k, start, end)]
    assert access.covers(start, end) == all(access.key(k) for k in probes)
    assert access.overlaps(start, end) == any(access.key(k) for k in probes)


# ------------------------------------------------------------------ random runs vs a model

USERS = ("alice", "bob")
ROLES = ("r1", "r2")
SPANS = (("a", "b"), ("b", "c"), ("ab", "ac"), ("c", ""), ("", ""))
WRITE_KEYS = ("a", "ab", "b", "ba", "c", "z")


class AuthRun(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.a = with_root_and_alice("x/")  # alice also holds "app" on x/
        self.grants: dict[str, dict[tuple[str, str], str]] = {r: {} for r in ROLES}
        self.held: dict[str, set[str]] = {"alice": {"app"}, "bob": set()}
        self.a.apply(UserAdd("bob", b"s", b"h"))
        for role in ROLES:
            self.a.as_user("root", RoleAdd(role))
        self.mark: tuple[bytes, int] | None = None
        self.seq = 0

    def _may_write(self, user: str, key: str) -> bool:
        roles = self.held[user] & set(ROLES)
        return any(
            _inside(key, s, e) and access in ("write", "readwrite")
            for role in roles
            for (s, e), access in self.grants[role].items()
        )

    @rule(
        role=st.sampled_from(ROLES),
        span=st.sampled_from(SPANS),
        access=st.sampled_from(["read", "write", "readwrite"]),
    )
    def grant(self, role: str, span: tuple[str, str], access: str) -> None:
        assert self.a.as_user("root", RolePermission(role, Permission(access, *span), True)) == OK
        self.grants[role][span] = access

    @rule(role=st.sampled_from(ROLES), span=st.sampled_from(SPANS))
    def revoke(self, role: str, span: tuple[str, str]) -> None:
        result = self.a.as_user("root", RolePermission(role, Permission("read", *span), False))
        expected = "" if self.grants[role].pop(span, None) is not None else "permission_not_found"
        assert _code(result) == expected

    @rule(user=st.sampled_from(USERS), role=st.sampled_from(ROLES), grant=st.booleans())
    def assign(self, user: str, role: str, grant: bool) -> None:
        result = self.a.as_user("root", UserRole(user, role, grant))
        expected = "" if grant or role in self.held[user] else "role_not_granted"
        assert _code(result) == expected
        (self.held[user].add if grant else self.held[user].discard)(role)

    @rule(user=st.sampled_from(USERS), key=st.sampled_from(WRITE_KEYS), session=st.booleans())
    def write(self, user: str, key: str, session: bool) -> None:
        self.seq += 1
        ref = SessionRef(f"{user}-{self.seq}", 1, 1) if session else None
        before = self.a.sm.get(key)
        put = Put(key, f"{user}{self.seq}".encode(), session=ref)
        result = self.a.as_user(user, put)
        if self._may_write(user, key):
            assert type(result) is PutResult
        else:
            assert _code(result) == "permission_denied"
            assert self.a.sm.get(key) == before
        if ref is not None:
            assert self.a.as_user(user, put) == result  # a retry answers the same

    @rule()
    def take_snapshot(self) -> None:
        self.mark = (self.a.sm.snapshot(), len(self.a.entries))

    @invariant()
    def replay_from_the_snapshot_agrees(self) -> None:
        if self.mark is None:
            return
        data, position = self.mark
        other = KVStateMachine()
        other.restore(data)
        for entry in self.a.entries[position:]:
            other.apply(entry)
        assert other.snapshot() == self.a.sm.snapshot()

    @invariant()
    def the_state_matches_the_model(self) -> None:
        auth: AuthState = self.a.sm.auth
        for role in ROLES:
            assert auth.roles[role].permissions == self.grants[role]
        for user in USERS:
            assert auth.users[user].roles == self.held[user]


AuthRun.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_random_grants_revokes_and_writes_follow_the_model = AuthRun.TestCase
