"""An aiohttp middleware for the example services: every answer is JSON, refusals too.

aiohttp answers an unknown route, a wrong method or a `raise web.HTTPBadRequest()` with
text/plain; a client that calls `await reply.json()` on that fails with a content-type
error instead of seeing the refusal. The services are JSON APIs, so they say so always.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        return web.json_response(
            {"error": code, "message": exc.text or exc.reason}, status=exc.status
        )
    except json.JSONDecodeError as exc:
        return web.json_response({"error": "bad_json", "message": str(exc)}, status=400)
