"""`AsyncKV`, the asyncio client of the replicated key-value store (`KV`, its blocking
twin, is in kvstore.client.sync_client).

Usage::

    async with AsyncKV(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]) as kv:
        revision, version = await kv.put("config/flag", b"on")
        item = await kv.get("config/flag")          # KeyValue(value=b"on", version=1, ...)
        await kv.update("counter", lambda old: str(int(old or b"0") + 1).encode())

    with KV() as kv:                                 # KV_ENDPOINTS or ./cluster.toml
        kv.put("a", b"1")

Writes are exactly-once: each carries this client's id and a sequence number,
and every retry of a write reuses its number, so a retry after a timeout or a
lost connection cannot apply the write twice. The only write error that leaves
the outcome open is `OutcomeUnknown`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Unpack
from urllib.parse import quote

import aiohttp

from kvstore.client.answers import raise_for_answer
from kvstore.client.attempts import AttemptSettings, Dispatcher
from kvstore.client.attempts import Request as _Request
from kvstore.client.cluster_view import ask_every_node
from kvstore.client.context import AsyncHeld
from kvstore.client.credentials import Credentials
from kvstore.client.endpoints import EndpointsArg, resolve_endpoints
from kvstore.client.errors import (
    ClusterUnavailable,
    InvalidRequest,
    KVError,
    NoLeader,
    NotFound,
    OutcomeUnknown,
    RevisionMismatch,
    VersionMismatch,
)
from kvstore.client.fence import Fence, write_query
from kvstore.client.http_session import single_send_session
from kvstore.client.leases import Lease, LostCallback
from kvstore.client.locks import Election, Lock
from kvstore.client.paths import Value, as_bytes, key_path
from kvstore.client.ranges import (
    DEFAULT_PAGE_SIZE,
    Pager,
    RangeIterator,
    RangeOptions,
    RangeSpec,
)
from kvstore.client.session import RetryPolicy, WriteSession
from kvstore.client.tls import ClientTLS
from kvstore.client.transport import Answer, EndpointRouter
from kvstore.client.txn import Document, RangePage, TxnBuilder, TxnResponse, writes
from kvstore.client.types import EndpointStatus, KeyValue, MemberList, NodeStatus, PutResult
from kvstore.client.update import UpdateFn, read_modify_write
from kvstore.client.watch import Watch

__all__ = [
    "AsyncKV",
    "ClusterUnavailable",
    "EndpointStatus",
    "InvalidRequest",
    "KVError",
    "KeyValue",
    "NoLeader",
    "NodeStatus",
    "NotFound",
    "OutcomeUnknown",
    "PutResult",
    "RetryPolicy",
    "RevisionMismatch",
    "VersionMismatch",
]

Consistency = Literal["linearizable", "stale"]

MEMBERS_PATH = "/v1/members"
SNAPSHOT_PATH = "/v1/snapshot"
NOT_OURS = "not a pyraftkv endpoint (its answer lacks the pyraftkv headers)"
_MISSING: Any = object()

DEFAULT_TIMEOUT = 15.0
DEFAULT_ATTEMPT_TIMEOUT = 6.0  # a little above the server's 5 s request timeout, so its 504 wins
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_HEDGE_DELAY = 1.0  # a node silent this long is probably hung: ask the next one too


class AsyncKV(AsyncHeld):
    """asyncio client: leader discovery, retries with back-off, exactly-once writes.

    One `aiohttp.ClientSession` is created lazily (inside the running loop) and
    reused for every call. `timeout` bounds a whole call including its retries;
    `attempt_timeout` bounds one HTTP attempt; an attempt without an answer after
    `hedge_delay` (at most a third of the call's timeout) is hedged on the next node,
    so one hung node never holds a call up. Every method takes a `timeout` keyword
    that overrides the default for that call. With `user` and `password` (or a fixed
    `token`) it authenticates to a cluster with auth on (kvstore.client.credentials).
    """

    def __init__(
        self,
        endpoints: EndpointsArg = None,
        *,
        config: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        hedge_delay: float = DEFAULT_HEDGE_DELAY,
        retry: RetryPolicy | None = None,
        client_id: str | None = None,
        max_connections: int = 100,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        tls: ClientTLS | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        self._credentials = Credentials(user, password, token)
        self._router = EndpointRouter(resolve_endpoints(endpoints, config))
        self._session_state = WriteSession(client_id)
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._connector = {"limit": max_connections, "ssl": (tls or ClientTLS()).context()}
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._http: aiohttp.ClientSession | None = None
        self._closed = False
        settings = AttemptSettings(attempt_timeout, connect_timeout, hedge_delay, self._retry)
        self._dispatch = Dispatcher(
            self._router,
            self._session_state,
            settings,
            self._ensure_http,
            self._rng,
            sleep,
            self._credentials,
        )

    # ----------------------------------------------------------------- lifecycle

    async def _enter(self) -> None:
        """Nothing to open: the HTTP session is made on first use."""

    async def close(self) -> None:
        """Close the HTTP session; the client cannot be used afterwards."""
        self._closed = True
        if self._http is not None:
            await self._http.close()
            self._http = None

    _exit = close

    @property
    def client_id(self) -> str:
        return self._session_state.client_id

    @property
    def endpoints(self) -> list[str]:
        """Known node URLs: the configured ones, then members learnt from /v1/status."""
        return list(self._router.endpoints)

    @property
    def leader_url(self) -> str | None:
        """The cached leader URL (None until an answer named a leader this client can map)."""
        return self._router.leader_url

    @property
    def token(self) -> str | None:
        """The token sent now (None before the first call with a user, or with auth off)."""
        return self._credentials.token

    @property
    def first_outstanding(self) -> int:
        """The lowest write seq not yet answered (what `X-KV-First-Outstanding` carries)."""
        return self._session_state.first_outstanding

    # ------------------------------------------------------------------- reads

    async def get(
        self,
        key: str,
        consistency: Consistency = "linearizable",
        *,
        default: Any = _MISSING,
        timeout: float | None = None,
    ) -> KeyValue:
        """Read a key; raises `NotFound` when it does not exist, unless a `default` is
        given, which is then returned instead.

        "stale" reads are served by whichever node is asked, without a quorum
        check, so they spread over all nodes but may lag behind recent writes.
        """
        if consistency not in ("linearizable", "stale"):
            raise InvalidRequest(f"consistency must be 'linearizable' or 'stale': {consistency!r}")
        stale = consistency == "stale"
        path = key_path(key) + ("?consistency=stale" if stale else "")
        answer = await self._call(_Request("GET", path, stale=stale), timeout)
        if answer.status == 404 and answer.error_code == "not_found":
            if default is not _MISSING:
                return default  # type: ignore[no-any-return]
            raise NotFound(key)
        raise_for_answer(answer, key)
        if "X-KV-Version" not in answer.headers:
            raise ClusterUnavailable(f"{answer.endpoint}: {NOT_OURS}")
        return KeyValue(
            key=key,
            value=answer.body,
            version=int(answer.headers.get("X-KV-Version", 0)),
            mod_revision=int(answer.headers.get("X-KV-Mod-Revision", 0)),
            create_revision=int(answer.headers.get("X-KV-Create-Revision", 0)),
        )

    async def range_page(
        self,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
        timeout: float | None = None,
        **options: Unpack[RangeOptions],
    ) -> RangePage:
        """One page of a range read: `prefix=`, or `start=` to `end=` exclusive (no end:
        to the last key); `keys_only`, `count_only`, `newest_first`, `revision`,
        `consistency`. `RangePage.next` asks for the following page at the same
        revision. Raises `Compacted` for a revision older than the retained history."""
        return await self._page(RangeSpec.of(options), limit, continue_token, timeout)

    def range(
        self,
        start: str | None = None,
        end: str | None = None,
        *,
        limit: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
        **options: Unpack[RangeOptions],
    ) -> RangeIterator:
        """`async for kv in kv.range("a", "m")` (no range: every key), options as for
        `range_page`: a page at a time, all pages at ONE revision (the iterator's
        `.revision`), at most `limit` keys. `timeout` bounds each page."""
        if start is None and options.get("prefix") is None:
            start = ""
        spec = RangeSpec.of({**options, "start": start, "end": end})
        return RangeIterator(
            lambda p: self._page(spec, p.next_limit, p.token, timeout), Pager(limit, page_size)
        )

    async def _page(
        self, spec: RangeSpec, limit: int | None, token: str | None, timeout: float | None
    ) -> RangePage:
        request = _Request("GET", spec.path(limit, token), stale=spec.stale)
        answer = await self._call(request, timeout)
        raise_for_answer(answer, None)
        return RangePage.from_json(answer.json())

    def get_prefix(self, prefix: str, **options: Any) -> RangeIterator:
        """`async for kv in kv.get_prefix("orders/")`: `range(prefix=...)`."""
        return self.range(prefix=prefix, **options)

    # ------------------------------------------------------------------ transactions

    def txn(self) -> TxnBuilder[Awaitable[TxnResponse]]:
        """`await kv.txn().if_(...).then(...).else_(...).commit()`; see kvstore.client.txn."""
        return TxnBuilder(lambda doc, timeout: self.run_txn(doc, timeout=timeout))

    async def run_txn(self, document: Document, *, timeout: float | None = None) -> TxnResponse:
        """Send a transaction document (the JSON of POST /v1/txn). One with writes is
        exactly-once like a put; a failed compare is `succeeded=False`, not an error."""
        body = json.dumps(document).encode()
        request = _Request("POST", "/v1/txn", body=body)
        if writes(document):
            answer = await self._write(request, "", timeout)
        else:
            answer = await self._call(request, timeout)
            raise_for_answer(answer, None)
        return TxnResponse.from_json(answer.json())

    # ------------------------------------------------------------------ writes

    async def put(
        self,
        key: str,
        value: Value,
        prev_version: int | None = None,
        *,
        prev_revision: int | None = None,
        lease: int | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> PutResult:
        """Write a value. With `prev_revision` it is a compare-and-set on the key's
        mod_revision (0 = create only), safe against a delete and re-create in between;
        `prev_version` compares the version, which restarts at 1 on re-creation (ABA).
        With `lease` the key is deleted when that lease ends; with `fence` the write
        applies only while the fence's token holds its lock (else `Fenced`)."""
        path = key_path(key) + write_query(prev_version, prev_revision, lease, fence)
        data = as_bytes(value)
        answer = await self._write(_Request("PUT", path, body=data), key, timeout)
        body = answer.json()
        return PutResult(int(body.get("revision", 0)), int(body.get("version", 0)))

    async def cas(
        self, key: str, value: Value, prev_version: int, *, timeout: float | None = None
    ) -> PutResult:
        """Compare-and-set: write only if the key's version is `prev_version` (0 = missing)."""
        return await self.put(key, value, prev_version=prev_version, timeout=timeout)

    async def delete(
        self,
        key: str,
        prev_version: int | None = None,
        *,
        prev_revision: int | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> int:
        """Delete a key and return the new revision; raises `NotFound` when it is missing.
        `prev_revision` / `prev_version` / `fence` make it conditional, as for `put`."""
        path = key_path(key) + write_query(prev_version, prev_revision, None, fence)
        answer = await self._write(_Request("DELETE", path), key, timeout)
        return int(answer.json().get("revision", 0))

    async def update(
        self,
        key: str,
        fn: UpdateFn,
        *,
        max_attempts: int = 16,
        timeout: float | None = None,
    ) -> PutResult:
        """Read-modify-write: `fn(old value or None)` stored with compare-and-set, read
        and recomputed when another writer got in between (kvstore.client.update)."""
        return await read_modify_write(self, key, fn, max_attempts, timeout, self._backoff)

    async def _backoff(self, retry: int) -> None:
        await self._sleep(self._retry.delay(retry, self._rng))

    # ------------------------------------------------------------------ status

    async def status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> NodeStatus:
        """The /v1/status of `endpoint` (one attempt), or of any reachable node when None."""
        pinned = endpoint.rstrip("/") if endpoint else None
        answer = await self._call(_Request("GET", "/v1/status", pinned=pinned), timeout)
        raise_for_answer(answer, None)
        return self._learn_status(answer)

    async def cluster_status(self, *, timeout: float = 2.0) -> list[EndpointStatus]:
        """Ask every known node for its status at once; unreachable nodes are rows too
        (kvstore.client.cluster_view)."""
        return await ask_every_node(self._router, self.status, timeout)

    # ---------------------------------------------------------------- members

    async def members(self, *, stale: bool = False, timeout: float | None = None) -> MemberList:
        """The members as the leader sees them (with `stale`, as the node asked sees them)."""
        path = MEMBERS_PATH + ("?consistency=stale" if stale else "")
        answer = await self._call(_Request("GET", path, stale=stale), timeout)
        raise_for_answer(answer, None)
        return MemberList.from_json(answer.json())

    async def add_member(
        self, node_id: str, client_url: str, peer_url: str, *, timeout: float | None = None
    ) -> MemberList:
        """Add a node as a learner, wait until it has caught up, then make it a voter.

        The leader waits for the catch-up a little less than `timeout`, so its answer
        arrives before this call gives up. Raises `MemberUnreachable` when the leader
        cannot reach the new node (it stays a learner until it is started or removed).
        """
        budget = self._timeout if timeout is None else timeout
        body = json.dumps({"id": node_id, "client_url": client_url, "peer_url": peer_url})
        path = f"{MEMBERS_PATH}?timeout={_server_wait(budget):g}"
        answer = await self._call(
            _Request("POST", path, body=body.encode(), once=True, slow=True), budget
        )
        raise_for_answer(answer, None)
        return MemberList.from_json(answer.json())

    async def remove_member(self, node_id: str, *, timeout: float | None = None) -> MemberList:
        """Remove a member; the leader first hands its office over if it is the one removed."""
        budget = self._timeout if timeout is None else timeout
        path = f"{MEMBERS_PATH}/{quote(node_id, safe='')}?timeout={_server_wait(budget):g}"
        answer = await self._call(_Request("DELETE", path, once=True, slow=True), budget)
        raise_for_answer(answer, None)
        return MemberList.from_json(answer.json())

    async def snapshot(self, *, timeout: float | None = None) -> bytes:
        """A consistent backup of the whole state, taken by the leader (the backup format
        of kvstore.runtime.backup; `kv snapshot save` checks and stores it)."""
        answer = await self._call(_Request("GET", SNAPSHOT_PATH, slow=True), timeout)
        raise_for_answer(answer, None)
        return answer.body

    # ---------------------------------------- leases, locks, elections (their modules)

    def lease(self, ttl: int, *, on_lost: LostCallback | None = None) -> Lease:
        """`async with kv.lease(ttl=10) as lease:`, kept alive in the background."""
        return Lease(self, ttl, on_lost=on_lost)

    def lock(self, name: str, ttl: int = 10, *, timeout: float | None = None) -> Lock:
        """`async with kv.lock(name, ttl=10) as lock:`; `lock.put` is fenced."""
        return Lock(self, name, ttl, timeout=timeout)

    def election(self, name: str) -> Election:
        return Election(self, name)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        write: bool = False,
        once: bool = False,
        timeout: float | None = None,
    ) -> Answer:
        """A call of the HTTP API with this client's routing and retries (`write`:
        exactly-once under a seq; `once`: a change without a seq, never sent twice once
        it may have arrived), for the feature modules; raises the typed errors."""
        if write:
            return await self._write(_Request(method, path, body=body), path, timeout)
        answer = await self._call(_Request(method, path, body=body, once=once), timeout)
        raise_for_answer(answer, None)
        return answer

    # --------------------------------------------------------------- internals

    async def _write(self, request: _Request, key: str, timeout: float | None) -> Answer:
        """Run a write under a fresh seq, released once it is answered or given up."""
        request.seq = self._session_state.begin()
        try:
            answer = await self._call(request, timeout)
        finally:
            self._session_state.finish(request.seq)
        if answer.status == 404 and answer.error_code == "not_found":
            raise NotFound(key)
        raise_for_answer(answer, key)
        return answer

    async def _call(self, request: _Request, timeout: float | None) -> Answer:
        """Send `request` (see kvstore.client.attempts for the retry and hedging rules)."""
        return await self._dispatch.call(request, self._timeout if timeout is None else timeout)

    def _learn_status(self, answer: Answer) -> NodeStatus:
        return self._dispatch.learn_status(answer)

    def watch(self, **options: Any) -> Watch:
        """`async for event in kv.watch(prefix="config/", start_revision=R)`: every change
        in revision order across reconnects and nodes; options and the one error the
        caller handles (`Compacted`) in kvstore.client.watch.Watch."""
        return Watch(
            self._ensure_http, self._router, rng=self._rng, credentials=self._credentials, **options
        )

    def _ensure_http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise KVError("client is closed")
        if self._http is None:
            connector = aiohttp.TCPConnector(**self._connector)
            self._http = single_send_session(connector=connector)
        return self._http


def _server_wait(budget: float) -> float:
    """How long the leader may work on a membership change within a call of `budget`
    seconds: less, so its answer (even a refusal) arrives before the client gives up."""
    return round(max(0.1, min(budget - 1.0, budget * 0.9)), 3)
