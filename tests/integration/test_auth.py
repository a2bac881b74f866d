"""Users, roles and tokens on a real three-node cluster (issue 11), with raw HTTP.

- Every route of make_client_app (walked from its router, so a route added later is
  in this test from its first day) refuses a request without a valid token, except
  the listed open ones; and every route has a rule in kvstore.api.access.RULES.
- A role can do exactly what it is granted: reads and writes outside its prefix 403,
  ranges and watches filtered to its keys, administration refused; through followers
  too (the token travels with the forwarded request).
- Expired, tampered and superseded (password changed) tokens are refused.
- A permission revoked before a write commits stops the write: with the followers
  paused, the revoke and then the write are proposed (both admitted, neither
  committed); once the followers resume, both commit in that order and the write,
  checked at apply time against the revoke's state, answers 403 and changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from kvstore.api.access import OPEN, RULES
from kvstore.api.app import make_client_app
from tests.integration.harness import Cluster, Reply, request, wait_until

TOKEN_TTL = 4
PASSWORDS = {"root": "root-pw", "alice": "alice-pw", "reader": "reader-pw"}


def _json(reply: Reply) -> Any:
    return json.loads(reply.body)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _raw(
    cluster: Cluster, headers: dict[str, str], node: str, method: str, path: str, body: bytes = b""
) -> Reply:
    """A request with exactly `headers` (none of the cluster's own)."""
    return request(cluster.url(node), method, path, body=body or None, headers=headers)


class Auth:
    """The cluster plus fresh tokens (they live TOKEN_TTL seconds only)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def token(self, user: str, node: str = "n1") -> str:
        body = json.dumps({"user": user, "password": PASSWORDS[user]}).encode()
        reply = self.cluster.http(node, "POST", "/v1/auth/token", body=body, headers={})
        assert reply.status == 200, reply.body
        answer = _json(reply)
        assert answer["user"] == user and answer["ttl"] == TOKEN_TTL
        return str(answer["token"])

    def call(self, user: str, method: str, path: str, node: str = "n1", **kw: Any) -> Reply:
        return self.cluster.http(node, method, path, headers=_bearer(self.token(user)), **kw)


def _setup(cluster: Cluster) -> None:
    """Users and roles while the cluster is open, then enable."""

    nodes = list(cluster.nodes) * 10  # round robin: followers forward auth changes too

    def ok(method: str, path: str, body: dict[str, str] | None = None) -> None:
        data = None if body is None else json.dumps(body).encode()
        reply = cluster.http(nodes.pop(), method, path, body=data)
        assert reply.status == 200, (method, path, reply.body)

    for user, password in PASSWORDS.items():
        ok("PUT", f"/v1/auth/users/{user}", {"password": password})
    ok("PUT", "/v1/auth/users/root/roles/root")
    ok("PUT", "/v1/auth/roles/app")
    ok("POST", "/v1/auth/roles/app/permissions?access=readwrite&prefix=app/")
    ok("PUT", "/v1/auth/users/alice/roles/app")
    ok("PUT", "/v1/auth/roles/ro")
    ok("POST", "/v1/auth/roles/ro/permissions?access=read&prefix=app/")
    ok("PUT", "/v1/auth/users/reader/roles/ro")
    for key in ("app/a", "other/b"):
        assert cluster.put("n1", key, b"seed").status == 200
    ok("POST", "/v1/auth/enable")
    # Every node applies the enable (the token endpoint reads the local state).
    for node in cluster.nodes:
        wait_until(
            lambda n=node: _json(cluster.http(n, "GET", "/v1/auth/status"))["enabled"],
            10,
            f"{node} to apply the enable",
        )


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auth]:
    cluster = Cluster(
        tmp_path_factory.mktemp("auth"),
        tuning={"election_ticks": 200},  # the revoke test pauses followers for a moment
        extra_toml=f"[auth]\ntoken_ttl = {TOKEN_TTL}\n",
    )
    cluster.start()
    try:
        cluster.wait_healthy()
        _setup(cluster)
        a = Auth(cluster)
        cluster.headers = _bearer(a.token("root"))
        yield a
    finally:
        cluster.stop_all()


# ------------------------------------------------------------------ every route

_PLACEHOLDERS = {
    "key": "app/a",
    "name": "alice",
    "id": "1",
    "node_id": "n9",
    "role": "app",
}


def _client_routes() -> list[tuple[str, str]]:
    """(method, canonical path) of every client route, methods of '*' routes spelled out."""
    app = make_client_app(object(), 1024)  # type: ignore[arg-type]  # routes only
    routes = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        methods = ["GET", "PUT", "POST", "DELETE"] if route.method == "*" else [route.method]
        routes.update((m, canonical) for m in methods if m != "HEAD")
    return sorted(routes)


def _concrete(canonical: str) -> str:
    return re.sub(r"\{(\w+)[^}]*\}", lambda m: _PLACEHOLDERS[m.group(1)], canonical)


def test_every_route_has_a_rule() -> None:
    missing = [c for _, c in _client_routes() if c not in RULES and c not in OPEN]
    assert not missing, f"routes without an access rule in kvstore.api.access.RULES: {missing}"


def test_no_route_answers_without_a_valid_token(auth: Auth) -> None:
    cluster = auth.cluster
    routes = _client_routes()
    assert len(routes) > 40
    stale = auth.token("alice")
    payload, signature = stale.split(".")
    tampered = f"{payload}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}"
    checked = 0
    open_routes = [(m, c) for m, c in routes if c in OPEN]
    for method, canonical in routes:
        path = _concrete(canonical)
        if canonical in OPEN:
            reply = cluster.http("n2", method, path, headers={"Authorization": ""})
            assert reply.status != 401, (method, path, reply.body)
            continue
        for headers, code in (
            ({}, "auth_required"),
            (_bearer("not-a-token"), "bad_token"),
            (_bearer(tampered), "bad_token"),
            ({"Authorization": "Basic cm9vdDpyb290LXB3"}, "bad_token"),
        ):
            reply = _raw(cluster, headers, "n2", method, path)
            assert reply.status == 401, (method, path, headers, reply.body)
            assert _json(reply)["error"] == code, (method, path, reply.body)
            checked += 1
    assert checked == 4 * (len(routes) - len(open_routes))
    # The open ones: health, the auth status, the token endpoint itself.
    assert {c for _, c in routes if c in OPEN} == set(OPEN)


def test_expired_and_superseded_tokens_are_refused(auth: Auth) -> None:
    cluster = auth.cluster
    token = auth.token("alice")
    assert _raw(cluster, _bearer(token), "n3", "GET", "/v1/kv/app/a").status == 200

    def expired() -> bool:
        reply = _raw(cluster, _bearer(token), "n3", "GET", "/v1/kv/app/a")
        return reply.status == 401 and _json(reply)["error"] == "token_expired"

    wait_until(expired, TOKEN_TTL + 3, "the token to expire", interval=0.2)
    # A password change refuses the tokens of the old password, on every node.
    old = auth.token("reader")
    body = json.dumps({"password": "reader-pw2"}).encode()
    changed = auth.call("reader", "POST", "/v1/auth/users/reader/password", body=body)
    assert changed.status == 200, changed.body
    PASSWORDS["reader"] = "reader-pw2"
    for node in cluster.nodes:
        wait_until(
            lambda n=node: _raw(cluster, _bearer(old), n, "GET", "/v1/kv/app/a").status == 401,
            5,
            f"{node} to refuse the old token",
        )
    assert auth.call("reader", "GET", "/v1/kv/app/a", node="n3").status == 200


# ------------------------------------------------------------------ exactly what is granted


def test_a_role_does_exactly_what_it_is_granted(auth: Auth) -> None:
    for node in auth.cluster.nodes:  # followers forward with the caller's token
        assert auth.call("alice", "PUT", "/v1/kv/app/x", node=node, body=b"1").status == 200
        assert auth.call("alice", "GET", "/v1/kv/app/a", node=node).status == 200
        denied = auth.call("alice", "PUT", "/v1/kv/other/x", node=node, body=b"1")
        assert denied.status == 403 and _json(denied)["error"] == "permission_denied"
        assert auth.call("alice", "GET", "/v1/kv/other/b", node=node).status == 403
        assert auth.call("alice", "DELETE", "/v1/kv/other/b", node=node).status == 403
    assert auth.call("reader", "GET", "/v1/kv/app/x").status == 200
    assert auth.call("reader", "PUT", "/v1/kv/app/x", body=b"2").status == 403
    assert auth.call("root", "GET", "/v1/kv/app/x").body == b"1"
    assert auth.call("root", "GET", "/v1/kv/other/x").status == 404  # never written

    # Ranges: filtered to readable keys; wholly outside: 403.
    everything = _json(auth.call("alice", "GET", "/v1/kv/?prefix="))
    assert [kv["key"] for kv in everything["kvs"]] == ["app/a", "app/x"]
    assert auth.call("alice", "GET", "/v1/kv/?prefix=other/").status == 403
    root_view = _json(auth.call("root", "GET", "/v1/kv/?prefix="))
    assert {"app/a", "app/x", "other/b"} <= {kv["key"] for kv in root_view["kvs"]}

    # Transactions: every key they touch.
    compare_other = {"compare": [{"key": "other/b", "target": "version", "op": ">", "value": 0}]}
    put_app = {"success": [{"put": {"key": "app/t", "value": "dA=="}}]}
    txn = auth.call("alice", "POST", "/v1/txn", body=json.dumps(put_app).encode())
    assert txn.status == 200, txn.body
    mixed = json.dumps({**compare_other, **put_app}).encode()
    assert auth.call("alice", "POST", "/v1/txn", body=mixed).status == 403
    read_other = {"success": [{"range": {"prefix": "other/"}}]}
    assert auth.call("alice", "POST", "/v1/txn", body=json.dumps(read_other).encode()).status == 403

    # Administration and locks outside the prefix.
    for method, path in (
        ("GET", "/v1/members"),
        ("GET", "/v1/snapshot"),
        ("GET", "/v1/auth/users"),
        ("PUT", "/v1/auth/roles/mine"),
        ("POST", "/v1/auth/disable"),
        ("GET", "/v1/auth/users/root"),
    ):
        assert auth.call("alice", method, path).status == 403, (method, path)
    assert _json(auth.call("alice", "GET", "/v1/auth/users/alice"))["roles"] == ["app"]
    assert auth.call("alice", "GET", "/v1/auth/roles/app").status == 200
    lease = _json(auth.call("alice", "POST", "/v1/leases?ttl=30"))["id"]
    assert auth.call("alice", "POST", f"/v1/locks/other-lock?lease={lease}").status == 403
    assert auth.call("alice", "POST", f"/v1/locks/app/lock?lease={lease}").status == 200
    assert auth.call("root", "GET", "/v1/members").status == 200
    assert auth.call("alice", "GET", "/v1/status").status == 200
    view = _json(auth.call("alice", "GET", "/v1/cluster", node="n3"))  # asks every member
    assert [m["reachable"] for m in view["members"]] == [True, True, True], view


def test_a_watch_sees_only_readable_keys(auth: Auth) -> None:
    revision = int(auth.call("root", "GET", "/v1/kv/app/a").headers["X-KV-Revision"])
    for key in ("other/w", "app/w", "other/w2"):
        assert auth.call("root", "PUT", f"/v1/kv/{key}", body=b"w").status == 200
    wait_until(
        lambda: (
            auth.call("root", "GET", "/v1/kv/other/w2?consistency=stale", node="n2").status == 200
        ),
        5,
        "n2 to apply the writes",
    )
    path = f"/v1/watch?prefix=&start_revision={revision + 1}&wait=1"
    seen = _json(auth.call("alice", "GET", path, node="n2"))
    assert [e["key"] for e in seen["events"]] == ["app/w"]
    assert auth.call("alice", "GET", "/v1/watch?prefix=other/&wait=0").status == 403
    everything = _json(auth.call("root", "GET", path, node="n2"))
    assert [e["key"] for e in everything["events"]] == ["other/w", "app/w", "other/w2"]


# ------------------------------------------------------------------ revoke before commit


def test_a_revoke_ahead_of_a_write_in_the_log_stops_it(auth: Auth) -> None:
    cluster = auth.cluster
    cluster.headers = _bearer(auth.token("root"))
    leader = cluster.wait_leader()
    followers = [n for n in cluster.nodes if n != leader]
    assert auth.call("alice", "PUT", "/v1/kv/app/r", node=leader, body=b"before").status == 200
    root_token, alice_token = auth.token("root"), auth.token("alice")

    def last_index() -> int:
        return int(
            _raw(cluster, _bearer(root_token), leader, "GET", "/v1/status").json()["last_index"]
        )

    revoke_path = "/v1/auth/roles/app/permissions?prefix=app/"
    with ThreadPoolExecutor(2) as pool:
        for node in followers:
            cluster.pause(node)
        try:
            before = last_index()
            revoke: Future[Reply] = pool.submit(
                _raw, cluster, _bearer(root_token), leader, "DELETE", revoke_path
            )
            wait_until(lambda: last_index() > before, 5, "the revoke to be proposed")
            proposed = last_index()
            write: Future[Reply] = pool.submit(
                _raw, cluster, _bearer(alice_token), leader, "PUT", "/v1/kv/app/r", b"after"
            )
            wait_until(lambda: last_index() > proposed, 5, "the write to be proposed")
        finally:
            for node in followers:
                cluster.resume(node)
        revoked, written = revoke.result(timeout=15), write.result(timeout=15)
    assert revoked.status == 200, revoked.body
    assert written.status == 403, written.body
    assert _json(written)["error"] == "permission_denied"
    assert auth.call("root", "GET", "/v1/kv/app/r", node=leader).body == b"before"
    # Give it back for the other tests.
    grant = "/v1/auth/roles/app/permissions?access=readwrite&prefix=app/"
    assert auth.call("root", "POST", grant).status == 200


def test_the_snapshot_carries_the_auth_state(auth: Auth) -> None:
    """A root-only backup holds users and roles (so a restored cluster keeps them)."""
    reply = auth.call("root", "GET", "/v1/snapshot")
    assert reply.status == 200 and b"alice" in reply.body and b"app/" in reply.body
