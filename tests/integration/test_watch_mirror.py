"""The Mirror (list, then watch) against a real cluster, its blocking twin, re-listing
after compaction, and the config-driven example service reloading its settings."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from kvstore.client import KV, AsyncKV, Change, Mirror
from tests.integration.harness import (
    REPO_ROOT,
    Cluster,
    child_env,
    free_ports,
    request,
    wait_until,
)
from tests.integration.test_examples import stop_by_pid

pytestmark = pytest.mark.integration


async def test_a_mirror_lists_then_follows_every_change(cluster: Cluster) -> None:
    changes: list[Change] = []
    async with AsyncKV(cluster.endpoints()) as kv:
        await kv.put("cfg/a", b"1")
        await kv.put("cfg/b", b"2")
        await kv.put("other", b"x")
        async with Mirror(kv, "cfg/", on_change=changes.append) as mirror:
            assert mirror.snapshot() == {"cfg/a": b"1", "cfg/b": b"2"}
            listed = [(c.key, c.old, c.new) for c in changes]
            assert listed == [("cfg/a", None, b"1"), ("cfg/b", None, b"2")]  # the listing
            await kv.put("cfg/a", b"10")
            await kv.delete("cfg/b")
            revision = (await kv.put("cfg/c", b"3")).revision
            await mirror.wait_for(revision, timeout=10)
            assert mirror.snapshot() == {"cfg/a": b"10", "cfg/c": b"3"}
            assert mirror.revision >= revision
        assert [(c.key, c.old, c.new) for c in changes[2:]] == [
            ("cfg/a", b"1", b"10"),
            ("cfg/b", b"2", None),
            ("cfg/c", None, b"3"),
        ]
        assert [c.revision for c in changes[2:]] == [revision - 2, revision - 1, revision]


async def test_a_mirror_behind_the_history_lists_again_and_reports_the_differences(
    cluster_factory: Any,
) -> None:
    c: Cluster = cluster_factory(election_ticks=30, history_revisions=20)
    c.start()
    c.wait_healthy(timeout=20.0)
    changes: list[Change] = []
    async with AsyncKV(c.endpoints()) as kv:
        await kv.put("m/keep", b"same")
        await kv.put("m/gone", b"old")
        mirror = Mirror(kv, "m/", on_change=changes.append)
        await mirror._relist()  # listed, but not following yet: it falls behind
        changes.clear()
        await kv.delete("m/gone")
        for i in range(30):
            last = (await kv.put("m/new", b"%d" % i)).revision
        await mirror.start()  # its history is compacted by now: it lists again
        await mirror.wait_for(last, timeout=10)
        await mirror.close()
    assert mirror.snapshot() == {"m/keep": b"same", "m/new": b"29"}
    assert [(ch.key, ch.old, ch.new) for ch in changes] == [
        ("m/gone", b"old", None),
        ("m/new", None, b"29"),
    ]


def test_the_blocking_mirror_is_read_from_other_threads(cluster: Cluster) -> None:
    with KV(cluster.endpoints()) as kv:
        kv.put("t/x", b"1")
        with kv.mirror("t/") as mirror:
            assert mirror.get("t/x") == b"1"
            seen: list[bytes | None] = []
            revision = kv.put("t/x", b"2").revision
            reader = threading.Thread(
                target=lambda: (
                    mirror.wait_for(revision, timeout=10),
                    seen.append(mirror.get("t/x")),
                )
            )
            reader.start()
            reader.join(timeout=15)
            assert seen == [b"2"]


def test_the_config_service_reloads_settings_the_moment_they_change(
    cluster: Cluster, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    leader = cluster.wait_leader()
    cluster.put(leader, "config/greeter/greeting", b"Hi")
    log_path = tmp_path / "config_service.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "examples" / "config_service.py"),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**child_env(), "KV_ENDPOINTS": cluster.endpoints()},
        )
    try:
        wait_until(lambda: request(url, "GET", "/health", timeout=1).status == 200, 20, "service")

        def message() -> str:
            return str(request(url, "GET", "/hello?name=Ada", timeout=2).json()["message"])

        assert message() == "Hi, Ada!"
        cluster.put(leader, "config/greeter/greeting", b"Bonjour")
        wait_until(lambda: message() == "Bonjour, Ada!", 5, "the new greeting")
        cluster.put(leader, "config/greeter/max_name_length", b"lots")  # refused, kept
        cluster.put(leader, "config/greeter/punctuation", b".")
        wait_until(lambda: message() == "Bonjour, Ada.", 5, "the new punctuation")
        cluster.http(leader, "DELETE", "/v1/kv/config/greeter/greeting")
        wait_until(lambda: message() == "Hello, Ada.", 5, "the default greeting back")
        settings = request(url, "GET", "/settings", timeout=2).json()
        assert settings["settings"]["max_name_length"] == 40
        assert settings["reloads"] == 4  # the first listing, then three changes
    finally:
        stop_by_pid(proc)
    assert "ignoring config/greeter/max_name_length" in log_path.read_text()
