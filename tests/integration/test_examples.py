"""The examples against a real three-node cluster (harness), as subprocesses stopped
by PID at teardown, checked by their outcomes.

- inventory_service.py + order_service.py: concurrent orders for more units than
  exist: stock never goes negative, and stock + reserved always equals what was stocked.
- service_registry.py: an instance killed with SIGKILL disappears from the others'
  view within TTL + election time (and not before its TTL).
- worker_pool.py: one leader at a time writes; a leader SIGSTOPped past its TTL is
  replaced, and its write with the old token, when it wakes, is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from kvstore.client import KV
from tests.integration.harness import REPO_ROOT, Cluster, child_env, free_ports, request, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("integration"),
    pytest.mark.timeout(60),
]


def stop_by_pid(proc: subprocess.Popen[bytes], deadline: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def services(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Both services on free ports: inventory finds the cluster through ./cluster.toml
    (its working directory is the test cluster's), orders through KV_ENDPOINTS."""
    inventory_port, order_port = free_ports(2)
    inventory_url = f"http://127.0.0.1:{inventory_port}"
    order_url = f"http://127.0.0.1:{order_port}"
    inventory_env = child_env()
    inventory_env.pop("KV_ENDPOINTS", None)
    order_env = {**child_env(), "KV_ENDPOINTS": cluster.endpoints()}
    examples = REPO_ROOT / "examples"
    commands = [
        (
            "inventory",
            [sys.executable, str(examples / "inventory_service.py"), "--port", str(inventory_port)],
            inventory_env,
            cluster.root,
        ),
        (
            "orders",
            [
                sys.executable,
                str(examples / "order_service.py"),
                "--port",
                str(order_port),
            ],
            order_env,
            tmp_path,
        ),
    ]
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        for name, argv, env, cwd in commands:
            log_path = tmp_path / f"{name}.log"
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd
                )
            procs.append((name, proc, log_path))
        for url in (inventory_url, order_url):
            wait_until(
                lambda url=url: request(url, "GET", "/health", timeout=1.0).status == 200,
                20.0,
                f"{url} to answer /health",
            )
        yield inventory_url, order_url
    except TimeoutError:
        logs = "\n".join(f"--- {n} ---\n{p.read_text(errors='replace')}" for n, _, p in procs)
        pytest.fail(f"a service did not start:\n{logs}")
    finally:
        for _, proc, _ in procs:
            stop_by_pid(proc)


async def test_concurrent_orders_never_oversell(
    cluster: Cluster, services: tuple[str, str]
) -> None:
    inventory_url, order_url = services
    initial, orders = 30, 40
    quantities = [1 + i % 3 for i in range(orders)]  # 80 units wanted, 30 in stock
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.post(f"{inventory_url}/stock/widget", params={"qty": initial}) as r:
            assert r.status == 200, await r.text()
        async with http.post(f"{order_url}/orders", json={"sku": "nope", "qty": 1}) as r:
            assert r.status == 404
        # Every answer is JSON, refusals and unknown routes included.
        for method, url in [
            ("POST", f"{inventory_url}/reserve/widget?qty=x"),
            ("POST", f"{inventory_url}/stock/widget?qty=-1"),
            ("GET", f"{inventory_url}/no/such/route"),
            ("GET", f"{order_url}/no/such/route"),
            ("POST", f"{order_url}/orders/x"),
        ]:
            async with http.request(method, url) as r:
                assert r.status in (400, 404, 405), (url, r.status)
                assert r.content_type == "application/json", (url, await r.text())
                assert "error" in await r.json()
        async with http.post(f"{inventory_url}/stock/widget", data=b"{not json") as r:
            assert (r.status, r.content_type) == (400, "application/json")

        async def place(qty: int) -> tuple[int, dict[str, object]]:
            async with http.post(f"{order_url}/orders", json={"sku": "widget", "qty": qty}) as r:
                return r.status, await r.json()

        results = await asyncio.wait_for(
            asyncio.gather(*(place(q) for q in quantities)), timeout=40.0
        )
        statuses = sorted({status for status, _ in results})
        assert set(statuses) <= {201, 409}, results
        created = [body for status, body in results if status == 201]
        refused = [q for q, (status, _) in zip(quantities, results, strict=True) if status == 409]
        assert refused, "80 units wanted from 30: some orders must be refused"
        reserved = sum(int(order["qty"]) for order in created)  # type: ignore[call-overload]

        async with http.get(f"{order_url}/stock/widget") as r:
            stock = await r.json()
        assert stock["stock"] >= 0
        assert stock["reserved"] == reserved
        assert stock["stock"] + stock["reserved"] == initial
        # A refusal saw fewer units than it wanted, and stock only shrinks afterwards.
        assert stock["stock"] < max(refused)

        for order in created:
            async with http.get(f"{order_url}/orders/{order['id']}") as r:
                assert r.status == 200
                assert await r.json() == order
        async with http.get(f"{order_url}/orders/does-not-exist") as r:
            assert r.status == 404
        async with http.get(f"{order_url}/orders") as r:
            listing = await r.json()
        assert sorted(o["id"] for o in listing["orders"]) == sorted(o["id"] for o in created)
        assert listing["revision"] >= len(created)

    # The inventory service and a direct read of the store agree with the order service.
    direct = json.loads(cluster.get(cluster.wait_leader(), "inventory/widget").body)
    assert direct == {"stock": stock["stock"], "reserved": reserved}


# ------------------------------------------------- service registry and worker pool

TTL = 2
ELECTION_S = 30 * 10 / 1000 * 2  # the fixture's election timeout (30 ticks of 10 ms), twice
SLACK_S = 2.0  # scheduling on a shared test machine: polls, keep-alive intervals


class Example:
    """An example script as a subprocess whose output lines are read by a thread, so
    the test can wait for a line with a deadline; stopped by its PID."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "examples" / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(),
            cwd=REPO_ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._matched = 0  # lines of `seen` that expect() has looked at
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line not looked at yet that matches `pattern` (from its start)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._matched == len(self.seen):
                try:
                    self.seen.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    raise AssertionError(f"no {pattern!r} in {timeout} s: {self.seen}") from None
            self._matched += 1
            match = re.match(pattern, self.seen[self._matched - 1])
            if match:
                return match

    def drain(self) -> list[str]:
        """Every line so far (without waiting)."""
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.kill()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def examples() -> Iterator[Callable[..., Example]]:
    started: list[Example] = []

    def start(script: str, *args: str) -> Example:
        started.append(Example(script, *args))
        return started[-1]

    try:
        yield start
    finally:
        for example in started:
            example.stop()


@pytest.mark.timeout(120)
def test_service_registry_sees_a_killed_instance_vanish(cluster: Cluster) -> None:
    ep = ("--endpoints", cluster.endpoints(), "--service", "api", "--ttl", str(TTL))
    with examples() as start:
        a = start("service_registry.py", *ep, "--id", "a", "--address", "10.0.0.1:80")
        a.expect(r"registered services/api/a lease \d+$", 20)
        a.expect(r"up services/api/a 10\.0\.0\.1:80$", 10)
        b = start("service_registry.py", *ep, "--id", "b", "--address", "10.0.0.2:80")
        b.expect(r"registered services/api/b", 20)
        # b lists both at one revision; a hears of b through its watch.
        listed = {b.expect(r"up (\S+)", 10)[1], b.expect(r"up (\S+)", 10)[1]}
        assert listed == {"services/api/a", "services/api/b"}
        a.expect(r"up services/api/b 10\.0\.0\.2:80$", 10)
        b.proc.kill()
        b.proc.wait(timeout=10)
        killed = time.monotonic()
        a.expect(r"down services/api/b$", TTL + ELECTION_S + SLACK_S)
        # Never before its TTL: b's last keep-alive was at most TTL/3 before the kill.
        assert time.monotonic() - killed >= TTL - TTL / 3 - 0.2
        assert cluster.get(cluster.wait_leader(), "services%2Fapi%2Fb").status == 404
        assert cluster.get(cluster.wait_leader(), "services%2Fapi%2Fa").status == 200
        assert [line for line in a.drain() if line.startswith("down")] == ["down services/api/b"]


@pytest.mark.timeout(120)
def test_worker_pool_one_fenced_leader_and_a_stale_leader_is_refused(cluster: Cluster) -> None:
    """Three workers: one leads and writes; the leader is SIGSTOPped past its TTL, the
    next in line takes over; the old one wakes, writes with its old token and is
    refused. Every report the store accepted came from the leader of its time."""
    ep = ("--endpoints", cluster.endpoints(), "--ttl", str(TTL), "--runs", "10000")
    node = cluster.wait_leader()
    with examples() as start:
        w1 = start("worker_pool.py", *ep, "--id", "w1", "--period", "0.2")
        first = int(w1.expect(r"w1 leads with token (\d+)$", 20)[1])
        others = [start("worker_pool.py", *ep, "--id", w, "--period", "0.2") for w in ("w2", "w3")]

        def waiters() -> int:
            return int(
                cluster.http(node, "GET", "/v1/elections/workers%2Fleader").json()["waiters"]
            )

        wait_until(lambda: waiters() == 2, 20, "w2 and w3 to campaign")
        w1.expect(r"run \d+ by w1 token", 10)
        assert not any("leads" in line for o in others for line in o.drain())

        os.kill(w1.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        deadline = TTL + ELECTION_S + SLACK_S + 2.0
        led = wait_until(
            lambda: next((o for o in others if any("leads" in x for x in o.drain())), None),
            deadline,
            "a waiting worker to lead once w1's lease ended",
        )
        assert time.monotonic() - stopped >= TTL - TTL / 3 - 0.2
        second = int(re.search(r"token (\d+)", next(x for x in led.seen if "leads" in x))[1])  # type: ignore[index]
        assert second > first
        name = "w2" if led is others[0] else "w3"
        led.expect(rf"run \d+ by {name} token {second}", 10)

        os.kill(w1.proc.pid, signal.SIGCONT)
        w1.expect(rf"w1 fenced: token {first} lost to {second}$", 10)
        assert w1.proc.wait(timeout=10) == 0
        for o in others:
            o.stop()
        assert not any("leads" in x for o in others if o is not led for x in o.drain())

    # What the store accepted: tokens never go down, one worker per token, and no
    # report of w1 after the new leader's first.
    with KV(cluster.endpoints().split(","), timeout=10.0) as kv:
        last = kv.get("jobs/report").mod_revision
        accepted = []
        for event in kv.watch(key="jobs/report", start_revision=1):
            accepted.append(re.match(r"run \d+ by (w\d) token (\d+)", event.value.decode()))
            if event.revision >= last:
                break
    authors = [(int(m[2]), m[1]) for m in accepted if m]
    assert len(authors) == len(accepted) and len(authors) >= 2
    assert [t for t, _ in authors] == sorted(t for t, _ in authors)
    assert dict(authors) == {first: "w1", second: name}
