"""`kv auth/user/role` and the credential options of every client command, as real
processes against the fake node of test_client_auth: --user/--password, KV_USER /
KV_PASSWORD / KV_TOKEN, the password prompt, exit code 5 with one clear line for
401 and 403, and the requests each admin command sends."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from kvstore.client.endpoints import ENV_VAR
from tests.kvstore.test_client_auth import FakeAuthNode

ROOT = Path(__file__).resolve().parents[2]
CREDENTIAL_VARS = ("KV_USER", "KV_PASSWORD", "KV_TOKEN")


@contextmanager
def serving(fake: FakeAuthNode) -> Iterator[FakeAuthNode]:
    """The fake on its own loop thread, so that `kv` processes can reach it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = TestServer(fake.app(), host="127.0.0.1", port=None)
    asyncio.run_coroutine_threadsafe(server.start_server(), loop).result(timeout=10)
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def node() -> Iterator[FakeAuthNode]:
    with serving(FakeAuthNode()) as fake:
        yield fake


def kv(
    node: FakeAuthNode, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**base, ENV_VAR: node.url, **env},
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_user_and_password_options(node: FakeAuthNode) -> None:
    done = kv(node, "put", "app/a", "v", "--user", "alice", "--password", "alicepw")
    assert done.returncode == 0, done.stderr
    assert node.data == {"app/a": b"v"}


def test_the_environment_gives_credentials(node: FakeAuthNode) -> None:
    done = kv(node, "put", "app/a", "v", KV_USER="alice", KV_PASSWORD="alicepw")
    assert done.returncode == 0, done.stderr
    node.tokens["fixed"] = "alice"
    done = kv(node, "get", "app/a", KV_TOKEN="fixed")
    assert done.returncode == 0, done.stderr
    assert node.seen[-1] == ("GET", "/v1/kv/app/a", "Bearer fixed")


def test_the_password_is_prompted_when_only_the_user_is_given(node: FakeAuthNode) -> None:
    done = kv(node, "put", "app/a", "v", "--user", "alice", stdin="alicepw\n")
    assert done.returncode == 0, done.stderr
    assert "Password for alice" in done.stderr and "alicepw" not in done.stderr + done.stdout


def test_no_credentials_is_exit_5_with_a_hint(node: FakeAuthNode) -> None:
    done = kv(node, "get", "app/a")
    assert done.returncode == 5
    line = one_line(done)
    assert "authentication failed (auth_required)" in line and "--user" in line


def test_a_wrong_password_is_exit_5(node: FakeAuthNode) -> None:
    done = kv(node, "get", "app/a", "--user", "alice", "--password", "wrong")
    assert done.returncode == 5
    assert "bad_credentials" in one_line(done)


def test_outside_the_prefix_is_exit_5_naming_the_user(node: FakeAuthNode) -> None:
    done = kv(node, "put", "other/a", "v", "--user", "alice", "--password", "alicepw")
    assert done.returncode == 5
    line = one_line(done)
    assert "permission denied" in line and "'alice'" in line and "other/a" in line


def test_user_and_token_together_is_a_usage_error(node: FakeAuthNode) -> None:
    done = kv(node, "get", "k", "--user", "alice", "--password", "x", KV_TOKEN="t")
    assert done.returncode == 2
    assert "not both" in one_line(done)


def test_admin_commands_send_the_contracts_requests(node: FakeAuthNode) -> None:
    root = ("--user", "root", "--password", "rootpw")
    for args in (
        ("user", "add", "alice", "--new-password", "pw1"),
        ("user", "passwd", "alice", "--new-password", "pw2"),
        ("role", "add", "app"),
        ("role", "grant", "app", "readwrite", "--prefix", "app/"),
        ("role", "grant", "app", "read", "--exact-key", "cfg"),
        ("role", "revoke", "app", "--start", "m", "--end", "n"),
        ("user", "grant", "alice", "app"),
        ("user", "revoke", "alice", "app"),
        ("role", "delete", "app"),
        ("user", "delete", "alice"),
        ("auth", "enable"),
        ("auth", "disable"),
    ):
        done = kv(node, *args, *root)
        assert done.returncode == 0, (args, done.stderr)
    assert [(m, p) for m, p, _ in node.admin] == [
        ("PUT", "/v1/auth/users/alice"),
        ("POST", "/v1/auth/users/alice/password"),
        ("PUT", "/v1/auth/roles/app"),
        ("POST", "/v1/auth/roles/app/permissions?access=readwrite&prefix=app%2F"),
        ("POST", "/v1/auth/roles/app/permissions?access=read&key=cfg"),
        ("DELETE", "/v1/auth/roles/app/permissions?start=m&end=n"),
        ("PUT", "/v1/auth/users/alice/roles/app"),
        ("DELETE", "/v1/auth/users/alice/roles/app"),
        ("DELETE", "/v1/auth/roles/app"),
        ("DELETE", "/v1/auth/users/alice"),
        ("POST", "/v1/auth/enable"),
        ("POST", "/v1/auth/disable"),
    ]
    assert node.admin[0][2] == b'{"password": "pw1"}'


def test_listings_and_status(node: FakeAuthNode) -> None:
    root = ("--user", "root", "--password", "rootpw")
    users = kv(node, "user", "list", *root)
    assert users.returncode == 0 and "alice" in users.stdout and "app" in users.stdout
    role = kv(node, "role", "get", "app", *root)
    assert role.returncode == 0
    assert role.stdout.split("\n")[1].split() == ["app", "readwrite", "app/", "app0"]
    status = kv(node, "auth", "status")
    assert (status.returncode, status.stdout.strip()) == (0, "enabled")
    token = kv(node, "auth", "token", *root)
    assert token.returncode == 0 and token.stdout.strip().startswith("t")


def test_a_range_needs_exactly_one_form(node: FakeAuthNode) -> None:
    done = kv(node, "role", "grant", "app", "read", "--prefix", "a", "--exact-key", "b")
    assert done.returncode == 2
    assert "one of --prefix" in one_line(done)
    assert node.seen == []
