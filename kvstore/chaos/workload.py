"""Concurrent clients that record exactly what they saw, for the linearizability checker.

Each client is bound to one node's client URL (so followers must forward) and issues
one request at a time on a small key set, making contention likely. A recorded
operation is exactly one HTTP attempt, made with a bare aiohttp session: the library
client retries and switches endpoints, which would hide when a request really ran.

Outcomes follow chaos.history: 200 (and 404 for a get) are ok; 409 version_mismatch,
404 on a delete, 503 and 400/413 are definite failures; 504, a timeout, a connection
lost after the request may have been sent, or anything unexpected is "unknown". Only a
connection that never opened proves a request was not sent, so only that counts as a
failure among transport errors (error "refused", or "tls" when the client rejected the
node's certificate).

aiohttp (since 3.9) silently re-sends a PUT or DELETE once when a pooled keep-alive
connection breaks, and the retry's "connection refused" would then hide a first attempt
that reached the server (seen in practice: a put recorded as refused had been applied
by a leader killed before it answered). So that retry is switched off, and a trace hook
counts the requests really written: an op whose request was written more than once, or
that failed after writing it, is recorded as unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from kvstore.chaos.history import Operation
from kvstore.client.http_session import single_send_session
from kvstore.client.tls import ClientTLS

DEFAULT_KEYS: tuple[str, ...] = tuple(f"k{i}" for i in range(5))
KIND_WEIGHTS: dict[str, int] = {"get": 40, "put": 25, "cas": 20, "delete": 15}


@dataclass
class WorkloadConfig:
    clients: int = 6
    keys: Sequence[str] = DEFAULT_KEYS
    op_timeout_s: float = 1.5
    """Shorter than the run, longer than the server's own timeout, so most slow writes
    come back as a definite 504 instead of a client-side unknown."""
    rate_per_client: float = 40.0
    """Ops per second per client at most (0 = as fast as it can): bounds the history."""
    fail_pause_s: float = 0.05
    """Pause after a failure, so a dead node's quick refusals do not flood the history."""
    seed: int = 0
    tls: ClientTLS | None = None
    """The CA the nodes' https certificates are verified with (None: plain http)."""


@dataclass
class Workload:
    """Runs the clients until stopped; `ops` is the history in return order."""

    endpoints: Sequence[str]
    now: Callable[[], float]
    config: WorkloadConfig = field(default_factory=WorkloadConfig)
    ops: list[Operation] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _versions: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        """Clients finish the request in flight (bounded by op_timeout_s) and return."""
        self._stop.set()

    async def run(self) -> None:
        async with make_session(self.config.tls) as session:
            await asyncio.gather(*(self._client(session, c) for c in range(self.config.clients)))

    async def _client(self, session: aiohttp.ClientSession, client: int) -> None:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}-{client}")
        base = self.endpoints[client % len(self.endpoints)].rstrip("/")
        interval = 1.0 / cfg.rate_per_client if cfg.rate_per_client > 0 else 0.0
        number = 0
        while not self._stop.is_set():
            started = self.now()
            number += 1
            op = await self.one_op(session, base, client, number, rng)
            self.ops.append(op)
            self.counts[op.outcome] += 1
            pause = max(0.0, interval - (self.now() - started))
            if op.outcome != "ok":
                pause = max(pause, cfg.fail_pause_s)
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)

    async def one_op(
        self,
        session: aiohttp.ClientSession,
        base: str,
        client: int,
        number: int,
        rng: random.Random,
    ) -> Operation:
        """Choose, send and record one operation (a single HTTP attempt)."""
        key = rng.choice(list(self.config.keys))
        kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        value = f"{client}-{number}".encode() if kind in ("put", "cas") else None
        prev: int | None = None
        if kind == "cas" or (kind == "delete" and rng.random() < 0.3):
            prev = max(0, self._versions.get(key, 0) + rng.choice((0, 0, 0, 1, -1)))
        url = f"{base}/v1/kv/{quote(key, safe='')}"
        if prev is not None:
            url += f"?prev_version={prev}"
        method = {"get": "GET", "put": "PUT", "cas": "PUT", "delete": "DELETE"}[kind]
        fields: dict[str, Any] = {"client": client, "kind": kind, "key": key}
        fields.update(value=value, prev_version=prev)
        call = self.now()
        timeout = aiohttp.ClientTimeout(total=self.config.op_timeout_s, sock_connect=0.5)
        sent = SentCounter()
        try:
            async with session.request(
                method, url, data=value, timeout=timeout, trace_request_ctx=sent
            ) as resp:
                body = await resp.read()
                ret = self.now()
                if sent.count > 1:
                    return Operation(
                        **fields, call=call, ret=ret, outcome="unknown", error="resent"
                    )
                return self._record(fields, call, ret, resp.status, resp.headers, body)
        except aiohttp.ClientConnectorError as exc:
            outcome = "fail" if sent.count == 0 else "unknown"
            # A handshake the client refused is named apart, so it cannot pass for a dead node.
            tls = (aiohttp.ClientConnectorCertificateError, aiohttp.ClientConnectorSSLError)
            error = "tls" if isinstance(exc, tls) else "refused"
            return Operation(**fields, call=call, ret=self.now(), outcome=outcome, error=error)
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return Operation(**fields, call=call, ret=self.now(), outcome="unknown", error=error)

    def _record(
        self,
        fields: dict[str, Any],
        call: float,
        ret: float,
        status: int,
        headers: Any,
        body: bytes,
    ) -> Operation:
        kind, key = fields["kind"], fields["key"]
        info = _json(body) if status != 200 or kind != "get" else {}
        code = str(info.get("error", f"http_{status}"))
        if status == 200:
            if kind == "get":
                version = int(headers["X-KV-Version"])
                self._versions[key] = version
                extra = {"found": True, "read_value": body, "read_version": version}
                return Operation(**fields, call=call, ret=ret, outcome="ok", **extra)
            version = info.get("version")
            if version is not None:
                self._versions[key] = int(version)
            elif kind == "delete":
                self._versions[key] = 0
            return Operation(
                **fields,
                call=call,
                ret=ret,
                outcome="ok",
                revision=info.get("revision"),
                version=version,
            )
        if status == 404 and kind == "get":
            self._versions[key] = 0
            return Operation(**fields, call=call, ret=ret, outcome="ok", found=False)
        if status == 404 and kind == "delete" and code == "not_found":
            return Operation(**fields, call=call, ret=ret, outcome="fail", error="not_found")
        if status == 409 and code == "version_mismatch" and fields["prev_version"] is not None:
            current = int(info.get("version", 0))
            self._versions[key] = current
            return Operation(
                **fields, call=call, ret=ret, outcome="fail", error=code, version=current
            )
        if status in (400, 413, 503):
            return Operation(**fields, call=call, ret=ret, outcome="fail", error=code)
        # 504 timeout, 409 session_expired, 5xx, anything unforeseen: maybe applied.
        return Operation(**fields, call=call, ret=ret, outcome="unknown", error=code)


class SentCounter:
    """Per-request trace context: how many times the request headers were written."""

    def __init__(self) -> None:
        self.count = 0


async def _on_headers_sent(
    _session: aiohttp.ClientSession, ctx: Any, _params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    sent = ctx.trace_request_ctx
    if isinstance(sent, SentCounter):
        sent.count += 1


def make_session(tls: ClientTLS | None = None) -> aiohttp.ClientSession:
    """A session that sends each request at most once (see the module docstring) and,
    given `tls`, verifies the nodes' certificates with its CA."""
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    connector = aiohttp.TCPConnector(limit=0, ssl=True if tls is None else tls.context())
    return single_send_session(connector=connector, auto_decompress=False, trace_configs=[trace])


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
