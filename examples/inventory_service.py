"""Inventory service: owns stock counts, kept in the pyraftkv cluster.

Each SKU is one key, `inventory/<sku>`, holding JSON `{"stock": N, "reserved": M}`:
`stock` is what can still be reserved, `reserved` what orders took. A reservation
moves units from one to the other with `AsyncKV.update` (read, compute, compare-and-set
on the version, retried on conflict), so concurrent reservations, from this process or
from several replicas of it, never oversell and never lose one.

    POST /stock/{sku}?qty=N          set the available stock (keeps the reserved count)
    GET  /stock/{sku}                {"sku", "stock", "reserved", "version"}
    POST /reserve/{sku}?qty=N        200 {"sku", "reserved": N, "stock": left}
                                     409 {"error": "insufficient_stock", "stock": left}
                                     404 when the SKU has no stock entry
    GET  /health                     200 once the service is up

Run it against `make cluster` (endpoints from KV_ENDPOINTS or ./cluster.toml):

    python examples/inventory_service.py --port 8081
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from json_errors import json_errors

from kvstore import AsyncKV, ClusterUnavailable, NotFound, OutcomeUnknown, VersionMismatch

KV_KEY = web.AppKey("kv", AsyncKV)
PREFIX = "inventory/"


class InsufficientStock(Exception):
    def __init__(self, stock: int) -> None:
        super().__init__(f"only {stock} left")
        self.stock = stock


class UnknownSku(Exception):
    pass


def stock_key(sku: str) -> str:
    return PREFIX + sku


def decode(value: bytes | None) -> dict[str, int]:
    if value is None:
        return {"stock": 0, "reserved": 0}
    data = json.loads(value)
    return {"stock": int(data.get("stock", 0)), "reserved": int(data.get("reserved", 0))}


def encode(entry: dict[str, int]) -> bytes:
    return json.dumps(entry, sort_keys=True).encode()


def quantity(request: web.Request, body: dict[str, Any] | None = None) -> int:
    raw = request.query.get("qty", (body or {}).get("qty"))
    try:
        qty = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise bad_request("qty must be an integer") from None
    if qty < 0:
        raise bad_request("qty must be >= 0")
    return qty


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "bad_quantity", "message": message}),
        content_type="application/json",
    )


def kv_unavailable(exc: Exception) -> web.Response:
    """A store error as a 503: OutcomeUnknown says the write may have happened."""
    code = "outcome_unknown" if isinstance(exc, OutcomeUnknown) else "store_unavailable"
    return web.json_response({"error": code, "message": str(exc)}, status=503)


async def set_stock(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    body = await request.json() if request.can_read_body else None
    qty = quantity(request, body)

    def set_available(old: bytes | None) -> bytes:
        entry = decode(old)
        entry["stock"] = qty
        return encode(entry)

    try:
        result = await request.app[KV_KEY].update(stock_key(sku), set_available, max_attempts=100)
    except (ClusterUnavailable, OutcomeUnknown, VersionMismatch) as exc:
        return kv_unavailable(exc)
    return web.json_response({"sku": sku, "stock": qty, "version": result.version})


async def get_stock(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    try:
        item = await request.app[KV_KEY].get(stock_key(sku))
    except NotFound:
        return web.json_response({"error": "unknown_sku", "sku": sku}, status=404)
    except ClusterUnavailable as exc:
        return kv_unavailable(exc)
    return web.json_response({"sku": sku, **decode(item.value), "version": item.version})


async def reserve(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    qty = quantity(request)
    written: dict[str, int] = {}

    def take(old: bytes | None) -> bytes:
        # Runs again on every compare-and-set conflict, so it only computes; the last
        # run is the one whose value was stored.
        if old is None:
            raise UnknownSku(sku)
        entry = decode(old)
        if entry["stock"] < qty:
            raise InsufficientStock(entry["stock"])
        written.update(stock=entry["stock"] - qty, reserved=entry["reserved"] + qty)
        return encode(written)

    try:
        await request.app[KV_KEY].update(stock_key(sku), take, max_attempts=100)
    except UnknownSku:
        return web.json_response({"error": "unknown_sku", "sku": sku}, status=404)
    except InsufficientStock as exc:
        body = {"error": "insufficient_stock", "sku": sku, "stock": exc.stock, "wanted": qty}
        return web.json_response(body, status=409)
    except (ClusterUnavailable, OutcomeUnknown, VersionMismatch) as exc:
        return kv_unavailable(exc)
    return web.json_response({"sku": sku, "reserved": qty, "stock": written["stock"]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app(endpoints: str | None = None, config: str | None = None) -> web.Application:
    app = web.Application(middlewares=[json_errors])

    async def kv_client(app: web.Application) -> AsyncIterator[None]:
        async with AsyncKV(endpoints, config=config) as kv:
            app[KV_KEY] = kv
            yield

    app.cleanup_ctx.append(kv_client)
    app.add_routes(
        [
            web.post("/stock/{sku}", set_stock),
            web.get("/stock/{sku}", get_stock),
            web.post("/reserve/{sku}", reserve),
            web.get("/health", health),
        ]
    )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--endpoints", help="URL,URL,... (default: KV_ENDPOINTS, ./cluster.toml)")
    parser.add_argument("--config", help="a cluster.toml to read the endpoints from")
    args = parser.parse_args()
    web.run_app(make_app(args.endpoints, args.config), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
