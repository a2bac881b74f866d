"""Order service: takes orders; reserves the stock and records the order in ONE
transaction, so there is never a reservation without its order or the reverse.

`POST /orders` reads `inventory/<sku>` (kept by the inventory service) and sends one
transaction: if the stock key's mod_revision is still the one read and `orders/<id>`
does not exist, write the reduced stock and the order; else read again and retry. A
timeout cannot leave a reservation behind: both writes land together or not at all
(`GET /orders/{id}` says which). Reads come straight from the shared store.

    POST /orders  {"sku": "widget", "qty": 2}
                  201 {"id", "sku", "qty", "status": "reserved"}
                  409 {"error": "insufficient_stock", ...}   (nothing recorded)
                  404 {"error": "unknown_sku"}
    GET  /orders           {"revision", "orders": [...]}: a prefix read, one revision
    GET  /orders/{id}      the stored order, or 404
    GET  /stock/{sku}      {"sku", "stock", "reserved"} read from the store, or 404
    GET  /health           200 once the service is up

Run it against `make cluster` (endpoints from KV_ENDPOINTS or ./cluster.toml):

    python examples/order_service.py --port 8082
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from json_errors import json_errors

from kvstore import AsyncKV, ClusterUnavailable, NotFound, OutcomeUnknown
from kvstore.client import Cmp, Op

KV_KEY = web.AppKey("kv", AsyncKV)
MAX_ATTEMPTS = 64
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
    order = {"id": uuid.uuid4().hex, "sku": sku, "qty": qty, "status": "reserved"}
    try:
        return await _reserve_and_record(request.app[KV_KEY], order)
    except OutcomeUnknown as exc:
        # One transaction: the stock and the order were both written or neither was.
        return error(503, "outcome_unknown", message=str(exc), order=order)
    except ClusterUnavailable as exc:
        return error(503, "store_unavailable", message=str(exc))


async def _reserve_and_record(kv: AsyncKV, order: dict[str, Any]) -> web.Response:
    stock_key, order_key = INVENTORY_PREFIX + order["sku"], ORDER_PREFIX + order["id"]
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            await asyncio.sleep(random.uniform(0, 0.005 * min(attempt, 10)))
        item = await kv.get(stock_key, default=None)
        if item is None:
            return error(404, "unknown_sku", sku=order["sku"])
        entry = json.loads(item.value)
        if entry["stock"] < order["qty"]:
            return error(409, "insufficient_stock", stock=entry["stock"], wanted=order["qty"])
        entry = {
            "stock": entry["stock"] - order["qty"],
            "reserved": entry["reserved"] + order["qty"],
        }
        answer = await (
            kv.txn()
            .if_(Cmp.mod_revision(stock_key) == item.mod_revision, Cmp.missing(order_key))
            .then(Op.put(stock_key, json.dumps(entry)), Op.put(order_key, json.dumps(order)))
            .commit()
        )
        if answer.succeeded:
            return web.json_response(order, status=201)
    return error(503, "busy", message=f"the stock kept changing over {MAX_ATTEMPTS} attempts")


async def list_orders(request: web.Request) -> web.Response:
    """Every order, read with a prefix read: all pages show the store at one revision."""
    try:
        pages = request.app[KV_KEY].get_prefix(ORDER_PREFIX)
        orders = [json.loads(item.value) async for item in pages]
    except ClusterUnavailable as exc:
        return error(503, "store_unavailable", message=str(exc))
    return web.json_response({"revision": pages.revision, "orders": orders})


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


def make_app(endpoints: str | None = None, config: str | None = None) -> web.Application:
    app = web.Application(middlewares=[json_errors])

    async def clients(app: web.Application) -> AsyncIterator[None]:
        async with AsyncKV(endpoints, config=config) as kv:
            app[KV_KEY] = kv
            yield

    app.cleanup_ctx.append(clients)
    app.add_routes(
        [
            web.post("/orders", create_order),
            web.get("/orders", list_orders),
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
    parser.add_argument("--endpoints", help="URL,URL,... (default: KV_ENDPOINTS, ./cluster.toml)")
    parser.add_argument("--config", help="a cluster.toml to read the endpoints from")
    args = parser.parse_args()
    app = make_app(args.endpoints, args.config)
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
