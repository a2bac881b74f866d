"""`AsyncKV.watch`: every change to a key or prefix, in revision order, across reconnects.

The client keeps one number, `next_revision` (the first revision it has not seen), and
every (re)connection asks for exactly that (`start_revision`). Nodes answer from their
own applied state and a node behind that revision waits until it has caught up, so a
reconnect to another node neither repeats nor skips a change. What ends a stream and
what the watch does about it:

- the connection fails, the node stops, or the node cut this reader off as too slow:
  reconnect (to the next node) and resume; only a cluster unreachable for longer than
  `give_up_after` seconds raises ClusterUnavailable;
- nothing at all (no change, no progress) for `idle_timeout` seconds: the node is stuck
  or far behind; move to another one;
- the history needed is gone (410 `compacted`): raise `Compacted`, the only case the
  caller must act on (list again, watch from the listed revision + 1; kvstore.client.mirror
  does it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from yarl import URL

from kvstore.client.answers import raise_for_answer
from kvstore.client.credentials import Credentials
from kvstore.client.errors import (
    ClusterUnavailable,
    Compacted,
    InvalidRequest,
    PermissionDenied,
)
from kvstore.client.sse import SSEParser
from kvstore.client.transport import Answer, EndpointRouter

DEFAULT_IDLE_TIMEOUT = 15.0
"""Three of the server's default progress intervals (5 s) without a word: move on."""
DEFAULT_GIVE_UP_AFTER = 60.0
_BACKOFF_MAX = 1.0


@dataclass(frozen=True, slots=True)
class PrevValue:
    """What a key held before a change (watch with prev_kv=True)."""

    value: bytes
    version: int
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change. `revision` is the store revision that made it (the changes of one
    transaction share it). For a delete, `value` is empty and `version` 0. `prev` is set
    only when the watch asked for prev_kv (None there: the key did not exist)."""

    type: Literal["put", "delete"]
    key: str
    value: bytes
    revision: int
    version: int
    create_revision: int
    prev: PrevValue | None = None


@dataclass(frozen=True, slots=True)
class WatchProgress:
    """No selected key changed up to `revision` (yielded only with progress=True)."""

    revision: int


class _Reconnect(Exception):
    """This stream is over for a reason another attempt (maybe elsewhere) can fix."""


class Watch:
    """An async iterator of WatchEvent (and WatchProgress when asked); `aclose()` or
    leaving an `async for` early stops it. `next_revision` is where it stands."""

    def __init__(
        self,
        http: Callable[[], aiohttp.ClientSession],
        router: EndpointRouter,
        *,
        key: str | None = None,
        prefix: str | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
        progress: bool = False,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
        connect_timeout: float = 2.0,
        rng: random.Random | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        if (key is None) == (prefix is None):
            raise InvalidRequest("watch either a key or a prefix")
        if key == "":
            raise InvalidRequest("the key must not be empty (watch prefix='' for every key)")
        if start_revision is not None and (type(start_revision) is not int or start_revision < 1):
            raise InvalidRequest(f"start_revision must be an integer >= 1: {start_revision!r}")
        self._http, self._router = http, router
        self._selector = {"key": key} if key is not None else {"prefix": prefix or ""}
        self.next_revision = start_revision
        """The first revision not delivered yet (None until the first node answered)."""
        self._prev_kv, self._progress = prev_kv, progress
        self._idle_timeout, self._give_up_after = idle_timeout, give_up_after
        self._connect_timeout = connect_timeout
        self._credentials = credentials or Credentials()
        self._rng = rng or random.Random()
        self._cursor = self._rng.randrange(len(router.endpoints))  # spread watchers over nodes
        self._heard = False
        self.reconnects = 0
        """How many times the stream was resumed (on another node, or the same)."""
        self._batches = self._run()
        self._ready: list[WatchEvent | WatchProgress] = []

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent | WatchProgress:
        while not self._ready:
            self._ready = list(reversed(await self._batches.__anext__()))
        return self._ready.pop()

    def batches(self) -> AsyncIterator[list[WatchEvent | WatchProgress]]:
        """The same stream a revision at a time: each list holds every event of one
        revision (a transaction's changes together), or one WatchProgress. Use either
        this or plain iteration on one Watch, not both."""
        return self._batches

    async def aclose(self) -> None:
        await self._batches.aclose()

    async def _run(self) -> AsyncIterator[list[WatchEvent | WatchProgress]]:
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        failures = 0
        last_error = "no attempt was made"
        while True:
            endpoints = self._router.endpoints  # any node serves a watch
            url = endpoints[self._cursor % len(endpoints)]
            self._heard = False
            try:
                async for batch in self._stream(url):
                    yield batch
                last_error = f"{url}: the stream ended"
            except PermissionDenied:
                raise  # an OSError too, but final: another node will refuse it as well
            except (_Reconnect, aiohttp.ClientError, OSError, TimeoutError) as exc:
                last_error = f"{url}: {exc or type(exc).__name__}"
            except (ValueError, KeyError) as exc:  # not a pyraftkv answer
                last_error = f"{url}: unreadable watch stream ({exc!r})"
            if self._heard:  # the node served this watch for a while: a fresh start
                failing_since, failures = None, 0
            self._cursor += 1  # resume on the next node (the router's leader is left alone)
            now = loop.time()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since > self._give_up_after:
                raise ClusterUnavailable(f"watch could not continue; last error: {last_error}")
            self.reconnects += 1
            if failures:
                delay = min(_BACKOFF_MAX, 0.05 * 2**failures)
                await asyncio.sleep(delay * (0.5 + self._rng.random()))
            failures += 1

    async def _stream(self, url: str) -> AsyncIterator[list[WatchEvent | WatchProgress]]:
        query = dict(self._selector)
        if self.next_revision is not None:
            query["start_revision"] = str(self.next_revision)
        if self._prev_kv:
            query["prev_kv"] = "true"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect_timeout, sock_read=self._idle_timeout
        )
        await self._credentials.ready(self._give_up_after)
        async with self._http().get(
            URL(url + "/v1/watch").with_query(query),
            timeout=timeout,
            headers=self._credentials.header(),
        ) as resp:
            if resp.status != 200:
                await _refuse(resp, url, self._credentials)
            parser = SSEParser()
            clock = asyncio.get_running_loop().time
            last_message = clock()
            async for chunk in resp.content.iter_any():
                for message in parser.feed(chunk):
                    last_message = clock()
                    batch = self._handle(message.event, message.data)
                    if batch:
                        yield batch
                if clock() - last_message > self._idle_timeout:
                    # Only keep-alive comments: the node is still behind this watch's
                    # revision. Another node may already have it.
                    raise _Reconnect(f"no change or progress for {self._idle_timeout:g}s")

    def _handle(self, event: str, data: str) -> list[WatchEvent | WatchProgress]:
        body = json.loads(data)
        self._heard = True
        if event == "message":
            revision = int(body["revision"])
            if self.next_revision is not None and revision < self.next_revision:
                return []  # never deliver a revision twice, whatever a node sends
            self.next_revision = revision + 1
            return [_event(e, revision) for e in body["events"]]
        if event == "progress":
            revision = int(body["revision"])
            if self.next_revision is None or revision >= self.next_revision:
                self.next_revision = revision + 1
            return [WatchProgress(revision)] if self._progress else []
        if event == "created":
            if self.next_revision is None:
                self.next_revision = int(body["start_revision"])
            return []
        if event == "cancelled":
            if body.get("reason") == "compacted":
                message, compact = body.get("message", "compacted"), int(body["compact_revision"])
                raise Compacted(message, compact_revision=compact)
            raise _Reconnect(f"stream cancelled: {body.get('reason')}")
        return []


async def _refuse(resp: aiohttp.ClientResponse, url: str, credentials: Credentials) -> None:
    """Raise what a non-200 answer to a watch means."""
    answer = Answer(url, resp.status, resp.headers, await resp.read())
    if credentials.refused(answer):
        raise _Reconnect("the token was refused; reconnecting with a new one")
    if resp.status in (401, 403):
        raise_for_answer(answer, None)
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or body.get("error") or f"HTTP {resp.status}")
    if resp.status == 410:
        raise Compacted(message, compact_revision=int(body.get("compact_revision") or 0))
    if resp.status == 400:
        raise InvalidRequest(message, status=400, code=body.get("error"))
    raise _Reconnect(message)


def _event(data: dict[str, Any], revision: int) -> WatchEvent:
    prev = data.get("prev")
    return WatchEvent(
        type="put" if data["type"] == "put" else "delete",
        key=data["key"],
        value=base64.b64decode(data["value"]),
        revision=revision,
        version=int(data["version"]),
        create_revision=int(data["create_revision"]),
        prev=None
        if prev is None
        else PrevValue(
            base64.b64decode(prev["value"]),
            int(prev["version"]),
            int(prev["create_revision"]),
            int(prev["mod_revision"]),
        ),
    )
