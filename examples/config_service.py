"""Config-driven service: its settings live in the cluster and reload the moment they change.

Every key under `config/<service>/` is one setting (`config/greeter/greeting`,
`config/greeter/punctuation`, ...). The service keeps them in a `Mirror` (a local copy
kept in sync: one listing, then a watch that resumes across reconnects and nodes), so
requests read settings locally without a network round trip, and a `kv put` of a
setting takes effect within milliseconds, on every replica of the service, without a
restart. A setting that does not parse is refused (logged) and the previous value kept.

    GET /hello?name=N     {"message": "<greeting>, N<punctuation>", "revision": R}
    GET /settings         {"settings": {...}, "revision": R, "reloads": K}
    GET /health           200 once the first listing is in

Run it against `make cluster` (endpoints from KV_ENDPOINTS or ./cluster.toml):

    python examples/config_service.py --port 8083 --service greeter
    kv put config/greeter/greeting Bonjour      # the next /hello says Bonjour
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from aiohttp import web
from json_errors import json_errors

from kvstore import AsyncKV
from kvstore.client import Change, Mirror

log = logging.getLogger("config_service")


@dataclass(frozen=True)
class Settings:
    """The service's settings with their defaults; `apply` validates one change."""

    greeting: str = "Hello"
    punctuation: str = "!"
    max_name_length: int = 40

    def apply(self, name: str, raw: bytes | None) -> Settings:
        """These settings with `name` set from `raw` (None: back to its default)."""
        if name not in self.__dataclass_fields__:
            raise ValueError(f"unknown setting {name!r}")
        default = getattr(Settings(), name)
        if raw is None:
            return replace(self, **{name: default})
        text = raw.decode("utf-8")
        value: str | int = int(text) if isinstance(default, int) else text
        return replace(self, **{name: value})


class LiveSettings:
    """The current Settings, rebuilt from the mirror's changes as they arrive."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.current = Settings()
        self.reloads = 0

    def on_change(self, change: Change) -> None:
        name = change.key.removeprefix(self.prefix)
        try:
            self.current = self.current.apply(name, change.new)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("ignoring %s at revision %d: %s", change.key, change.revision, exc)
            return
        self.reloads += 1
        log.info("reloaded %s at revision %d: %r", name, change.revision, self.current)


LIVE = web.AppKey("live", LiveSettings)
MIRROR = web.AppKey("mirror", Mirror)


async def hello(request: web.Request) -> web.Response:
    settings = request.app[LIVE].current
    name = request.query.get("name", "world")[: settings.max_name_length]
    message = f"{settings.greeting}, {name}{settings.punctuation}"
    return web.json_response({"message": message, "revision": request.app[MIRROR].revision})


async def show_settings(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    return web.json_response(
        {
            "settings": live.current.__dict__,
            "revision": request.app[MIRROR].revision,
            "reloads": live.reloads,
        }
    )


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app(service: str) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    live = LiveSettings(f"config/{service}/")
    app[LIVE] = live

    async def follow_config(app: web.Application) -> AsyncIterator[None]:
        async with AsyncKV() as kv, Mirror(kv, live.prefix, on_change=live.on_change) as mirror:
            app[MIRROR] = mirror
            yield

    app.cleanup_ctx.append(follow_config)
    app.router.add_get("/hello", hello)
    app.router.add_get("/settings", show_settings)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8083)
    parser.add_argument("--service", default="greeter", help="reads config/<service>/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    web.run_app(make_app(args.service), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
