"""One HTTP attempt, and which node to send the next one to.

Kept apart from the retry loop so each piece can be reasoned about alone:
`send` turns every aiohttp failure into one of two facts that matter for
safety (the request surely never left, or it may have reached a node), and
`EndpointRouter` holds the leader cache and the id -> URL map learnt from
/v1/status and the `X-KV-Leader` header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from kvstore.client.types import NodeStatus

# aiohttp >= 3.10 tells a connect timeout apart from a read timeout; older ones do not.
_CONNECT_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls
    for cls in (aiohttp.ClientConnectorError, getattr(aiohttp, "ConnectionTimeoutError", None))
    if cls is not None
)


class _AttemptFailed(Exception):
    """One attempt failed; `reason` says why in a few words, `endpoint` where."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"{endpoint}: {reason}")
        self.endpoint = endpoint
        self.reason = reason


class NotSent(_AttemptFailed):
    """The request never reached a node (connection refused, connect timeout): safe to resend."""


class MaybeSent(_AttemptFailed):
    """The request may have reached a node (read timeout, connection lost mid-way)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete HTTP answer, read fully so the connection can go back to the pool."""

    endpoint: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        """The JSON body, or {} when the body is not a JSON object (a proxy's HTML page, say)."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def error_code(self) -> str | None:
        code = self.json().get("error")
        return str(code) if code is not None else None

    @property
    def error_message(self) -> str:
        data = self.json()
        return str(data.get("message") or data.get("error") or f"HTTP {self.status}")


async def send(
    session: aiohttp.ClientSession,
    method: str,
    endpoint: str,
    path: str,
    *,
    body: bytes | None,
    headers: Mapping[str, str],
    timeout: float,
    connect_timeout: float,
) -> Answer:
    """Make one attempt at `endpoint` + `path` (already percent-encoded).

    Raises `NotSent` or `MaybeSent` instead of aiohttp's many errors.
    """
    url = endpoint + path
    connect_within = min(timeout, connect_timeout)
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_within)
    try:
        async with session.request(
            method, URL(url, encoded=True), data=body, headers=headers, timeout=client_timeout
        ) as resp:
            payload = await resp.read()
            return Answer(endpoint, resp.status, resp.headers, payload)
    except aiohttp.ClientConnectorCertificateError as exc:
        raise NotSent(endpoint, f"certificate problem: {exc.certificate_error}") from exc
    except aiohttp.ClientSSLError as exc:
        raise NotSent(endpoint, f"TLS problem: {_reason(exc)}") from exc
    except aiohttp.InvalidURL as exc:
        raise NotSent(endpoint, f"invalid URL: {exc}") from exc
    except _CONNECT_TIMEOUT_ERRORS as exc:
        reason = _reason(exc)
        if reason == "connect timeout":
            reason = f"no connection within {seconds(connect_within)} s"
        raise NotSent(endpoint, reason) from exc
    except TimeoutError as exc:  # asyncio.TimeoutError is this since 3.11
        raise MaybeSent(endpoint, f"no answer within {seconds(timeout)} s") from exc
    except (aiohttp.ClientError, OSError) as exc:
        hint = ""
        if endpoint.startswith("http:") and isinstance(exc, aiohttp.ServerDisconnectedError):
            hint = "; if the node serves https, use an https:// URL"
        raise MaybeSent(endpoint, f"connection lost ({_reason(exc)}{hint})") from exc


def seconds(value: float) -> str:
    """A duration for a message: "1" for 0.998, "0.5", "2.5" (tenths at most)."""
    return f"{value:.1f}".removesuffix(".0")


def _reason(exc: BaseException) -> str:
    """A short reason for a one-line message ("connection refused", not a repr)."""
    cause = getattr(exc, "os_error", None) or exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):
        return "connect timeout"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__


class EndpointRouter:
    """Chooses the node for each attempt and learns where the leader is.

    Writes and linearizable reads go to the cached leader (a follower would only
    forward them); stale reads rotate over all nodes to spread the load. A node
    that fails is skipped in favour of the next one.
    """

    def __init__(self, endpoints: list[str]) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.leader_id: str | None = None
        self.leader_url: str | None = None
        self.urls_by_id: dict[str, str] = {}
        self._cursor = 0
        self._stale_cursor = 0

    def pick(self, *, stale: bool = False, avoid: frozenset[str] | set[str] = frozenset()) -> str:
        """The node for the next attempt, other than those in `avoid` (attempts running)
        while there is another; the leader first unless it is a stale read."""
        if not stale and self.leader_url and self.leader_url not in avoid:
            return self.leader_url
        count = len(self.endpoints)
        start = self._stale_cursor if stale else self._cursor
        free = (i for i in range(count) if self.endpoints[(start + i) % count] not in avoid)
        offset = next(free, 0)
        url = self.endpoints[(start + offset) % count]
        if stale:
            self._stale_cursor = start + offset + 1
        return url

    def failed(self, url: str) -> None:
        """`url` did not answer usefully: forget it as leader and move to the next node."""
        if url == self.leader_url:
            self.leader_url = None
            self.leader_id = None
        if url in self.endpoints:
            self._cursor = self.endpoints.index(url) + 1
            self._stale_cursor = self._cursor
        else:
            self._cursor += 1

    def learn_leader(self, leader_id: str) -> bool:
        """Take an `X-KV-Leader` hint; False when the id's URL is unknown (ask /v1/status)."""
        url = self.urls_by_id.get(leader_id)
        if url is None:
            return False
        self.leader_id, self.leader_url = leader_id, url
        return True

    def learn_status(self, status: NodeStatus) -> None:
        """Learn node ids, URLs and the leader from one node's /v1/status answer."""
        for member in status.members:
            self.urls_by_id[member.id] = member.client_url
            if member.client_url not in self.endpoints:
                self.endpoints.append(member.client_url)
        if status.id != "?":
            self.urls_by_id[status.id] = status.endpoint
        if status.leader:
            self.learn_leader(status.leader)

    def id_of(self, url: str) -> str | None:
        for node_id, known in self.urls_by_id.items():
            if known == url:
                return node_id
        return None
