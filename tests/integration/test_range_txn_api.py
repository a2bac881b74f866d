"""Range reads, transactions, prev_revision and strict input over HTTP, against real
node processes (followers forward; pages of a range read show one revision)."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import msgpack

from tests.integration.harness import Cluster, Reply, wait_until


def _start(cluster_factory: type[Cluster], **tuning: int) -> Cluster:
    c: Cluster = cluster_factory(election_ticks=30, **tuning)  # type: ignore[call-arg]
    c.start()
    c.wait_healthy(timeout=20.0)
    return c


def _follower(c: Cluster) -> str:
    leader = c.wait_leader()
    return next(n for n in c.nodes if n != leader)


def _txn(c: Cluster, node: str, doc: dict[str, Any], **kw: Any) -> Reply:
    return c.http(node, "POST", "/v1/txn", body=json.dumps(doc).encode(), **kw)


def test_range_reads_revisions_and_transactions(cluster_factory: type[Cluster]) -> None:
    c = _start(cluster_factory, history_revisions=400)
    node = _follower(c)  # every request through a follower: forwarding included
    for i in range(5):
        assert c.put(node, f"orders%2F{i}", f"o{i}".encode()).status == 200
    assert c.put(node, "stock%2Fapple", b"3").status == 200

    got = c.get(node, "stock%2Fapple")
    assert got.status == 200 and got.body == b"3"
    assert got.headers["X-KV-Create-Revision"] == got.headers["X-KV-Mod-Revision"] == "6"
    assert got.headers["X-KV-Version"] == "1" and int(got.headers["X-KV-Revision"]) >= 6

    r = c.http(node, "GET", "/v1/kv/?prefix=orders/")
    doc = r.json()
    assert r.status == 200 and doc["count"] == 5 and doc["more"] is False
    assert [kv["key"] for kv in doc["kvs"]] == [f"orders/{i}" for i in range(5)]
    assert base64.b64decode(doc["kvs"][2]["value"]) == b"o2"
    assert doc["kvs"][2]["create_revision"] == 3 and r.headers["X-KV-Revision"] == "6"

    packed = c.http(
        node,
        "GET",
        "/v1/kv/?start=orders/1&end=orders/3&keys_only=true",
        headers={"Accept": "application/msgpack"},
    )
    assert packed.headers["Content-Type"].startswith("application/msgpack")
    assert [kv["key"] for kv in msgpack.unpackb(packed.body)["kvs"]] == ["orders/1", "orders/2"]
    assert "value" not in msgpack.unpackb(packed.body)["kvs"][0]
    newest = c.http(node, "GET", "/v1/kv/?prefix=orders/&sort=newest&limit=2").json()
    assert [kv["key"] for kv in newest["kvs"]] == ["orders/4", "orders/3"] and newest["more"]
    assert c.http(node, "GET", "/v1/kv/?prefix=&count_only").json()["count"] == 6

    # The order service: reserve stock and record the order in one transaction.
    order = {
        "compare": [
            {"key": "stock/apple", "target": "value", "op": "=", "text": "3"},
            {"key": "orders/9", "target": "exists", "op": "=", "value": False},
        ],
        "success": [
            {"put": {"key": "stock/apple", "text": "2"}},
            {"put": {"key": "orders/9", "value": base64.b64encode(b"apple").decode()}},
            {"range": {"prefix": "orders/", "count_only": True}},
        ],
        "failure": [{"get": {"key": "stock/apple"}}],
    }
    first = _txn(c, node, order)
    assert first.status == 200, first.body
    body = first.json()
    assert body["succeeded"] is True and body["revision"] == 7
    assert body["results"][0] == {"put": {"revision": 7, "version": 2}}
    assert body["results"][2]["range"]["count"] == 6
    again = _txn(c, node, order).json()
    assert again["succeeded"] is False and again["revision"] == 7
    assert base64.b64decode(again["results"][0]["range"]["kvs"][0]["value"]) == b"2"

    # A read at an older revision still shows the stock before the order.
    old = c.http(node, "GET", "/v1/kv/?prefix=stock/&revision=6").json()
    assert base64.b64decode(old["kvs"][0]["value"]) == b"3" and old["revision"] == 6


def test_prev_revision_cas_is_safe_against_aba_over_http(cluster: Cluster) -> None:
    node = cluster.wait_leader()
    put = cluster.http(node, "PUT", "/v1/kv/aba?prev_revision=0", body=b"A").json()
    assert cluster.http(node, "DELETE", "/v1/kv/aba").status == 200
    assert cluster.put(node, "aba", b"B").status == 200
    stale = cluster.http(node, "PUT", f"/v1/kv/aba?prev_revision={put['revision']}", body=b"C")
    assert stale.status == 409 and stale.json()["error"] == "revision_mismatch", stale.body
    assert cluster.get(node, "aba").body == b"B"
    # The typo of the issue: a misspelt precondition never becomes a blind write.
    typo = cluster.http(node, "PUT", "/v1/kv/aba?prev_versoin=1", body=b"D")
    assert typo.status == 400 and "prev_versoin" in typo.json()["message"]
    assert cluster.get(node, "aba").body == b"B"


def test_pages_of_a_range_show_one_revision_across_concurrent_writes(
    cluster_factory: type[Cluster],
) -> None:
    c = _start(cluster_factory, history_revisions=100_000)
    node = _follower(c)
    for i in range(60):
        assert c.put(node, f"p%2F{i:03d}", b"0").status == 200
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            c.put(node, f"p%2F{n % 90:03d}", str(n).encode())
            if n % 3 == 0:
                c.http(node, "DELETE", f"/v1/kv/p%2F{(n * 7) % 90:03d}")

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        pages: list[dict[str, Any]] = []
        url = "/v1/kv/?prefix=p/&limit=7"
        while True:
            page = c.http(node, "GET", url).json()
            pages.append(page)
            if not page["more"]:
                break
            url = f"/v1/kv/?prefix=p/&limit=7&continue={page['next']}"
        wait_until(lambda: c.status(node)["revision"] > pages[0]["revision"] + 20, 20, "writes")
    finally:
        stop.set()
        writer.join()
    revision = pages[0]["revision"]
    assert {p["revision"] for p in pages} == {revision}
    assert len(pages) > 5
    paged = [kv for p in pages for kv in p["kvs"]]
    whole = c.http(node, "GET", f"/v1/kv/?prefix=p/&revision={revision}").json()
    assert paged == whole["kvs"] and whole["count"] == len(paged) == pages[0]["count"]
    now = c.http(node, "GET", "/v1/kv/?prefix=p/").json()
    assert now["revision"] > revision and now["kvs"] != paged


def test_a_revision_beyond_the_history_is_410(cluster_factory: type[Cluster]) -> None:
    c = _start(cluster_factory, history_revisions=5)
    node = c.wait_leader()
    for i in range(12):
        c.put(node, "k", str(i).encode())
    r = c.http(node, "GET", "/v1/kv/?prefix=k&revision=2")
    assert r.status == 410 and r.json()["error"] == "compacted", r.body
    assert c.http(node, "GET", "/v1/kv/?prefix=k&revision=10").status == 200
    future = c.http(node, "GET", "/v1/kv/?prefix=k&revision=999")
    assert future.status == 400 and future.json()["error"] == "future_revision"


STRICT = [
    ("GET", "/v1/kv/k?consistncy=stale"),
    ("GET", "/v1/kv/k?consistency=stale&consistency=stale"),
    ("GET", "/v1/kv/k?consistency=maybe"),
    ("PUT", "/v1/kv/k?prev_version=1&prev_version=1"),
    ("PUT", "/v1/kv/k?prev_revision=-1"),
    ("DELETE", "/v1/kv/k?prev_versoin=1"),
    ("GET", "/v1/kv/?prefix=a&prefix=b"),
    ("GET", "/v1/kv/?prefix=a&limit=ten"),
    ("GET", "/v1/kv/?prefix=a&sort=random"),
    ("GET", "/v1/kv/?prefix=a&keys_only=maybe"),
    ("GET", "/v1/kv/?prefix=a&continue=garbage"),
    ("GET", "/v1/kv/?prefix=a&bogus=1"),
    ("POST", "/v1/txn?dry_run=1"),
    ("GET", "/v1/status?verbose=1"),
    ("GET", "/v1/members?x=1"),
    ("GET", "/v1/members?consistency=whatever"),
    ("POST", "/v1/members?timeout=5&timeout=6"),
    ("DELETE", "/v1/members/n9?force=1"),
    ("GET", "/v1/snapshot?x=1"),
]


def test_every_endpoint_refuses_unknown_repeated_and_malformed_parameters(
    cluster: Cluster,
) -> None:
    node = cluster.wait_leader()
    for method, path in STRICT:
        reply = cluster.http(node, method, path, body=b"{}" if method != "GET" else None)
        assert reply.status == 400, (method, path, reply.status, reply.body)
        doc = reply.json()
        name = path.split("?")[1].split("&")[-1].split("=")[0]
        assert name in doc["message"] or name in doc["error"], (path, doc)
    assert cluster.get(node, "k").status == 404  # nothing above was written
    for method, path, status in (
        ("GET", "/nope", 404),
        ("GET", "/v1/nope", 404),
        ("POST", "/v1/status", 405),
        ("GET", "/v1/txn", 405),
        ("PUT", "/v1/snapshot", 405),
    ):
        reply = cluster.http(node, method, path)
        assert reply.status == status and "error" in reply.json(), (method, path, reply.body)


BAD_TRANSACTIONS: list[tuple[dict[str, Any], int, str]] = [
    (
        {"success": [{"put": {"key": f"k{i}", "text": "v"}} for i in range(129)]},
        400,
        "too_many_operations",
    ),
    (
        {
            "success": [
                {"put": {"key": "big", "value": base64.b64encode(b"x" * 700_000).decode()}},
                {"put": {"key": "big2", "value": base64.b64encode(b"x" * 400_000).decode()}},
            ]
        },
        413,
        "txn_too_large",
    ),
    (
        {"success": [{"put": {"key": "a", "text": "1"}}, {"put": {"key": "a", "text": "2"}}]},
        400,
        "bad_txn",
    ),
    ({"compare": [{"key": "a", "target": "colour", "op": "=", "value": 1}]}, 400, "bad_txn"),
    ({"success": [{"frobnicate": {"key": "a"}}]}, 400, "bad_txn"),
    ({"sucess": []}, 400, "bad_txn"),
    ({"success": [{"put": {"key": "a", "text": "1", "lease": 0}}]}, 400, "bad_txn"),
    ({"success": [{"put": {"key": "a", "text": "1", "lease": "7"}}]}, 400, "bad_txn"),
    ({"success": [{"put": {"key": "a", "text": "1", "lease": True}}]}, 400, "bad_txn"),
    (
        {"success": [{"put": {"key": "a", "text": "1", "lease": 999999}}]},
        404,
        "lease_not_found",
    ),
]


def test_bad_transactions_are_refused_with_their_code_and_write_nothing(cluster: Cluster) -> None:
    """One cluster for every case (a cluster per case cost ~3 s each); each case is
    independent because none of them writes anything, which the end checks."""
    leader = cluster.wait_leader()
    revision_before = cluster.http(leader, "GET", "/v1/status").json()["revision"]
    for doc, status, code in BAD_TRANSACTIONS:
        reply = _txn(cluster, leader, doc)
        assert reply.status == status and reply.json()["error"] == code, (doc, reply.body)
    assert cluster.http(leader, "GET", "/v1/status").json()["revision"] == revision_before
    for key in ("a", "big", "big2", "k0"):
        assert cluster.get(leader, key).status == 404, key
