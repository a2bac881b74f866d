"""The two systems `kv bench` can load: this store (through `AsyncKV`) and etcd's JSON gateway.

Both expose the same tiny interface (`put`, `get`, `delete`, `range`, `txn`, `close`)
so the load loop
is one piece of code and the comparison is like for like: same keys, same
values, same concurrency, same notion of a linearizable or stale read.
"""

from __future__ import annotations

import base64
from typing import Protocol

import aiohttp

from kvstore.client import AsyncKV, Consistency, Op
from kvstore.client.errors import KVError, NotFound


class BenchOpError(Exception):
    """A failed operation, labelled with the kind shown in the "errors by kind" report."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Target(Protocol):
    async def put(self, key: str, value: bytes) -> None: ...

    async def get(self, key: str) -> bool:
        """Read a key; False when it does not exist."""
        ...

    async def delete(self, key: str) -> None:
        """Delete a key; a key that does not exist is no error."""
        ...

    async def range(self, start: str, end: str, limit: int) -> int:
        """Read the keys in [start, end), at most `limit`; how many came back."""
        ...

    async def txn(self, keys: list[str], value: bytes) -> None:
        """One transaction putting `value` under every key (no compare)."""
        ...

    async def close(self) -> None: ...


class KvTarget:
    """This store, through the real client: retries, leader discovery and exactly-once included."""

    def __init__(
        self, endpoints: list[str], *, timeout: float, stale: bool, max_connections: int
    ) -> None:
        self._kv = AsyncKV(endpoints, timeout=timeout, max_connections=max_connections)
        self._consistency: Consistency = "stale" if stale else "linearizable"

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self._kv.put(key, value)
        except KVError as exc:
            raise BenchOpError(type(exc).__name__) from exc

    async def get(self, key: str) -> bool:
        try:
            await self._kv.get(key, self._consistency)
        except NotFound:
            return False
        except KVError as exc:
            raise BenchOpError(type(exc).__name__) from exc
        return True

    async def delete(self, key: str) -> None:
        try:
            await self._kv.delete(key)
        except NotFound:
            return
        except KVError as exc:
            raise BenchOpError(type(exc).__name__) from exc

    async def range(self, start: str, end: str, limit: int) -> int:
        try:
            page = await self._kv.range_page(
                start=start, end=end, limit=limit, consistency=self._consistency
            )
        except KVError as exc:
            raise BenchOpError(type(exc).__name__) from exc
        return len(page.kvs)

    async def txn(self, keys: list[str], value: bytes) -> None:
        try:
            await self._kv.txn().then(*(Op.put(key, value) for key in keys)).commit()
        except KVError as exc:
            raise BenchOpError(type(exc).__name__) from exc

    async def close(self) -> None:
        await self._kv.close()


class EtcdTarget:
    """etcd v3 through its JSON gateway (`/v3/kv/put`, `/v3/kv/range`), keys and values base64.

    It talks to one endpoint at a time, like etcdctl does, and moves to the next
    one only when a connection fails; etcd forwards writes to its leader itself.
    Range requests are linearizable unless `stale`, which sets `serializable`.
    """

    def __init__(
        self, endpoints: list[str], *, timeout: float, stale: bool, max_connections: int
    ) -> None:
        self._endpoints = endpoints
        self._current = 0
        self._stale = stale
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._http: aiohttp.ClientSession | None = None

    async def put(self, key: str, value: bytes) -> None:
        await self._post("/v3/kv/put", {"key": _b64(key.encode()), "value": _b64(value)})

    async def get(self, key: str) -> bool:
        payload: dict[str, object] = {"key": _b64(key.encode())}
        if self._stale:
            payload["serializable"] = True
        body = await self._post("/v3/kv/range", payload)
        return bool(body.get("kvs"))

    async def delete(self, key: str) -> None:
        await self._post("/v3/kv/deleterange", {"key": _b64(key.encode())})

    async def range(self, start: str, end: str, limit: int) -> int:
        payload: dict[str, object] = {
            "key": _b64(start.encode()),
            "range_end": _b64(end.encode()),
            "limit": limit,
        }
        if self._stale:
            payload["serializable"] = True
        body = await self._post("/v3/kv/range", payload)
        return len(body.get("kvs") or [])  # type: ignore[arg-type]

    async def txn(self, keys: list[str], value: bytes) -> None:
        puts = [{"requestPut": {"key": _b64(k.encode()), "value": _b64(value)}} for k in keys]
        await self._post("/v3/kv/txn", {"success": puts})

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _post(self, path: str, payload: dict[str, object]) -> dict[str, object]:
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._http = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        index = self._current
        url = self._endpoints[index % len(self._endpoints)] + path
        try:
            async with self._http.post(url, json=payload) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise BenchOpError(f"http_{resp.status}")
        except aiohttp.ClientConnectorError as exc:
            self._current = index + 1
            raise BenchOpError("connection_refused") from exc
        except TimeoutError as exc:
            raise BenchOpError("timeout") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise BenchOpError(type(exc).__name__) from exc
        if not isinstance(body, dict):
            raise BenchOpError("bad_answer")
        if "error" in body:
            raise BenchOpError("etcd_error")
        return body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def make_target(
    kind: str, endpoints: list[str], *, timeout: float, stale: bool, max_connections: int
) -> Target:
    cls = KvTarget if kind == "kv" else EtcdTarget
    return cls(endpoints, timeout=timeout, stale=stale, max_connections=max_connections)
