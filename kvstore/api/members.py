"""Membership and backup endpoints: `/v1/members` and `/v1/snapshot`.

The leader does the work; a follower forwards like a write. Adding a member is the
dissertation's two steps: ADD_LEARNER (it replicates without voting), wait until it
has caught up with the commit index of that moment, then PROMOTE, so that a new, empty
voter never stalls commits. Removing the leader first hands leadership to the most
up-to-date other voter, which then removes it. One change at a time: a second request
while one is running answers 409 `membership_change_in_progress`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from consensus import ConfChange, ConfChangeType, InvalidConfChange, NotLeader, ProposalDropped
from kvstore.api.common import CONSISTENCY, RUNTIME_KEY, error, strict, text
from kvstore.api.forwarding import forward_to_leader
from kvstore.config import ConfigError, parse_url, valid_node_id
from kvstore.runtime.backup import encode_backup
from kvstore.runtime.node import NodeRuntime
from kvstore.runtime.requests import (
    ProposalOverwritten,
    ProposalTimeout,
    ReadAborted,
    RuntimeStopped,
)
from kvstore.state.members import MemberAddress, encode_member_context

log = logging.getLogger(__name__)

MEMBERS_PATH = "/v1/members"
SNAPSHOT_PATH = "/v1/snapshot"
ADD_TIMEOUT_S = 60.0
"""Default deadline of an add (catch-up included); `?timeout=SECONDS` overrides it."""
REMOVE_TIMEOUT_S = 30.0
UNREACHABLE_AFTER_S = 10.0
"""How long a new learner may stay unreachable before an add reports it: long enough for
a node started a moment before the add to come up on a slow machine (the peer link
retries with back-off meanwhile, so one refused connection at the start is forgiven)."""
LOCK_KEY = web.AppKey("membership_lock", asyncio.Lock)

Action = Callable[[], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """An answer decided inside an action (an error response to return as is)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _timeout(request: web.Request, default: float) -> float:
    raw = request.query.get("timeout")
    try:
        value = float(raw) if raw is not None else default
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise Refused(error(400, "bad_timeout", "timeout must be seconds in 0.1..3600"))
    return value


async def _on_leader(
    request: web.Request,
    runtime: NodeRuntime,
    body: bytes,
    deadline: float,
    action: Action,
    is_write: bool = True,
) -> web.StreamResponse:
    """Run `action` if this node leads, else forward to the leader (as writes are)."""
    while True:
        if runtime.is_leader:
            try:
                return await action()
            except NotLeader:
                continue  # lost office meanwhile: forward to whoever leads now
            except Refused as exc:
                return exc.response
        answer = await forward_to_leader(
            request, runtime, body, deadline, is_write=is_write, unserved="nothing was changed"
        )
        if answer is not None:
            return answer


async def _change(runtime: NodeRuntime, change: ConfChange, deadline: float) -> None:
    """Propose one change and wait for it to apply; map failures to answers."""
    loop = asyncio.get_running_loop()
    # The core refuses while an earlier change is not yet applied, or (after an election)
    # before the leader committed an entry of its term. Our own changes are serialized
    # by the lock, so such a refusal clears within a round trip or two: wait a little.
    patience = min(deadline, loop.time() + 4 * runtime.election_timeout_s)
    while True:
        try:
            await runtime.propose_conf_change(change, max(0.1, deadline - loop.time()))
            return
        except ProposalDropped as exc:
            if loop.time() < patience:
                await asyncio.sleep(runtime.tuning.tick_ms / 1000)
                continue
            raise Refused(error(409, "membership_change_in_progress", str(exc))) from None
        except InvalidConfChange as exc:
            raise Refused(error(409, "bad_member", str(exc))) from None
        except ProposalOverwritten:
            if loop.time() < deadline:
                continue  # never committed: proposing again is safe
            raise Refused(
                error(503, "no_leader", "the change was dropped by a leader change")
            ) from None
        except (ProposalTimeout, RuntimeStopped) as exc:
            raise Refused(
                error(
                    504, "timeout", f"{change.type.name} {change.node_id}: outcome unknown: {exc}"
                )
            ) from None


def _member_rows(runtime: NodeRuntime) -> list[dict[str, Any]]:
    membership = runtime.node.membership
    matches = runtime.replication()
    rows = []
    for node_id in membership.members():
        node = runtime.membership.view.members.get(node_id)
        row: dict[str, Any] = {
            "id": node_id,
            "role": "voter" if node_id in membership.voters else "learner",
            "client_url": node.client_url if node else None,
            "peer_url": node.peer_url if node else None,
        }
        if node_id in matches:
            row["match_index"] = matches[node_id]
        rows.append(row)
    return rows


def _members_json(runtime: NodeRuntime, **extra: Any) -> web.Response:
    return web.json_response(
        {
            "leader": runtime.leader_id,
            "answered_by": runtime.node_id,
            "commit_index": runtime.node.commit_index,
            "members": _member_rows(runtime),
            **extra,
        }
    )


# ---------------------------------------------------------------------- GET / POST /v1/members


async def _confirm_leadership(runtime: NodeRuntime, deadline: float) -> None:
    """A ReadIndex round, as linearizable reads do, so a deposed leader that has not
    heard of its successor does not answer for the membership. NotLeader propagates
    (the caller forwards)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            await runtime.barrier(max(0.01, deadline - loop.time()))
            return
        except ReadAborted:
            if loop.time() < deadline:
                continue
            raise Refused(error(503, "no_leader", "leadership changed; retry")) from None
        except RuntimeStopped as exc:
            raise Refused(error(503, "no_leader", str(exc))) from None
        except TimeoutError:
            raise Refused(
                error(504, "timeout", "leadership was not confirmed by a quorum in time")
            ) from None


async def handle_members(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    loop = asyncio.get_running_loop()
    if request.method == "GET":
        if request.query.get("consistency") == "stale":
            return _members_json(runtime, stale=True)

        async def listing() -> web.StreamResponse:
            await _confirm_leadership(runtime, deadline)
            return _members_json(runtime, stale=False)

        deadline = loop.time() + runtime.tuning.request_timeout_ms / 1000
        return await _on_leader(request, runtime, b"", deadline, listing, is_write=False)
    try:
        timeout = _timeout(request, ADD_TIMEOUT_S)
        body = await request.read()
        node_id, address = _parse_member(body)
    except Refused as exc:
        return exc.response
    deadline = loop.time() + timeout

    async def add() -> web.StreamResponse:
        return await _add(request, runtime, node_id, address, deadline)

    return await _on_leader(request, runtime, body, deadline, add)


def _parse_member(body: bytes) -> tuple[str, MemberAddress]:
    try:
        doc = json.loads(body or b"null")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise Refused(error(400, "bad_member", 'expected JSON {"id", "client_url", "peer_url"}'))
    node_id, client_url, peer_url = doc.get("id"), doc.get("client_url"), doc.get("peer_url")
    if not valid_node_id(node_id):
        raise Refused(error(400, "bad_member", "id must be 1 to 64 of A-Z a-z 0-9 _ -"))
    if not isinstance(client_url, str) or not isinstance(peer_url, str):
        raise Refused(error(400, "bad_member", "client_url and peer_url are required strings"))
    try:
        parse_url(client_url)
        parse_url(peer_url)
    except ConfigError as exc:
        raise Refused(error(400, "bad_member", str(exc))) from None
    assert isinstance(node_id, str)
    return node_id, MemberAddress(client_url.rstrip("/"), peer_url.rstrip("/"))


async def _add(
    request: web.Request,
    runtime: NodeRuntime,
    node_id: str,
    address: MemberAddress,
    deadline: float,
) -> web.StreamResponse:
    lock = request.app[LOCK_KEY]
    if lock.locked():
        raise Refused(error(409, "membership_change_in_progress", "another change is running"))
    async with lock:
        membership = runtime.node.membership
        known = runtime.membership.view.members.get(node_id)
        same = known is not None and (known.client_url, known.peer_url) == (
            address.client_url,
            address.peer_url,
        )
        if node_id in membership and not same:
            raise Refused(error(409, "already_member", f"{node_id} is a member at other URLs"))
        if node_id in membership.voters:
            return _members_json(runtime, added=node_id, already=True)
        if node_id not in membership:
            _check_addresses_free(runtime, node_id, address)
            change = ConfChange(ConfChangeType.ADD_LEARNER, node_id, encode_member_context(address))
            await _change(runtime, change, deadline)
            log.info("added %s as a learner at %s; waiting for it to catch up", node_id, address)
        started = time.monotonic()
        await _wait_caught_up(runtime, node_id, deadline)
        await _change(runtime, ConfChange(ConfChangeType.PROMOTE, node_id), deadline)
        caught_up_s = round(time.monotonic() - started, 3)
        log.info("promoted %s to voter (caught up in %.1fs)", node_id, caught_up_s)
        return _members_json(runtime, added=node_id, caught_up_s=caught_up_s)


def _check_addresses_free(runtime: NodeRuntime, node_id: str, address: MemberAddress) -> None:
    for other in runtime.membership.view.members.values():
        if {other.client_url, other.peer_url} & {address.client_url, address.peer_url}:
            raise Refused(
                error(400, "bad_member", f"{node_id}'s URLs are already used by {other.id}")
            )


async def _wait_caught_up(runtime: NodeRuntime, node_id: str, deadline: float) -> None:
    """Until the learner's log reaches the leader's commit index as of now.

    A learner the leader has never reached for UNREACHABLE_AFTER_S (nothing listening
    there, the node not started) is refused at once rather than waited for: it could
    never catch up, and the operator should hear why.
    """
    loop = asyncio.get_running_loop()
    target = runtime.node.commit_index
    started = loop.time()
    while True:
        if not runtime.is_leader:
            raise NotLeader(runtime.leader_id)
        match = runtime.replication().get(node_id, 0)
        if match >= target:
            return
        link = runtime.transport.peer_status().get(node_id, {})
        if (
            match == 0
            and link.get("reachable") is False
            and loop.time() - started >= UNREACHABLE_AFTER_S
        ):
            peer_url = runtime.transport.peers().get(node_id, "?")
            raise Refused(
                error(
                    409,
                    "member_unreachable",
                    f"{node_id} is unreachable from the leader {runtime.node_id} at {peer_url} "
                    f"({link.get('last_error') or 'no connection'}); it was added as a "
                    "learner and stays one until it is started or removed",
                    state="learner",
                    peer_url=peer_url,
                )
            )
        if loop.time() >= deadline:
            raise Refused(
                error(
                    504,
                    "timeout",
                    f"{node_id} is a learner and has not caught up yet (match {match} of "
                    f"{target}); it keeps catching up: run the same add again to promote it",
                    state="learner",
                    match_index=match,
                    target_index=target,
                )
            )
        await asyncio.sleep(runtime.tuning.tick_ms / 1000)


# ---------------------------------------------------------------------- DELETE /v1/members/{id}


async def handle_member(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    node_id = request.match_info["node_id"]
    if request.method != "DELETE":
        return error(405, "method_not_allowed", "use DELETE /v1/members/{id}")
    try:
        timeout = _timeout(request, REMOVE_TIMEOUT_S)
    except Refused as exc:
        return exc.response
    deadline = asyncio.get_running_loop().time() + timeout

    async def remove() -> web.StreamResponse:
        return await _remove(request, runtime, node_id, deadline)

    return await _on_leader(request, runtime, b"", deadline, remove)


async def _remove(
    request: web.Request, runtime: NodeRuntime, node_id: str, deadline: float
) -> web.StreamResponse:
    if node_id not in runtime.node.membership:
        raise Refused(error(404, "not_a_member", f"{node_id} is not a member"))
    lock = request.app[LOCK_KEY]
    if lock.locked():
        raise Refused(error(409, "membership_change_in_progress", "another change is running"))
    async with lock:
        if node_id == runtime.node_id:
            await _hand_over(runtime, deadline)
            raise NotLeader(runtime.leader_id)  # the new leader removes us
        await _change(runtime, ConfChange(ConfChangeType.REMOVE, node_id), deadline)
        log.info("removed %s from the cluster", node_id)
        return _members_json(runtime, removed=node_id)


async def _hand_over(runtime: NodeRuntime, deadline: float) -> None:
    """Transfer leadership to the most up-to-date other voter before removing ourselves."""
    loop = asyncio.get_running_loop()
    others = [v for v in runtime.node.membership.voters if v != runtime.node_id]
    if not others:
        raise Refused(error(409, "bad_member", f"{runtime.node_id} is the last voter"))
    while runtime.is_leader:
        if loop.time() >= deadline:
            raise Refused(
                error(
                    503,
                    "leadership_transfer_failed",
                    "could not hand leadership over in time; nothing was removed (retry)",
                )
            )
        matches = runtime.replication()
        target = max(others, key=lambda v: (matches.get(v, 0), v))
        log.info("removing the leader: handing leadership to %s first", target)
        runtime.transfer_leadership(target)
        until = min(deadline, loop.time() + 2 * runtime.election_timeout_s)
        while runtime.is_leader and loop.time() < until:
            await asyncio.sleep(runtime.tuning.tick_ms / 1000)


# ---------------------------------------------------------------------- GET /v1/snapshot


async def handle_snapshot(request: web.Request) -> web.StreamResponse:
    """A consistent backup: taken on the leader after a ReadIndex barrier, so it holds
    every write acknowledged before the request (see kvstore.backup for the format)."""
    runtime = request.app[RUNTIME_KEY]
    loop = asyncio.get_running_loop()
    timeout = max(30.0, runtime.tuning.request_timeout_ms / 1000)
    deadline = loop.time() + timeout

    async def take() -> web.StreamResponse:
        try:
            await runtime.barrier(max(0.1, deadline - loop.time()))
        except (ReadAborted, RuntimeStopped, TimeoutError) as exc:
            raise Refused(error(503, "no_leader", f"could not confirm leadership: {exc}")) from None
        view = runtime.sm.snapshot_view()  # and, in the same step, its membership
        index = view.applied_index
        membership = runtime.membership.applied
        header = {
            "index": index,
            "term": runtime.node.log.term(index),
            "cluster": runtime.cluster.name,
            "taken_from": runtime.node_id,
            "voters": list(membership.voters),
            "learners": list(membership.learners),
            "revision": view.revision,
            "keys": view.key_count(),
        }
        blob = await loop.run_in_executor(None, lambda: encode_backup(header, view.serialize()))
        return web.Response(
            body=blob,
            content_type="application/octet-stream",
            headers={"X-KV-Snapshot-Index": str(index)},
        )

    return await _on_leader(request, runtime, b"", deadline, take, is_write=False)


def add_member_routes(app: web.Application) -> None:
    app[LOCK_KEY] = asyncio.Lock()
    timeout = {"timeout": text}  # its value is checked by _timeout
    app.router.add_route("GET", MEMBERS_PATH, strict(handle_members, {"consistency": CONSISTENCY}))
    app.router.add_route("POST", MEMBERS_PATH, strict(handle_members, timeout))
    app.router.add_route("DELETE", MEMBERS_PATH + "/{node_id}", strict(handle_member, timeout))
    app.router.add_get(SNAPSHOT_PATH, strict(handle_snapshot))
