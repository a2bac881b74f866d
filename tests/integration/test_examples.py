"""The worked example: examples/inventory_service.py and examples/order_service.py.

A real three-node cluster (harness), both services as subprocesses on free ports
(stopped by PID at teardown), and concurrent orders for more units than exist:
stock never goes negative, and stock + reserved always equals what was stocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

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
