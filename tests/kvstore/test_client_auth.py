"""The client side of users, roles and tokens (kvstore.client.credentials, auth_admin)
against a fake node that speaks the /v1/auth contract: a token is asked for on first
need and shared by concurrent calls, renewed before it expires and once more when a
node refuses it, a fixed token is never renewed, 401/403 are typed errors, and a
cluster with auth off costs one token request in all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kvstore.client import AsyncKV, AuthenticationFailed, PermissionDenied, RetryPolicy, auth_admin
from kvstore.client.credentials import RENEW_AFTER, Credentials
from kvstore.client.errors import InvalidRequest, OutcomeUnknown
from kvstore.client.transport import Answer

NO_BACKOFF = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)
USERS = {"root": "rootpw", "alice": "alicepw"}
PREFIX = {"root": "", "alice": "app/"}


def _error(status: int, code: str, message: str = "") -> web.Response:
    return web.json_response({"error": code, "message": message or code}, status=status)


@dataclass
class FakeAuthNode:
    """One node with auth: tokens are "t<n>", each naming its user; a token can be
    marked expired. Records every request as (method, path, authorization)."""

    enabled: bool = True
    ttl: int = 300
    tokens: dict[str, str] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    data: dict[str, bytes] = field(default_factory=dict)
    admin: list[tuple[str, str, bytes]] = field(default_factory=list)
    url: str = ""

    def token_requests(self) -> int:
        return sum(1 for _, path, _ in self.seen if path == "/v1/auth/token")

    def user_of(self, request: web.Request) -> str | web.Response:
        header = request.headers.get("Authorization")
        if not self.enabled:
            return "anyone"
        if header is None:
            return _error(401, "auth_required")
        token = header.removeprefix("Bearer ")
        if token not in self.tokens:
            return _error(401, "bad_token")
        if token in self.expired:
            return _error(401, "token_expired")
        return self.tokens[token]

    def app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.seen.append((request.method, request.path, request.headers.get("Authorization")))
            return await handler(request)

        async def token(request: web.Request) -> web.Response:
            doc = await request.json()
            if not self.enabled:
                return _error(409, "auth_not_enabled")
            if USERS.get(doc["user"]) != doc["password"]:
                return _error(401, "bad_credentials", "wrong user name or password")
            value = f"t{len(self.tokens) + 1}"
            self.tokens[value] = doc["user"]
            return web.json_response({"token": value, "ttl": self.ttl, "user": doc["user"]})

        async def kv(request: web.Request) -> web.Response:
            user = self.user_of(request)
            if isinstance(user, web.Response):
                return user
            key = request.match_info["key"]
            if user != "anyone" and not key.startswith(PREFIX[user]):
                return _error(403, "permission_denied", f"{user} may not touch {key!r}")
            if request.method == "PUT":
                self.data[key] = await request.read()
                return web.json_response({"revision": len(self.data), "version": 1})
            if key not in self.data:
                return _error(404, "not_found")
            return web.Response(body=self.data[key], headers={"X-KV-Version": "1"})

        async def watch(request: web.Request) -> web.Response:
            user = self.user_of(request)
            if isinstance(user, web.Response):
                return user
            return _error(403, "permission_denied", "outside your prefixes")

        async def admin(request: web.Request) -> web.Response:
            user = self.user_of(request)
            if isinstance(user, web.Response):
                return user
            self.admin.append((request.method, request.path_qs, await request.read()))
            if request.path == "/v1/auth/users":
                return web.json_response({"users": [{"name": "alice", "roles": ["app"]}]})
            if request.path == "/v1/auth/roles/app" and request.method == "GET":
                perms = [{"access": "readwrite", "start": "app/", "end": "app0"}]
                return web.json_response({"name": "app", "permissions": perms})
            return web.json_response({})

        async def status(request: web.Request) -> web.Response:
            return web.json_response({"enabled": self.enabled})

        app = web.Application(middlewares=[record])
        app.router.add_post("/v1/auth/token", token)
        app.router.add_get("/v1/auth/status", status)
        app.router.add_route("*", "/v1/auth/{rest:.*}", admin)
        app.router.add_route("*", "/v1/kv/{key:.*}", kv)
        app.router.add_get("/v1/watch", watch)
        return app


@pytest.fixture
async def node() -> AsyncIterator[FakeAuthNode]:
    fake = FakeAuthNode()
    server = TestServer(fake.app(), host="127.0.0.1", port=None)
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await server.close()


def client(node: FakeAuthNode, **options: Any) -> AsyncKV:
    return AsyncKV([node.url], retry=NO_BACKOFF, timeout=5.0, **options)


# ------------------------------------------------------------------ tokens


async def test_a_token_is_asked_for_on_first_need_and_shared(node: FakeAuthNode) -> None:
    async with client(node, user="alice", password="alicepw") as kv:
        assert kv.token is None
        await asyncio.gather(*(kv.put(f"app/{i}", b"v") for i in range(10)))
        assert node.token_requests() == 1
        assert kv.token == "t1"
    writes = [auth for method, path, auth in node.seen if method == "PUT"]
    assert writes == ["Bearer t1"] * 10
    assert node.seen[0][1] == "/v1/auth/token" and node.seen[0][2] is None  # no token for it


async def test_an_expired_token_is_renewed_once_and_the_request_retried(
    node: FakeAuthNode,
) -> None:
    async with client(node, user="alice", password="alicepw") as kv:
        await kv.put("app/a", b"1")
        node.expired.add("t1")
        assert await kv.put("app/b", b"2")
        assert kv.token == "t2"
    puts = [(path, auth) for method, path, auth in node.seen if method == "PUT"]
    assert puts == [
        ("/v1/kv/app/a", "Bearer t1"),
        ("/v1/kv/app/b", "Bearer t1"),
        ("/v1/kv/app/b", "Bearer t2"),
    ]


async def test_a_token_refused_again_after_renewal_is_final(node: FakeAuthNode) -> None:
    async with client(node, user="alice", password="alicepw") as kv:
        await kv.put("app/a", b"1")
        node.expired.update(f"t{i}" for i in range(1, 10))
        with pytest.raises(AuthenticationFailed) as caught:
            await kv.put("app/b", b"2")
    assert caught.value.code == "token_expired" and caught.value.status == 401
    assert node.token_requests() == 2  # renewed once, not in a loop


async def test_a_fixed_token_is_sent_as_is_and_never_renewed(node: FakeAuthNode) -> None:
    node.tokens["given"] = "alice"
    async with client(node, token="given") as kv:
        await kv.put("app/a", b"1")
        node.expired.add("given")
        with pytest.raises(AuthenticationFailed, match="token_expired"):
            await kv.put("app/b", b"2")
    assert node.token_requests() == 0


async def test_a_wrong_password_is_authentication_failed(node: FakeAuthNode) -> None:
    async with client(node, user="alice", password="nope") as kv:
        with pytest.raises(AuthenticationFailed, match="bad_credentials"):
            await kv.put("app/a", b"1")
    assert [path for _, path, _ in node.seen] == ["/v1/auth/token"]  # the write never left


async def test_no_credentials_on_a_cluster_with_auth_is_authentication_failed(
    node: FakeAuthNode,
) -> None:
    async with client(node) as kv:
        with pytest.raises(AuthenticationFailed, match="auth_required"):
            await kv.get("app/a")


async def test_outside_the_users_prefix_is_permission_denied(node: FakeAuthNode) -> None:
    async with client(node, user="alice", password="alicepw") as kv:
        with pytest.raises(PermissionDenied, match="may not touch") as caught:
            await kv.put("other/a", b"1")
        assert isinstance(caught.value, PermissionError)
        with pytest.raises(PermissionDenied):
            async for _ in kv.watch(prefix="other/"):
                pass


async def test_auth_off_costs_one_token_request_until_it_is_turned_on(
    node: FakeAuthNode,
) -> None:
    node.enabled = False
    async with client(node, user="alice", password="alicepw") as kv:
        for i in range(3):
            await kv.put(f"app/{i}", b"v")
        assert node.token_requests() == 1 and kv.token is None
        node.enabled = True  # `kv auth enable` meanwhile: the next request asks for one
        await kv.put("app/after", b"v")
        assert kv.token == "t1"
    assert node.seen[-1] == ("PUT", "/v1/kv/app/after", "Bearer t1")


def test_credentials_take_a_user_with_a_password_or_a_token() -> None:
    for bad in (
        {"user": "a"},
        {"password": "p"},
        {"user": "a", "password": "p", "token": "t"},
        {"token": ""},
    ):
        with pytest.raises(InvalidRequest):
            Credentials(**bad)


async def test_a_token_is_renewed_before_it_expires() -> None:
    now = [100.0]
    asked: list[bytes] = []

    async def fetch(body: bytes, budget: float) -> Answer:
        asked.append(body)
        doc = {"token": f"t{len(asked)}", "ttl": 100, "user": "alice"}
        return Answer("fake", 200, {}, json.dumps(doc).encode())

    creds = Credentials("alice", "pw", clock=lambda: now[0])
    creds.bind(fetch)
    await creds.ready(1.0)
    assert creds.header() == {"Authorization": "Bearer t1"}
    assert json.loads(asked[0]) == {"user": "alice", "password": "pw"}
    now[0] += 100 * RENEW_AFTER - 1
    await creds.ready(1.0)
    assert len(asked) == 1
    now[0] += 2  # past three quarters of its lifetime: a new one before it runs out
    await creds.ready(1.0)
    assert creds.header() == {"Authorization": "Bearer t2"}


async def test_an_unusable_token_answer_is_refused() -> None:
    async def fetch(body: bytes, budget: float) -> Answer:
        return Answer("fake", 200, {}, b'{"token": "", "ttl": 300}')

    creds = Credentials("alice", "pw")
    creds.bind(fetch)
    with pytest.raises(AuthenticationFailed, match="unusable"):
        await creds.ready(1.0)


# ------------------------------------------------------------------ administration


async def test_admin_calls_follow_the_contract(node: FakeAuthNode) -> None:
    async with client(node, user="root", password="rootpw") as kv:
        await auth_admin.add_user(kv, "alice", "s3cret")
        await auth_admin.set_password(kv, "alice", "n3w")
        await auth_admin.grant_role(kv, "alice", "app")
        await auth_admin.revoke_role(kv, "alice", "app")
        await auth_admin.add_role(kv, "app")
        await auth_admin.grant_permission(kv, "app", "readwrite", prefix="app/")
        await auth_admin.grant_permission(kv, "app", "read", key="a b")
        await auth_admin.grant_permission(kv, "app", "write", start="m", end="n")
        await auth_admin.revoke_permission(kv, "app", prefix="app/")
        await auth_admin.delete_role(kv, "app")
        await auth_admin.delete_user(kv, "alice")
        await auth_admin.enable(kv)
        await auth_admin.disable(kv)
        assert await auth_admin.list_users(kv) == [auth_admin.User("alice", ("app",))]
        role = await auth_admin.get_role(kv, "app")
        assert role.permissions == (auth_admin.Permission("readwrite", "app/", "app0"),)
        assert await auth_admin.status(kv) is True
    assert node.admin[:13] == [
        ("PUT", "/v1/auth/users/alice", b'{"password": "s3cret"}'),
        ("POST", "/v1/auth/users/alice/password", b'{"password": "n3w"}'),
        ("PUT", "/v1/auth/users/alice/roles/app", b""),
        ("DELETE", "/v1/auth/users/alice/roles/app", b""),
        ("PUT", "/v1/auth/roles/app", b""),
        ("POST", "/v1/auth/roles/app/permissions?access=readwrite&prefix=app%2F", b""),
        ("POST", "/v1/auth/roles/app/permissions?access=read&key=a%20b", b""),
        ("POST", "/v1/auth/roles/app/permissions?access=write&start=m&end=n", b""),
        ("DELETE", "/v1/auth/roles/app/permissions?prefix=app%2F", b""),
        ("DELETE", "/v1/auth/roles/app", b""),
        ("DELETE", "/v1/auth/users/alice", b""),
        ("POST", "/v1/auth/enable", b""),
        ("POST", "/v1/auth/disable", b""),
    ]


async def test_admin_arguments_are_checked_before_sending(node: FakeAuthNode) -> None:
    async with client(node, user="root", password="rootpw") as kv:
        with pytest.raises(InvalidRequest):
            await auth_admin.add_user(kv, "bob", "")
        with pytest.raises(InvalidRequest):
            await auth_admin.grant_permission(kv, "app", "everything", prefix="a")  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest):
            await auth_admin.grant_permission(kv, "app", "read", prefix="a", key="b")
        with pytest.raises(InvalidRequest):
            await auth_admin.revoke_permission(kv, "app", prefix="a", end="z")
    assert node.admin == []


async def test_an_admin_change_whose_answer_is_lost_is_outcome_unknown() -> None:
    """Sent at most once: a user added twice would only be a confusing 409."""
    calls = []

    async def hang_up(request: web.Request) -> web.Response:
        calls.append(request.path)
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang_up)
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        async with AsyncKV([url], retry=NO_BACKOFF, timeout=3.0) as kv:
            with pytest.raises(OutcomeUnknown):
                await auth_admin.add_user(kv, "bob", "pw")
    finally:
        await server.close()
    assert calls.count("/v1/auth/users/bob") == 1
