"""One logical request: attempts over the nodes until a definite answer or the deadline.

Kept apart from `AsyncKV` so the retry rules can be read in one place. What makes a
hung node (SIGSTOPped, or a dead host whose TCP stack still accepts) harmless is the
*hedge*: when an attempt has had no answer for `hedge_delay`, the next node is tried as
well while the first attempt keeps running, and the first definite answer wins. A
hedged write is safe for the same reason a retried one is: every attempt carries the
same (client id, seq), and the cluster applies a seq at most once.

Every failed attempt is remembered per endpoint, so a request that gives up says what
happened at each node ("connection refused", "no answer within 2 s", "not a pyraftkv
endpoint") instead of only the last thing that went wrong.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from kvstore.client.credentials import TOKEN_PATH, Credentials
from kvstore.client.errors import ClusterUnavailable, NoLeader, OutcomeUnknown
from kvstore.client.session import LEADER_HEADER, RetryPolicy, WriteSession
from kvstore.client.transport import Answer, EndpointRouter, MaybeSent, NotSent, seconds, send
from kvstore.client.types import NodeStatus

UNAVAILABLE = "cluster unavailable: "
SETTLE_S = 0.05
CUT_SHORT_S = 0.1
MIN_RETRY_S = 0.05
"""No retry starts with less budget than this: it would still be running at the deadline
and be cut off, and a write cut off counts as maybe applied even when its node was down
(refused), turning a certain "unavailable" into "outcome unknown"."""
"""An attempt the deadline cut shorter than this says nothing new about its node: the
reason recorded for an earlier attempt there is kept."""


@dataclass(slots=True)
class Request:
    """One logical request; `seq` is set for writes and stays the same across retries."""

    method: str
    path: str
    body: bytes | None = None
    seq: int | None = None
    stale: bool = False
    pinned: str | None = None
    once: bool = False
    """Not a write with a seq, yet not to be repeated once it may have reached a node
    (a membership change: a second copy would only queue behind the first)."""
    slow: bool = False
    """The answer may take longer than an attempt timeout (a catch-up the leader waits
    for, a large snapshot): an attempt may use the whole budget. Hedging still applies."""
    anonymous: bool = False
    """Sent without a token (the request that asks for one)."""

    @property
    def is_write(self) -> bool:
        return self.seq is not None

    @property
    def may_take_effect(self) -> bool:
        """An attempt that may have reached a node may have changed something."""
        return self.seq is not None or self.once


@dataclass(frozen=True, slots=True)
class AttemptSettings:
    """How long one attempt may take, and when a slow one is hedged on another node."""

    attempt_timeout: float
    connect_timeout: float
    hedge_delay: float
    retry: RetryPolicy


def is_foreign(answer: Answer) -> bool:
    """An answer no pyraftkv node gives: a 4xx without our JSON error code.

    A pyraftkv node answers every refusal with `{"error": CODE}`; a bare 404/405 comes
    from something else listening there (most often the node's peer port, given as a
    client endpoint by mistake). 5xx answers are left to the usual rules: a proxy's 502
    in front of a real node may hide a write that took effect.
    """
    return 400 <= answer.status < 500 and answer.error_code is None


def foreign_reason(answer: Answer) -> str:
    return (
        f"not a pyraftkv endpoint (HTTP {answer.status} without a pyraftkv error; "
        "a peer_url instead of a client_url?)"
    )


@dataclass(slots=True)
class _Progress:
    """What the attempts of one request have found out so far."""

    errors: dict[str, str] = field(default_factory=dict)
    foreign: set[str] = field(default_factory=set)
    """Endpoints that answered like something other than a pyraftkv node: not asked again."""
    maybe_applied: bool = False
    saw_no_leader: bool = False
    failed_in_a_row: int = 0
    """Attempts that failed without reaching a node since the last back-off."""

    def record(self, url: str, reason: str) -> None:
        self.errors.pop(url, None)  # keep the dict in order of the latest failure
        self.errors[url] = reason

    def summary(self) -> str:
        if not self.errors:
            return "no attempt could be made"
        return "; ".join(f"{url}: {reason}" for url, reason in self.errors.items())


class Dispatcher:
    """Sends requests for one `AsyncKV`: routing, hedging, retries, leader learning."""

    def __init__(
        self,
        router: EndpointRouter,
        writes: WriteSession,
        settings: AttemptSettings,
        http: Callable[[], aiohttp.ClientSession],
        rng: random.Random,
        sleep: Callable[[float], Awaitable[object]],
        credentials: Credentials | None = None,
    ) -> None:
        self.router = router
        self.writes = writes
        self.settings = settings
        self.credentials = credentials or Credentials()
        self.credentials.bind(self._fetch_token)
        self._http = http
        self._rng = rng
        self._sleep = sleep
        self._ids_asked: set[str] = set()

    async def call(self, request: Request, budget: float) -> Answer:
        """`attempt` with this client's token (kvstore.client.credentials): one is asked
        for first when needed, and a refusal that a new token fixes is retried once with
        one. A refused request did nothing, so sending it again is safe."""
        credentials = self.credentials
        if request.anonymous or not credentials.active:
            return await self.attempt(request, budget)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        await credentials.ready(budget)
        answer = await self.attempt(request, deadline - loop.time())
        if credentials.refused(answer) and loop.time() < deadline:
            await credentials.ready(deadline - loop.time())
            answer = await self.attempt(request, deadline - loop.time())
        return answer

    async def _fetch_token(self, body: bytes, budget: float) -> Answer:
        return await self.attempt(Request("POST", TOKEN_PATH, body=body, anonymous=True), budget)

    async def attempt(self, request: Request, budget: float) -> Answer:
        """Send with retries until a definite answer, the attempt budget or `budget` seconds.

        Retried: connection failures and foreign answers (moving to the next node), 503
        (never proposed, so always safe) and, for writes, timeouts, lost connections and
        504 (possibly proposed; safe only because every attempt keeps the seq).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        hedge_delay = min(self.settings.hedge_delay, budget / 3)
        attempts = 1 if request.pinned else self.settings.retry.max_attempts
        progress = _Progress()
        inflight: dict[asyncio.Task[Answer], tuple[str, float]] = {}
        started = 0
        if request.once and not request.pinned and self.router.leader_url is None:
            await self._find_leader(min(hedge_delay, budget / 2))
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                if not inflight:
                    if started >= attempts or progress.foreign >= set(self.router.endpoints):
                        break
                    if started and await self._back_off(progress, started, deadline) is False:
                        break
                    if started and deadline - loop.time() < MIN_RETRY_S:
                        break
                    started += self._launch(request, inflight, deadline, progress.foreign)
                    continue
                newest = max(start for _, start in inflight.values())
                busy = {url for url, _ in inflight.values()} | progress.foreign
                idle = any(url not in busy for url in self.router.endpoints)
                can_hedge = started < attempts and idle and not (request.pinned or request.once)
                wake = min(deadline, newest + hedge_delay) if can_hedge else deadline
                done, _ = await asyncio.wait(
                    inflight, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if can_hedge and loop.time() < deadline:
                        started += self._launch(request, inflight, deadline, progress.foreign)
                    continue
                for task in done:
                    url, _ = inflight.pop(task)
                    answer = await self._judge(url, task, request, progress, deadline)
                    if answer is not None:
                        return answer
                if request.once and progress.maybe_applied:
                    break
            answer = await self._settle(inflight, request, progress, deadline)
            if answer is not None:
                return answer
        finally:
            await self._abandon(inflight, request, progress)
        raise self._failure(progress, budget)

    async def _settle(
        self,
        inflight: dict[asyncio.Task[Answer], tuple[str, float]],
        request: Request,
        progress: _Progress,
        deadline: float,
    ) -> Answer | None:
        """At the deadline, give the attempts still running a moment to end by their own
        timeouts (set to the same deadline), so each is judged for what it was (refused:
        surely not sent) rather than cut off (maybe sent)."""
        if not inflight:
            return None
        done, _ = await asyncio.wait(inflight, timeout=SETTLE_S)
        for task in done:
            url, _ = inflight.pop(task)
            answer = await self._judge(url, task, request, progress, deadline)
            if answer is not None:
                return answer
        return None

    async def _abandon(
        self,
        inflight: dict[asyncio.Task[Answer], tuple[str, float]],
        request: Request,
        progress: _Progress,
    ) -> None:
        """Cancel the attempts still running. Each may have reached its node, and so may
        one that finished unjudged at the deadline (unless it surely was not sent)."""
        now = asyncio.get_running_loop().time()
        for task, (url, start) in inflight.items():
            if not task.done():
                task.cancel()
                if url not in progress.errors or now - start >= CUT_SHORT_S:
                    progress.record(url, f"no answer within {seconds(now - start)} s")
                if url != self.router.leader_url:
                    self.router.failed(url)  # the next call starts elsewhere
            elif task.cancelled() or isinstance(task.exception(), NotSent):
                continue
            else:
                progress.record(url, "answered too late")
            progress.maybe_applied = progress.maybe_applied or request.may_take_effect
        if inflight:
            await asyncio.wait(inflight)
        for task in inflight:  # retrieved, so asyncio does not log them as lost
            if not task.cancelled():
                task.exception()

    async def _find_leader(self, timeout: float) -> None:
        """Ask every node's /v1/status at once and learn the leader from the answers.

        Used before a request that must not be hedged (a membership change), so that a
        hung node first in the list is not the one it waits for.
        """

        async def ask(url: str) -> None:
            try:
                answer = await send(
                    self._http(),
                    "GET",
                    url,
                    "/v1/status",
                    body=None,
                    headers=self.credentials.header(),
                    timeout=timeout,
                    connect_timeout=min(timeout, self.settings.connect_timeout),
                )
            except (NotSent, MaybeSent):
                return
            if answer.status == 200 and not is_foreign(answer):
                self.learn_status(answer)

        await asyncio.gather(*(ask(url) for url in list(self.router.endpoints)))

    def _launch(
        self,
        request: Request,
        inflight: dict[asyncio.Task[Answer], tuple[str, float]],
        deadline: float,
        foreign: set[str],
    ) -> int:
        """Start one attempt on a node that has none running; 1 if one was started."""
        busy = {url for url, _ in inflight.values()} | foreign
        url = request.pinned or self.router.pick(stale=request.stale, avoid=busy)
        if url in busy:
            return 0
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        headers = {} if request.anonymous else self.credentials.header()
        if request.seq is not None:
            headers.update(self.writes.headers(request.seq))
        task = loop.create_task(
            send(
                self._http(),
                request.method,
                url,
                request.path,
                body=request.body,
                headers=headers,
                timeout=remaining
                if request.slow
                else min(self.settings.attempt_timeout, remaining),
                connect_timeout=self.settings.connect_timeout,
            )
        )
        inflight[task] = (url, loop.time())
        return 1

    async def _back_off(self, progress: _Progress, started: int, deadline: float) -> bool:
        """Wait before the next round, except while untried nodes remain after refusals."""
        if progress.failed_in_a_row % len(self.router.endpoints) != 0:
            return True
        remaining = deadline - asyncio.get_running_loop().time()
        await self._sleep(min(self.settings.retry.delay(started - 1, self._rng), remaining))
        return asyncio.get_running_loop().time() < deadline

    async def _judge(
        self,
        url: str,
        task: asyncio.Task[Answer],
        request: Request,
        progress: _Progress,
        deadline: float,
    ) -> Answer | None:
        """The answer when it is definite; otherwise record why not and return None."""
        try:
            answer = task.result()
        except NotSent as exc:
            progress.failed_in_a_row += 1
            progress.record(url, exc.reason)
            self.router.failed(url)
            return None
        except MaybeSent as exc:
            progress.failed_in_a_row = 0
            progress.maybe_applied = progress.maybe_applied or request.may_take_effect
            progress.record(url, exc.reason)
            self.router.failed(url)
            return None
        if is_foreign(answer):
            progress.foreign.add(url)
            progress.failed_in_a_row += 1
            progress.record(url, foreign_reason(answer))
            self.router.failed(url)
            return None
        progress.failed_in_a_row = 0
        await self._learn_leader(url, answer, request, deadline)
        if answer.status == 503:
            progress.saw_no_leader = answer.error_code == "no_leader" or progress.saw_no_leader
            progress.record(url, answer.error_message)
            if answer.headers.get(LEADER_HEADER) is None or self.router.leader_url == url:
                self.router.failed(url)  # it knows no leader, or is a leader going away
            return None
        if answer.status >= 500:
            progress.maybe_applied = progress.maybe_applied or request.may_take_effect
            progress.record(url, answer.error_message)
            self.router.failed(url)
            return None
        return answer

    def _failure(self, progress: _Progress, budget: float) -> Exception:
        what, within = progress.summary(), f"within {seconds(budget)} s"
        if progress.maybe_applied:
            return OutcomeUnknown(
                f"not confirmed {within}, it may or may not have taken effect: {what}"
            )
        if progress.saw_no_leader:
            return NoLeader(
                f"no leader available within {seconds(budget)} s: {what}",
                status=503,
                code="no_leader",
            )
        return ClusterUnavailable(UNAVAILABLE + what)

    async def _learn_leader(
        self, url: str, answer: Answer, request: Request, deadline: float
    ) -> None:
        """Follow `X-KV-Leader`; an id this client cannot map yet costs one /v1/status."""
        leader_id = answer.headers.get(LEADER_HEADER)
        if not leader_id or self.router.learn_leader(leader_id):
            return
        if leader_id in self._ids_asked or request.pinned:
            return  # asked once already; do not pay a status call on every request
        self._ids_asked.add(leader_id)
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        try:
            reply = await send(
                self._http(),
                "GET",
                url,
                "/v1/status",
                body=None,
                headers=self.credentials.header(),
                timeout=min(self.settings.hedge_delay, remaining),
                connect_timeout=self.settings.connect_timeout,
            )
        except (NotSent, MaybeSent):
            return
        if reply.status == 200:
            self.learn_status(reply)
            self.router.learn_leader(leader_id)

    def learn_status(self, answer: Answer) -> NodeStatus:
        status = NodeStatus.from_json(answer.endpoint, answer.json())
        self.router.learn_status(status)
        return status
