"""Who the client is, for a cluster with authentication on (users, roles, tokens).

A client made with a user and password never sends the password with a request: it
trades it for a short-lived signed token (`POST /v1/auth/token`) on first need, sends
`Authorization: Bearer <token>`, renews the token once most of its lifetime has
passed, and renews it once more (then retries the request) when a node still refuses
it as expired or no longer valid (the user's password changed, auth was re-enabled
with a new key), or asks for one (auth was enabled since the client started). A
client made with a fixed token (`kv --token`, KV_TOKEN) sends it as is: it cannot
renew it, so a refusal is final. A client with neither sends nothing.

While the cluster answers that auth is not enabled, a user-and-password client sends
no token and asks for none until a request is refused for the lack of one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from kvstore.client.answers import raise_for_answer
from kvstore.client.errors import AuthenticationFailed, InvalidRequest
from kvstore.client.transport import Answer

TOKEN_PATH = "/v1/auth/token"
AUTHORIZATION = "Authorization"
RENEW_AFTER = 0.75
"""Renew a token once this share of its lifetime has passed (measured from when it was
asked for, so a slow answer only makes the renewal earlier)."""
RENEWABLE_REFUSALS = frozenset({"token_expired", "bad_token", "auth_required"})

FetchToken = Callable[[bytes, float], Awaitable[Answer]]
"""Sends `POST /v1/auth/token` with this body within a budget of seconds."""


class Credentials:
    """A user and password, or a fixed token, or nothing; and the token in use."""

    def __init__(
        self,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token is not None and (user is not None or password is not None):
            raise InvalidRequest("give a token, or a user and a password, not both")
        if (user is None) != (password is None):
            raise InvalidRequest("a user goes with a password")
        if user == "" or token == "":
            raise InvalidRequest("the user name and the token must not be empty")
        self.user = user
        self._password = password
        self._token = token
        self._renew_at = float("inf")
        self._auth_off = False
        """The cluster said auth is not enabled: send no token until one is asked for."""
        self._clock = clock
        self._lock = asyncio.Lock()
        self._fetch_token: FetchToken | None = None

    def bind(self, fetch: FetchToken) -> None:
        """How to ask the cluster for a token (the client's own request machinery)."""
        self._fetch_token = fetch

    @property
    def active(self) -> bool:
        """Whether there is anything to authenticate with."""
        return self._token is not None or self.user is not None

    @property
    def token(self) -> str | None:
        return self._token

    def header(self) -> dict[str, str]:
        """The Authorization header for the next request ({} without a token)."""
        return {AUTHORIZATION: f"Bearer {self._token}"} if self._token is not None else {}

    async def ready(self, budget: float) -> None:
        """Make sure the token in use will not expire soon: ask for one when there is
        none yet or the current one is old (one request for many concurrent callers)."""
        if self._password is None or self._fresh():
            return
        async with self._lock:
            if not self._fresh():  # another caller may have renewed it meanwhile
                await self._fetch(budget)

    def refused(self, answer: Answer) -> bool:
        """Whether `answer` refused the token in a way a new token fixes; then the token
        is dropped, so the next `ready` asks for a new one."""
        if answer.status != 401 or answer.error_code not in RENEWABLE_REFUSALS:
            return False
        if self._password is None:
            return False
        self._token, self._auth_off = None, False
        return True

    def _fresh(self) -> bool:
        return self._auth_off or (self._token is not None and self._clock() < self._renew_at)

    async def _fetch(self, budget: float) -> None:
        assert self._fetch_token is not None, "bind() first"
        asked_at = self._clock()
        body = json.dumps({"user": self.user, "password": self._password}).encode()
        answer = await self._fetch_token(body, budget)
        if answer.status == 409 and answer.error_code == "auth_not_enabled":
            self._token, self._auth_off = None, True
            return
        raise_for_answer(answer, None)
        doc = answer.json()
        token, ttl = doc.get("token"), doc.get("ttl")
        if not isinstance(token, str) or not token or type(ttl) is not int or ttl <= 0:
            raise AuthenticationFailed(f"{answer.endpoint} answered an unusable token: {doc!r}")
        self._token, self._renew_at = token, asked_at + RENEW_AFTER * ttl
