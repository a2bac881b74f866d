"""The CLI and the Python client against a real cluster with authentication: enable it
with a root user (README, Security, step by step), give a user a role on a prefix,
and check that the user's `kv` commands and client calls work inside the prefix and
are refused (exit 5, PermissionDenied) outside it; that an expired token is refused
and a client with a password renews its own (short `[auth] token_ttl`)."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from kvstore.client import KV, AsyncKV, AuthenticationFailed, PermissionDenied
from tests.integration.harness import Cluster, wait_until

pytestmark = pytest.mark.integration

TOKEN_TTL = 3


@pytest.fixture
def secured(cluster_factory) -> Cluster:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(election_ticks=30)
    cluster.extra_toml = f"\n[auth]\ntoken_ttl = {TOKEN_TTL}\n"
    cluster.write_config()
    cluster.start()
    try:
        cluster.wait_healthy(timeout=20.0)
    except TimeoutError:
        pytest.fail(f"cluster did not come up:\n{cluster.logs()}")
    return cluster


def run(cluster: Cluster, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    creds = {"root": "rootpw", "alice": "alicepw"}
    who = ["--user", user, "--password", creds[user]] if user else []
    return cluster.kv(*args, "--endpoints", cluster.endpoints(), *who)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.args, done.stdout, done.stderr)
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], text: str) -> None:
    assert done.returncode == 5, (done.args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and text in done.stderr, done.stderr


def test_enable_auth_and_work_inside_a_prefix(secured: Cluster) -> None:
    c = secured
    assert ok(run(c, "auth", "status")).strip() == "disabled"
    refused_enable = run(c, "auth", "enable")
    assert refused_enable.returncode == 1 and "no_root_user" in refused_enable.stderr
    ok(run(c, "user", "add", "root", "--new-password", "rootpw"))
    ok(run(c, "user", "grant", "root", "root"))
    ok(run(c, "auth", "enable"))
    assert ok(run(c, "auth", "status")).strip() == "enabled"
    refused(run(c, "put", "app/a", "v"), "auth_required")

    ok(run(c, "role", "add", "app", user="root"))
    ok(run(c, "role", "grant", "app", "readwrite", "--prefix", "app/", user="root"))
    ok(run(c, "user", "add", "alice", "--new-password", "alicepw", user="root"))
    ok(run(c, "user", "grant", "alice", "app", user="root"))
    assert "alice" in ok(run(c, "user", "list", user="root"))
    assert "app/" in ok(run(c, "role", "get", "app", user="root"))

    ok(run(c, "put", "app/a", "1", user="alice"))
    assert ok(run(c, "get", "app/a", user="alice")) == "1"
    refused(run(c, "put", "other/a", "1", user="alice"), "permission denied")
    refused(run(c, "get", "other/a", user="alice"), "permission denied")
    refused(run(c, "user", "list", user="alice"), "permission denied")
    refused(run(c, "get", "app/a", "--user", "alice", "--password", "wrong"), "bad_credentials")

    with KV(c.endpoints().split(","), user="alice", password="alicepw", timeout=10) as kv:
        kv.put("app/b", b"2")
        assert kv.get("app/b").value == b"2"
        assert [item.key for item in kv.get_prefix("app/")] == ["app/a", "app/b"]
        with pytest.raises(PermissionDenied):
            kv.put("other/b", b"2")
        with pytest.raises(PermissionDenied):
            kv.get("other/b")
    asyncio.run(_watch_as_alice(c.endpoints().split(",")))
    wrong = KV(c.endpoints().split(","), user="alice", password="nope", timeout=10)
    with wrong as kv, pytest.raises(AuthenticationFailed):
        kv.get("app/a")

    ok(run(c, "auth", "disable", user="root"))
    ok(run(c, "put", "other/a", "open again"))


async def _watch_as_alice(endpoints: list[str]) -> None:
    """A watch carries the token, sees the user's prefix, and is refused outside it."""
    async with AsyncKV(endpoints, user="alice", password="alicepw", timeout=10) as kv:
        watch = kv.watch(prefix="app/", start_revision=1)
        event = await asyncio.wait_for(watch.__anext__(), 10)
        assert event.key.startswith("app/")
        await watch.aclose()
        with pytest.raises(PermissionDenied):
            await asyncio.wait_for(kv.watch(prefix="other/").__anext__(), 10)


def test_tokens_expire_and_the_client_renews_its_own(secured: Cluster) -> None:
    c = secured
    ok(run(c, "user", "add", "root", "--new-password", "rootpw"))
    ok(run(c, "user", "grant", "root", "root"))
    ok(run(c, "auth", "enable"))
    token = ok(run(c, "auth", "token", user="root")).strip()
    assert ok(c.kv("put", "k", "v", "--endpoints", c.endpoints(), "--token", token))
    expired = wait_until(
        lambda: (
            (d := c.kv("get", "k", "--endpoints", c.endpoints(), "--token", token)).returncode == 5
            and d
        ),
        TOKEN_TTL + 10,
        "the token to expire",
    )
    refused(expired, "token_expired")

    with KV(c.endpoints().split(","), user="root", password="rootpw", timeout=10) as kv:
        kv.put("k", b"1")
        first = kv.token
        end = time.monotonic() + 2 * TOKEN_TTL
        while time.monotonic() < end:  # writes across two lifetimes, none refused
            kv.put("k", b"2")
            time.sleep(0.2)
        assert kv.token not in (None, first)
