"""Tokens and passwords (kvstore.api.credentials): what lets a bearer in, and what not."""

from __future__ import annotations

import pytest

from kvstore.api.access import RULES, root, rule_for
from kvstore.api.credentials import (
    TokenError,
    hash_password,
    issue_token,
    password_matches,
    verify_token,
)
from kvstore.state.auth import AuthState, User

NOW = 1_800_000_000.0


def _state(key: bytes = b"k" * 32) -> AuthState:
    auth = AuthState()
    auth.enabled, auth.key = True, key
    salt = b"s" * 16
    auth.users["alice"] = User("alice", salt, hash_password("secret", salt), 7)
    return auth


def _refused(auth: AuthState, token: str, now: float = NOW) -> str:
    with pytest.raises(TokenError) as caught:
        verify_token(auth, token, now)
    return caught.value.code


def test_a_fresh_token_names_its_user_until_it_expires() -> None:
    auth = _state()
    token = issue_token(auth, "alice", NOW, 300)
    assert verify_token(auth, token, NOW + 299) == "alice"
    assert _refused(auth, token, NOW + 300) == "token_expired"


def test_a_tampered_token_is_refused() -> None:
    auth = _state()
    token = issue_token(auth, "alice", NOW, 300)
    payload, signature = token.split(".")
    forged = issue_token(auth, "alice", NOW + 10_000, 300).split(".")[0]
    assert _refused(auth, f"{forged}.{signature}") == "bad_token"  # a later expiry
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert _refused(auth, f"{payload}.{flipped}") == "bad_token"
    for garbage in ("", ".", "abc", f"{payload}.", f".{signature}", "a.b.c"):
        assert _refused(auth, garbage) == "bad_token"


def test_another_key_an_older_generation_or_a_deleted_user_is_refused() -> None:
    auth = _state()
    token = issue_token(auth, "alice", NOW, 300)
    assert _refused(_state(b"j" * 32), token) == "bad_token"  # auth disabled and enabled again
    auth.users["alice"].generation = 8  # her password changed
    assert _refused(auth, token) == "bad_token"
    del auth.users["alice"]
    assert _refused(auth, token) == "bad_token"
    auth.key = b""
    assert _refused(auth, token) == "bad_token"


def test_password_check() -> None:
    auth = _state()
    assert password_matches(auth, "alice", "secret")
    assert not password_matches(auth, "alice", "Secret")
    assert not password_matches(auth, "nobody", "secret")


def test_a_route_without_a_rule_is_root_only() -> None:
    assert rule_for("/v1/some/new/route", "GET") is root
    assert rule_for("/v1/auth/users/{name}", "PATCH") is root
    assert rule_for("/v1/auth/users/{name}", "GET") is not root
    assert all(path.startswith("/") for path in RULES)
