"""Leases, locks, fences and elections against real processes (issue 14).

The safety tests: keys of a killed client vanish within TTL + election time; a lease
outlives a kill -9 of the leader while its keep-alives go on; and the classic pause
(holder SIGSTOPped past its TTL, another client takes the lock and writes, the first
wakes up and writes with its old token) ends with the stale write refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from kvstore.client import KV, AsyncKV, Cmp, Fenced, LeaseNotFound, LockTimeout, Op
from tests.integration.harness import REPO_ROOT, Cluster, child_env, wait_until

TTL = 2
ELECTION_S = 30 * 10 / 1000 * 2  # the fixture's election timeout (30 ticks of 10 ms), twice
SLACK_S = 1.5  # scheduling on a shared test machine: check intervals, polls, process start


@contextlib.contextmanager
def client_process(cluster: Cluster, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A lease_client process, stopped by its PID whatever happens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.lease_client", cluster.endpoints(), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
        proc.wait(timeout=10)


def read_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the client prints within its 10 s call timeout
    assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
    return line.split()[1]


def key_exists(cluster: Cluster, node: str, key: str) -> bool:
    reply = cluster.get(node, key)
    assert reply.status in (200, 404), reply.body
    return reply.status == 200


def test_http_api_from_a_follower(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    node = next(n for n in cluster.nodes if n != leader)

    def call(method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, object]]:
        reply = cluster.http(node, method, path, body=body)
        return reply.status, reply.json()

    assert call("POST", "/v1/leases?ttl=5&ttl=6")[1]["error"] == "bad_query"
    status, body = call("POST", "/v1/leases?tll=5")
    assert status == 400 and "tll" in str(body["message"])
    short = call("POST", "/v1/leases?ttl=30")[1]["id"]
    other = call("POST", "/v1/leases?ttl=30")[1]["id"]
    assert call("PUT", f"/v1/kv/services%2Fa?lease={short}", b"up")[0] == 200
    assert call("PUT", "/v1/kv/k?lease=999999", b"v") == (
        404,
        {"error": "lease_not_found", "message": "lease 999999 does not exist (it ended?)"},
    )
    status, body = call("GET", f"/v1/leases/{short}")
    assert status == 200 and body["keys"] == ["services/a"] and body["ttl"] == 30
    assert call("POST", f"/v1/leases/{short}/keepalive") == (200, {"id": short, "ttl": 30})
    assert {row["id"] for row in call("GET", "/v1/leases")[1]["leases"]} >= {short, other}  # type: ignore[union-attr]

    first = call("POST", f"/v1/locks/jobs%2Fx?lease={short}")[1]
    second = call("POST", f"/v1/locks/jobs%2Fx?lease={other}")[1]
    assert first["held"] is True and second["held"] is False
    assert second["token"] > first["token"]  # type: ignore[operator]
    fence = f"fence_lock=jobs/x&fence_token={second['token']}"
    status, body = call("PUT", f"/v1/kv/out?{fence}", b"early")
    assert status == 409 and body["error"] == "fenced" and body["holder"] == first["token"]
    assert call("DELETE", f"/v1/leases/{short}") == (200, {"revision": 2, "deleted": 1})
    waited = call("GET", f"/v1/locks/jobs%2Fx?token={second['token']}&wait=5")[1]
    assert waited["held"] is True
    assert call("PUT", f"/v1/kv/out?{fence}", b"mine")[0] == 200
    assert not key_exists(cluster, node, "services/a")

    campaign = call("POST", f"/v1/elections/pool?lease={other}", b"node-a")[1]
    assert campaign["held"] is True
    token = campaign["token"]
    seen = call("GET", "/v1/elections/pool")[1]
    assert seen["holder"]["value"] == "node-a"  # type: ignore[index]
    assert call("PUT", f"/v1/elections/pool?token={token}", b"node-a:2")[0] == 200
    after = call("GET", f"/v1/elections/pool?after={seen['changed']}&wait=5")[1]
    assert after["holder"]["value"] == "node-a:2"  # type: ignore[index]
    assert call("PUT", f"/v1/elections/pool?token={token + 1}", b"x")[1]["error"] == "fenced"
    assert call("DELETE", f"/v1/elections/pool?token={token}")[0] == 200
    assert call("GET", "/v1/elections/pool")[1]["holder"] is None
    assert call("GET", "/v1/locks/jobs%2Fx?wait=x")[1]["error"] == "bad_wait"


def lock_requests_seen(cluster: Cluster, nodes: list[str]) -> int:
    """How many lock and election requests `nodes` answered on their client port."""
    seen = 0
    for node in nodes:
        for line in cluster.http(node, "GET", "/metrics").body.decode().splitlines():
            if line.startswith("kv_http_requests_total{") and (
                "/v1/locks/" in line or "/v1/elections/" in line
            ):
                seen += int(float(line.rsplit(" ", 1)[1]))
    return seen


def test_post_with_wait_acquires_in_one_request_on_a_follower(cluster: Cluster) -> None:
    """POST ?lease=ID&wait=S queues and waits in one request: held at once, held once
    the holder releases, held false (still queued) when the wait runs out, queued false
    when its lease ends meanwhile; every wait is served by the follower that got it
    (no lock request reaches another node's client port)."""
    leader = cluster.wait_leader()
    node = next(n for n in cluster.nodes if n != leader)
    others = [n for n in cluster.nodes if n != node]
    before = lock_requests_seen(cluster, others)

    def call(method: str, path: str, body: bytes | None = None) -> dict[str, object]:
        reply = cluster.http(node, method, path, body=body, timeout=15)
        assert reply.status == 200, reply.body
        return reply.json()  # type: ignore[no-any-return]

    a, b, c, d = (call("POST", "/v1/leases?ttl=30")["id"] for _ in range(4))
    first = call("POST", f"/v1/locks/w?lease={a}&wait=5")
    assert first["held"] is True and first["queued"] is True
    assert first["holder"] == first["token"]
    started = time.monotonic()
    second = call("POST", f"/v1/locks/w?lease={b}&wait=0.5")
    assert time.monotonic() - started >= 0.45
    assert second["held"] is False and second["queued"] is True
    assert second["holder"] == first["token"]
    assert call("GET", "/v1/locks/w")["waiters"] == 1  # it kept its place

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # The same lease asks again (same place, same token) and waits for its turn.
        again = pool.submit(call, "POST", f"/v1/locks/w?lease={b}&wait=10")
        with pytest.raises(concurrent.futures.TimeoutError):
            again.result(timeout=0.3)
        call("DELETE", f"/v1/locks/w?token={first['token']}")
        assert again.result(timeout=15) == {
            "name": "w",
            "token": second["token"],
            "holder": second["token"],
            "held": True,
            "queued": True,
        }
        # A waiter whose lease ends while it waits: held false, no longer queued.
        leaving = pool.submit(call, "POST", f"/v1/locks/w?lease={c}&wait=10")
        with pytest.raises(concurrent.futures.TimeoutError):
            leaving.result(timeout=0.3)
        call("DELETE", f"/v1/leases/{c}")
        left = leaving.result(timeout=15)
        assert left["held"] is False and left["queued"] is False

    queued = call("POST", f"/v1/locks/w?lease={d}")
    assert queued["held"] is False
    waited = call("GET", f"/v1/locks/w?token={queued['token']}&wait=0.3")
    assert waited["held"] is False and waited["queued"] is True
    call("DELETE", f"/v1/locks/w?token={second['token']}")
    assert call("GET", f"/v1/locks/w?token={queued['token']}&wait=5")["held"] is True

    campaign = call("POST", f"/v1/elections/pool2?lease={a}&wait=5", b"node-b")
    assert campaign["held"] is True and campaign["queued"] is True
    for bad in ("wait=31", "wait=x", "wait=-1", "wait=1&wait=2"):
        reply = cluster.http(node, "POST", f"/v1/locks/w?lease={a}&{bad}")
        assert reply.status == 400, bad
        assert reply.json()["error"] in ("bad_wait", "bad_query"), bad
    assert lock_requests_seen(cluster, others) == before


def test_transaction_puts_attach_keys_to_a_lease(cluster: Cluster) -> None:
    """A txn put with a lease (client and HTTP from a follower): the key goes with the
    lease; a txn naming an ended lease is refused whole with 404 lease_not_found."""
    leader = cluster.wait_leader()
    node = next(n for n in cluster.nodes if n != leader)
    with KV(cluster.endpoints().split(","), timeout=10.0) as kv:
        with kv.lease(30) as lease:
            answer = (
                kv.txn()
                .if_(Cmp.missing("services/b"))
                .then(Op.put("services/b", b"up", lease=lease.id), Op.put("plain", b"v"))
                .commit()
            )
            assert answer.succeeded
            put = {"put": {"key": "services/c", "text": "up", "lease": lease.id}}
            doc = json.dumps({"success": [put]}).encode()
            assert cluster.http(node, "POST", "/v1/txn", body=doc).status == 200
            info = cluster.http(node, "GET", f"/v1/leases/{lease.id}").json()
            assert info["keys"] == ["services/b", "services/c"]
        # Leaving the block revoked the lease: its keys went, the plain one stayed.
        assert not key_exists(cluster, node, "services/b")
        assert not key_exists(cluster, node, "services/c")
        with pytest.raises(LeaseNotFound):
            kv.txn().then(
                Op.put("services/d", b"up", lease=lease.id), Op.put("plain", b"w")
            ).commit()
        reply = cluster.http(node, "POST", "/v1/txn", body=doc)
        assert reply.status == 404 and reply.json()["error"] == "lease_not_found"
        assert kv.get("plain").value == b"v" and not key_exists(cluster, node, "services/d")


def test_client_lock_queue_is_first_come_with_growing_tokens(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with AsyncKV(cluster.endpoints().split(",")) as kv:
            first = kv.lock("jobs/nightly", ttl=5)
            await first.acquire()
            waiters = [kv.lock("jobs/nightly", ttl=5) for _ in range(2)]
            tasks = []
            for lock in waiters:
                tasks.append(asyncio.create_task(lock.acquire()))
                await asyncio.sleep(0.3)  # queue them in a known order
            with pytest.raises(LockTimeout):
                await kv.lock("jobs/nightly", ttl=5, timeout=0.5).acquire()
            await first.put("jobs/out", b"first")
            old = first.fence
            await first.release()
            tokens = [await tasks[0]]
            with pytest.raises(Fenced):
                await kv.put("jobs/out", b"stale", fence=old)
            await waiters[0].put("jobs/out", b"w0")
            await waiters[0].release()
            tokens.append(await tasks[1])
            await waiters[1].release()
            assert old.token < tokens[0] < tokens[1]
            assert (await kv.get("jobs/out")).value == b"w0"

    asyncio.run(scenario())


def test_ephemeral_keys_vanish_after_their_client_is_killed(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    with client_process(cluster, "ephemeral", "services/api-1", str(TTL)) as proc:
        read_line(proc, "ready")
        assert key_exists(cluster, leader, "services/api-1")
        proc.kill()
        proc.wait(timeout=10)
        killed = time.monotonic()
    wait_until(
        lambda: not key_exists(cluster, leader, "services/api-1"),
        TTL + ELECTION_S + SLACK_S,
        "the killed client's key to vanish within TTL + election time",
    )
    # Never before its TTL: the last keep-alive was at most TTL/3 before the kill.
    assert time.monotonic() - killed >= TTL - TTL / 3 - 0.2


def test_a_lease_survives_a_leader_kill_while_kept_alive(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    with KV(cluster.endpoints().split(","), timeout=10.0) as kv, kv.lease(TTL) as lease:
        kv.put("services/survivor", b"up", lease=lease.id)
        cluster.kill9(leader)
        survivors = [n for n in cluster.nodes if n != leader]
        new_leader = cluster.wait_leader(among=survivors)
        until = time.monotonic() + 3 * TTL  # several TTLs across the failover
        while time.monotonic() < until:
            assert key_exists(cluster, new_leader, "services/survivor")
            assert not lease.is_lost
            time.sleep(0.1)
    # Closing the lease revoked it: the key is gone at once.
    assert not key_exists(cluster, new_leader, "services/survivor")


def test_a_paused_holder_cannot_write_with_its_old_token(cluster: Cluster) -> None:
    """Holder SIGSTOPped past its TTL; another client takes the lock and writes; the
    holder wakes and writes with its old token: the cluster refuses it."""
    leader = cluster.wait_leader()
    with client_process(cluster, "holder", "orders/42", str(TTL), "orders/42/state") as proc:
        old_token = int(read_line(proc, "token"))
        os.kill(proc.pid, signal.SIGSTOP)
        with KV(cluster.endpoints().split(","), timeout=15.0) as kv:
            with kv.lock("orders/42", ttl=10, timeout=TTL + ELECTION_S + 10) as lock:
                assert lock.token > old_token
                lock.put("orders/42/state", b"second holder")
                os.kill(proc.pid, signal.SIGCONT)
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
                assert read_line(proc, "fenced") == str(lock.token)
            value = kv.get("orders/42/state").value
    assert value == b"second holder"
    assert cluster.get(leader, "orders/42/state").body == b"second holder"


def test_cli_lease_lock_and_elect(cluster: Cluster) -> None:
    ep = ("--endpoints", cluster.endpoints())

    def kv(*args: str) -> subprocess.CompletedProcess[str]:
        return cluster.kv(*args, *ep, timeout=60)

    lease = kv("lease", "grant", "30")
    assert lease.returncode == 0, lease.stderr
    lease_id = lease.stdout.strip()
    assert kv("put", "services/cli", "up", "--lease", lease_id).returncode == 0
    ttl = kv("lease", "ttl", lease_id, "--keys")
    assert ttl.stdout.splitlines()[1:] == ["services/cli"] and "ttl 30" in ttl.stdout
    assert lease_id in kv("lease", "list").stdout
    assert "kept alive (ttl 30)" in kv("lease", "keepalive", lease_id, "--once").stdout
    assert "1 keys deleted" in kv("lease", "revoke", lease_id).stdout
    assert kv("get", "services/cli").returncode == 1
    assert kv("lease", "keepalive", lease_id, "--once").returncode == 1

    # The command runs holding the lock; its fenced write goes through.
    script = (
        "import os, subprocess, sys; t = os.environ['KV_LOCK_TOKEN']; "
        "r = subprocess.run([sys.executable, '-m', 'kvstore.cli.main', 'put', 'cli/out', t, "
        f"'--fence-lock', 'cli/job', '--fence-token', t, '--endpoints', '{cluster.endpoints()}']); "
        "sys.exit(r.returncode or 7)"
    )
    held = kv("lock", "cli/job", "--ttl", "5", "--", sys.executable, "-c", script)
    assert held.returncode == 7, held.stderr  # the command's own exit code
    token = kv("get", "cli/out").stdout
    stale = kv("put", "cli/out", "late", "--fence-lock", "cli/job", "--fence-token", token)
    assert stale.returncode == 1 and "fencing token" in stale.stderr

    def elect(*args: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "kvstore.cli.main", "elect", "cli/pool", *args, *ep]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO_ROOT
        )
        procs.append(proc)
        assert proc.stdout is not None
        return proc

    procs: list[subprocess.Popen[str]] = []
    try:
        observer = elect()
        assert observer.stdout is not None
        assert observer.stdout.readline().strip() == "(no leader)"  # observing before the vote
        candidate = elect("node-7")
        assert candidate.stdout is not None
        assert candidate.stdout.readline().startswith("elected ")
        assert observer.stdout.readline().strip() == "node-7"
        candidate.send_signal(signal.SIGINT)
        assert candidate.wait(timeout=20) == 0
        assert observer.stdout.readline().strip() == "(no leader)"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
