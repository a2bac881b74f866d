"""A watch of an authenticated user sends only the changes the user may read when they are
sent (kvstore.api.watch): a permission revoked while the watch runs applies to it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kvstore.api.watch import _visible
from kvstore.runtime.watch_hub import Changes
from kvstore.state.auth import AuthState, Permission, Role, User
from kvstore.state.history import Event, EventKind
from kvstore.state.types import KeyValue


def _changes(*keys: str) -> Changes:
    return Changes(7, tuple(Event(EventKind.PUT, KeyValue(k, b"v", 1, 7, 7), None) for k in keys))


def _runtime() -> Any:
    auth = AuthState()
    auth.enabled = True
    auth.roles["app"] = Role("app", {("app/", "app0"): "read"})
    auth.users["alice"] = User("alice", b"s", b"h", 1, {"app"})
    return SimpleNamespace(sm=SimpleNamespace(auth=auth))


def _keys(item: object) -> list[str]:
    assert type(item) is Changes
    return [e.kv.key for e in item.events]


def test_changes_are_filtered_by_the_permissions_in_force_when_sent() -> None:
    runtime = _runtime()
    change = _changes("app/a", "other/b", "app/c")
    assert _keys(_visible(change, runtime, "alice")) == ["app/a", "app/c"]
    assert _visible(change, runtime, None) is change  # auth off when the watch began
    del runtime.sm.auth.roles["app"].permissions[("app/", "app0")]  # revoked meanwhile
    assert _keys(_visible(change, runtime, "alice")) == []
    runtime.sm.auth.roles["app"].permissions[("", "")] = Permission("read", "", "").access
    assert _visible(change, runtime, "alice") is change
    runtime.sm.auth.enabled = False
    assert _visible(change, runtime, "mallory") is change
