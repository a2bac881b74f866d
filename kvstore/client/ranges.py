"""Paging through a range read: one consistent revision across pages.

The first page's answer names the revision it reflects; its continuation token carries
that revision, so every later page reads the same cut of the store (the server answers
410 `compacted` if the pages take longer than its retained history). `Pager` holds the
paging state; the async iterator (`AsyncKV.range`) and the blocking generator
(`KV.range`) both drive it, so the rules exist once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict
from urllib.parse import quote, urlencode

from kvstore.client.errors import InvalidRequest
from kvstore.client.txn import RangePage
from kvstore.client.types import KeyValue

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000


class RangeOptions(TypedDict, total=False):
    """The keyword options of `AsyncKV.range` / `range_page` that choose what is read."""

    prefix: str | None
    start: str | None
    end: str | None
    keys_only: bool
    count_only: bool
    newest_first: bool
    revision: int | None
    consistency: Literal["linearizable", "stale"]


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """What a range read asks for, whatever the page: the range and the options."""

    prefix: str | None
    start: str | None
    end: str | None
    keys_only: bool = False
    count_only: bool = False
    newest_first: bool = False
    revision: int | None = None
    stale: bool = False

    def __post_init__(self) -> None:
        if (self.prefix is None) == (self.start is None):
            raise InvalidRequest("give either prefix or start (and optionally end)")
        if self.prefix is not None and self.end is not None:
            raise InvalidRequest("end goes with start, not with prefix")

    @classmethod
    def of(cls, options: RangeOptions) -> RangeSpec:
        consistency = options.get("consistency", "linearizable")
        if consistency not in ("linearizable", "stale"):
            raise InvalidRequest(f"consistency must be 'linearizable' or 'stale': {consistency!r}")
        return cls(
            options.get("prefix"),
            options.get("start"),
            options.get("end"),
            options.get("keys_only", False),
            options.get("count_only", False),
            options.get("newest_first", False),
            options.get("revision"),
            consistency == "stale",
        )

    def path(self, limit: int | None, token: str | None) -> str:
        """The URL of one page, every value percent-encoded (keys may hold any character).
        A continuation token carries the revision, so it replaces `revision`."""
        params: list[tuple[str, Any]] = [
            (name, value)
            for name, value in (("prefix", self.prefix), ("start", self.start), ("end", self.end))
            if value is not None
        ]
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise InvalidRequest(f"limit must be an integer: {limit!r}")
            if not 1 <= limit <= MAX_PAGE_SIZE:
                raise InvalidRequest(f"limit must be in 1..{MAX_PAGE_SIZE}: {limit!r}")
            params.append(("limit", limit))
        params += [(name, "true") for name in ("keys_only", "count_only") if getattr(self, name)]
        if self.newest_first:
            params.append(("sort", "newest"))
        if token:
            params.append(("continue", token))
        elif self.revision:
            params.append(("revision", self.revision))
        if self.stale:
            params.append(("consistency", "stale"))
        return "/v1/kv/?" + urlencode(params, quote_via=quote, safe="")


class Pager:
    """Which page to ask for next, and when to stop (at the end, or at `limit` keys)."""

    def __init__(self, limit: int | None, page_size: int) -> None:
        if limit is not None and (isinstance(limit, bool) or limit < 1):
            raise InvalidRequest(f"limit must be an integer >= 1: {limit!r}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"page_size must be in 1..{MAX_PAGE_SIZE}: {page_size!r}")
        self.left = limit
        self.page_size = page_size
        self.token: str | None = None
        self.revision: int | None = None
        self.done = False

    @property
    def next_limit(self) -> int:
        return self.page_size if self.left is None else min(self.page_size, self.left)

    def take(self, page: RangePage) -> tuple[KeyValue, ...]:
        if self.revision is None:
            self.revision = page.revision
        kvs = page.kvs
        if self.left is not None:
            kvs = kvs[: self.left]
            self.left -= len(kvs)
        self.token = page.next
        self.done = not page.more or self.left == 0
        return kvs


class RangeIterator:
    """`async for kv in kv.range(...)`; `.revision` is the cut's revision once the first
    page has arrived."""

    def __init__(self, fetch: Callable[[Pager], Awaitable[RangePage]], pager: Pager) -> None:
        self._fetch, self._pager = fetch, pager
        self._buffer: list[KeyValue] = []

    @property
    def revision(self) -> int | None:
        return self._pager.revision

    def __aiter__(self) -> RangeIterator:
        return self

    async def __anext__(self) -> KeyValue:
        while not self._buffer:
            if self._pager.done:
                raise StopAsyncIteration
            page = await self._fetch(self._pager)
            self._buffer = list(reversed(self._pager.take(page)))
        return self._buffer.pop()
