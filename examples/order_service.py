"""Order service: takes orders, reserves stock through the inventory service.

`POST /orders` asks the inventory service to reserve the units (it owns the stock
and does the compare-and-set), then records the order in the pyraftkv cluster
under `orders/<id>` (create-only: `prev_version=0`). Reads come straight from the
shared store, so this service sees the inventory's data without calling it.

    POST /orders  {"sku": "widget", "qty": 2}
                  201 {"id", "sku", "qty", "status": "reserved"}
                  409 {"error": "insufficient_stock", ...}   (nothing recorded)
    GET  /orders/{id}      the stored order, or 404
    GET  /stock/{sku}      {"sku", "stock", "reserved"} read from the store, or 404
    GET  /health           200 once the service is up

Run it against `make cluster` (endpoints from KV_ENDPOINTS or ./cluster.toml):

    python examples/order_service.py --port 8082 --inventory-url http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from json_errors import json_errors

from kvstore import AsyncKV, ClusterUnavailable, NotFound, OutcomeUnknown

KV_KEY = web.AppKey("kv", AsyncKV)
HTTP_KEY = web.AppKey("http", aiohttp.ClientSession)
INVENTORY_KEY = web.AppKey("inventory_url", str)
INVENTORY_PREFIX = "inventory/"  # the inventory service's keys: {"stock": N, "reserved": M}
ORDER_PREFIX = "orders/"


def error(status: int, code: str, **extra: object) -> web.Response:
    return web.json_response({"error": code, **extra}, status=status)


async def create_order(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        sku, qty = str(body["sku"]), int(body["qty"])
    except (ValueError, KeyError, TypeError):
        return error(400, "bad_order", message='expected JSON {"sku": str, "qty": int}')
    if not sku or qty <= 0:
        return error(400, "bad_order", message="sku must be non-empty and qty > 0")

    url = f"{request.app[INVENTORY_KEY]}/reserve/{sku}"
    try:
        async with request.app[HTTP_KEY].post(url, params={"qty": str(qty)}) as reply:
            answer = await reply.json()
            if reply.status != 200:
                return web.json_response(answer, status=reply.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return error(502, "inventory_unavailable", message=str(exc))

    order = {"id": uuid.uuid4().hex, "sku": sku, "qty": qty, "status": "reserved"}
    try:
        await request.app[KV_KEY].put(
            ORDER_PREFIX + order["id"], json.dumps(order).encode(), prev_version=0
        )
    except (ClusterUnavailable, OutcomeUnknown) as exc:
        # The stock is reserved but the order may not be recorded: a real service would
        # release it (or record the order first as "pending"); the example reports it.
        return error(503, "order_not_recorded", message=str(exc), order=order)
    return web.json_response(order, status=201)


async def get_order(request: web.Request) -> web.Response:
    order_id = request.match_info["id"]
    try:
        item = await request.app[KV_KEY].get(ORDER_PREFIX + order_id)
    except NotFound:
        return error(404, "unknown_order", id=order_id)
    except ClusterUnavailable as exc:
        return error(503, "store_unavailable", message=str(exc))
    return web.json_response(json.loads(item.value))


async def get_stock(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    try:
        item = await request.app[KV_KEY].get(INVENTORY_PREFIX + sku)
    except NotFound:
        return error(404, "unknown_sku", sku=sku)
    except ClusterUnavailable as exc:
        return error(503, "store_unavailable", message=str(exc))
    entry = json.loads(item.value)
    return web.json_response({"sku": sku, "stock": entry["stock"], "reserved": entry["reserved"]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app(
    inventory_url: str, endpoints: str | None = None, config: str | None = None
) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[INVENTORY_KEY] = inventory_url.rstrip("/")

    async def clients(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            AsyncKV(endpoints, config=config) as kv,
            aiohttp.ClientSession(timeout=timeout) as http,
        ):
            app[KV_KEY] = kv
            app[HTTP_KEY] = http
            yield

    app.cleanup_ctx.append(clients)
    app.add_routes(
        [
            web.post("/orders", create_order),
            web.get("/orders/{id}", get_order),
            web.get("/stock/{sku}", get_stock),
            web.get("/health", health),
        ]
    )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument(
        "--inventory-url",
        default=os.environ.get("INVENTORY_URL", "http://127.0.0.1:8081"),
        help="the inventory service (default: INVENTORY_URL or http://127.0.0.1:8081)",
    )
    parser.add_argument("--endpoints", help="URL,URL,... (default: KV_ENDPOINTS, ./cluster.toml)")
    parser.add_argument("--config", help="a cluster.toml to read the endpoints from")
    args = parser.parse_args()
    app = make_app(args.inventory_url, args.endpoints, args.config)
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
