"""Attacks on the peer port of real clusters, as someone on the network would try them.

Every forged message (AppendEntries, AppendEntriesResponse, RequestVote, TimeoutNow,
InstallSnapshot chunks, a 410 'you were removed') is built with the project's own
codec and sent by a client that does not hold the cluster secret; afterwards the data,
the term and the leader must be exactly what they were, and every node still running.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from consensus.codec import encode_messages
from consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    TimeoutNow,
)
from consensus.types import Entry, Membership, SnapshotMeta
from kvstore.peers.auth import PeerAuth
from kvstore.peers.link import STREAM_CONTENT_TYPE, frame
from kvstore.peers.snapshot_transfer import encode_chunk
from kvstore.state.commands import Put, encode_command
from tests.integration.harness import Cluster, request, run_serve, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-tests-" + "x" * 24
SECRET_TOML = f'\n[peer_auth]\nsecret = "{SECRET}"\n'


def start(cluster_factory, extra: str = "") -> Cluster:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(election_ticks=60)
    cluster.extra_toml = extra
    cluster.write_config()
    cluster.start()
    try:
        cluster.wait_healthy(timeout=20.0)
    except TimeoutError:
        pytest.fail(f"cluster did not come up:\n{cluster.logs()}")
    return cluster


def snapshot_of(cluster: Cluster) -> dict[str, tuple[int, str | None, bytes]]:
    """Per running node: (term, leader, value of 'k' read locally)."""
    out = {}
    for node_id, node in cluster.nodes.items():
        if node.running:
            status = cluster.status(node_id)
            value = cluster.get(node_id, "k", stale=True).body
            out[node_id] = (status["term"], status["leader"], value)
    return out


def write_k(cluster: Cluster) -> tuple[str, str, int, int]:
    """Acknowledge k=v1 on every node; returns (leader, a follower, term, last index)."""
    leader = cluster.wait_leader()
    assert cluster.put(leader, "k", b"v1").status == 200
    wait_until(
        lambda: all(cluster.get(n, "k", stale=True).body == b"v1" for n in cluster.nodes),
        10,
        "k on every node",
    )
    follower = next(n for n in cluster.nodes if n != leader)
    status = cluster.status(leader)
    return leader, follower, status["term"], status["commit_index"]


def forged(leader: str, follower: str, term: int, last: int) -> list[tuple[str, Message]]:
    """(target node, message): the attacks of the issue, each aimed where it hurts."""
    evil = Entry(term, last + 1, encode_command(Put("k", b"evil")))
    later = Entry(term + 1, last + 1, encode_command(Put("k", b"evil")))
    return [
        (follower, AppendEntries(term, leader, follower, last, term, (evil,), last + 1)),
        (follower, AppendEntries(term + 1, leader, follower, last, term, (later,), last + 1)),
        (leader, AppendEntriesResponse(term, follower, leader, True, match_index=last + 50)),
        (follower, RequestVote(term + 10, follower, leader, last + 100, term + 10)),
        (leader, RequestVote(term + 10, follower, leader, last + 100, term + 10, transfer=True)),
        (follower, TimeoutNow(term, leader, follower)),
    ]


def stream(peer_url: str, head: dict[str, str], frames: list[bytes]) -> tuple[int, bytes]:
    """A hand-made message stream like kvstore.peers.link's; returns the answer."""
    host, port = peer_url.removeprefix("http://").rsplit(":", 1)
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /raft/messages HTTP/1.1\r\nHost: {host}\r\n{lines}"
            f"Content-Type: {STREAM_CONTENT_TYPE}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            for chunk in frames:
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the node refused the head and closed: the answer says why
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status_line, _, body = answer.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body


def send_all(cluster: Cluster, attacks: list[tuple[str, Message]], head_for) -> list[int]:  # type: ignore[no-untyped-def]
    """Each attack as a plain POST and as a stream; returns every status."""
    statuses = []
    for target, msg in attacks:
        peer = cluster.nodes[target].peer_url
        body = encode_messages([msg])
        headers = head_for(msg, target, body)
        statuses.append(request(peer, "POST", "/raft/messages", body=body, headers=headers).status)
        statuses.append(stream(peer, head_for(msg, target, None), [frame(body)])[0])
    return statuses


def snapshot_chunk(
    leader: str, follower: str, term: int, sender: str | None = None, total: int = 0
) -> bytes:
    """The first chunk of a forged snapshot (of `total` bytes: more than this chunk
    leaves a partial file on a receiver that accepts it)."""
    data = b"not a snapshot of this cluster" * 100
    meta = SnapshotMeta(10_000, term + 1, Membership((leader, follower)))
    msg = InstallSnapshot(term + 1, sender or leader, follower, meta)
    return encode_chunk(msg, total or len(data), hashlib.sha256(data).digest(), 0, data)


# ---------------------------------------------------------------------- cluster secret


def test_forged_messages_without_the_secret_change_nothing(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = start(cluster_factory, SECRET_TOML)
    leader, follower, term, last = write_k(cluster)
    before = snapshot_of(cluster)
    attacks = forged(leader, follower, term, last)

    def no_credentials(msg, target, body):  # type: ignore[no-untyped-def]
        return {"X-Raft-Cluster": "test", "X-Raft-Sender": msg.sender}

    wrong = PeerAuth("test", "", b"another secret, not this cluster's!!")

    def wrong_secret(msg, target, body):  # type: ignore[no-untyped-def]
        signer = PeerAuth("test", msg.sender, b"another secret, not this cluster's!!")
        return signer.request_headers(target, cluster.nodes[msg.sender].peer_url, body)[0]

    assert wrong.authenticated
    statuses = send_all(cluster, attacks, no_credentials) + send_all(cluster, attacks, wrong_secret)
    for sign in (no_credentials, wrong_secret):
        body = snapshot_chunk(leader, follower, term)
        headers = sign(InstallSnapshot(term, leader, follower, None), follower, body)  # type: ignore[arg-type]
        reply = request(cluster.nodes[follower].peer_url, "POST", "/raft/snapshot", body, headers)
        statuses.append(reply.status)
    assert snapshot_of(cluster) == before
    assert statuses == [401] * len(statuses)
    assert all(node.running for node in cluster.nodes.values())


def test_captured_requests_cannot_be_replayed_or_altered(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = start(cluster_factory, SECRET_TOML)
    leader, follower, term, last = write_k(cluster)
    before = snapshot_of(cluster)
    peer = cluster.nodes[follower].peer_url
    insider = PeerAuth("test", leader, SECRET.encode())  # what the real leader would send
    harmless = encode_messages([])
    headers, _ = insider.request_headers(follower, cluster.nodes[leader].peer_url, harmless)
    assert request(peer, "POST", "/raft/messages", harmless, headers).status == 204
    replayed = request(peer, "POST", "/raft/messages", harmless, headers)
    assert replayed.status == 401, "a replayed request was accepted"
    assert replayed.json()["error"] == "replayed_request"
    evil = encode_messages([forged(leader, follower, term, last)[0][1]])
    headers, _ = insider.request_headers(follower, cluster.nodes[leader].peer_url, harmless)
    altered = request(peer, "POST", "/raft/messages", evil, headers)
    assert (altered.status, altered.json()["error"]) == (401, "bad_signature")

    # a genuine stream head, then a frame injected without its MAC, or with another's
    head, tagger = insider.request_headers(follower, cluster.nodes[leader].peer_url)
    assert tagger is not None
    status, body = stream(peer, head, [frame(evil + b"\0" * 32)])
    assert status == 401 and b"bad_signature" in body
    status, body = stream(peer, head, [frame(harmless, tagger)])
    assert status == 401 and b"replayed_request" in body  # the head itself was seen
    other = PeerAuth("test", leader, b"another secret, not this cluster's!!")
    head2, _ = insider.request_headers(follower, cluster.nodes[leader].peer_url)
    assert stream(peer, head2, [frame(evil, other.request_headers(follower, "")[1])])[0] == 401
    assert snapshot_of(cluster) == before


def test_a_removal_answer_not_signed_with_the_secret_stops_no_one(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    """A man in the middle answers 410 for a member's address: the nodes that talk to it
    log and ignore it instead of exiting."""
    cluster = start(cluster_factory, SECRET_TOML)
    leader = cluster.wait_leader()
    victim = next(n for n in cluster.nodes if n != leader)
    assert cluster.stop(victim) == 0
    port = int(cluster.nodes[victim].peer_url.rsplit(":", 1)[1])
    with answering_410(port) as hits:
        wait_until(lambda: hits, 15, "a node to connect to the impostor")
        others = [n for n in cluster.nodes if n != victim]
        log = cluster.nodes[leader].log_path
        wait_until(
            lambda: (
                "ignoring an unauthenticated 'removed' answer" in log.read_text()
                or not cluster.nodes[leader].running
            ),
            15,
            "the leader to ignore the 410",
        )
        exited = {n: cluster.nodes[n].proc.poll() for n in others}  # type: ignore[union-attr]
        assert exited == {n: None for n in others}, "an impostor's 410 stopped a node"
        assert cluster.put(cluster.wait_leader(among=others), "after", b"1").status == 200


def test_an_unknown_sender_is_not_learned_without_the_secret(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = start(cluster_factory, SECRET_TOML)
    _, follower, term, _ = write_k(cluster)
    with answering_410(0) as hits:
        url = f"http://127.0.0.1:{hits.port}"
        msg = RequestVote(term, "evil", follower, 0, 0, pre_vote=True)
        head = {"X-Raft-Cluster": "test", "X-Raft-Sender": "evil", "X-Raft-From": url}
        body = encode_messages([msg])
        assert (
            request(cluster.nodes[follower].peer_url, "POST", "/raft/messages", body, head).status
            == 401
        )
        assert "evil" not in cluster.status(follower)["peers"]
        assert hits == []
    assert all(node.running for node in cluster.nodes.values())


# ---------------------------------------------------------------------- loopback, open


def test_open_mode_an_impostor_cannot_make_a_node_exit(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    """The issue's attack: a message from an unknown sender naming an address that
    answers 410. Even without a secret, only a member of the log or the file may say so."""
    cluster = start(cluster_factory)
    leader, follower, term, _ = write_k(cluster)
    with answering_410(0) as hits:
        url = f"http://127.0.0.1:{hits.port}"
        msg = AppendEntries(term - 1, "evil", follower, 0, 0, (), 0)  # stale: answered
        body = encode_messages([msg])
        reply = request(
            cluster.nodes[follower].peer_url, "POST", "/raft/messages", body, {"X-Raft-From": url}
        )
        assert reply.status == 204
        log = cluster.nodes[follower].log_path
        wait_until(
            lambda: (
                "ignoring 'removed' from evil" in log.read_text()
                or not cluster.nodes[follower].running
            ),
            15,
            "the 410 ignored",
        )
    exited = {n: p.proc.poll() for n, p in cluster.nodes.items()}  # type: ignore[union-attr]
    assert exited == {n: None for n in cluster.nodes}, "an impostor's 410 stopped a node"
    assert cluster.put(leader, "after", b"1").status == 200


def test_open_mode_a_sender_id_never_becomes_a_path(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = start(cluster_factory)
    leader, follower, term, _ = write_k(cluster)
    data_dir = cluster.root / "data"
    before = sorted(p for p in data_dir.rglob("*") if "raft" not in p.parts)
    outside = cluster.root / "escape"  # an absolute sender id aims here
    names = ("../../../escape", "../escape", str(outside), "n1/../../escape")
    statuses = []
    for sender in names:
        body = snapshot_chunk(leader, follower, term, sender=sender, total=1 << 20)
        head = {"X-Raft-From": cluster.nodes[leader].peer_url}  # admitted as a new peer
        reply = request(cluster.nodes[follower].peer_url, "POST", "/raft/snapshot", body, head)
        statuses.append(reply.status)
    assert list(cluster.root.rglob("*escape*")) == [], "a file was written outside"
    after = sorted(p for p in data_dir.rglob("*") if "raft" not in p.parts)
    assert after == before
    assert statuses == [403] * len(names)  # wrong_sender: not a valid node id
    assert all(node.running for node in cluster.nodes.values())


def test_open_mode_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(
        '[cluster]\nname = "t"\ndata_dir = "./data"\n\n[[nodes]]\nid = "n1"\n'
        'client_url = "http://10.1.2.3:8001"\npeer_url = "http://10.1.2.3:7001"\n'
    )
    result = run_serve(config, "n1")
    assert result.returncode == 2
    assert "peers are not authenticated" in result.stderr and "loopback" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- helpers


class _Answer410(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # the stdlib's name
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        body = b'{"error": "removed_member", "message": "you were removed; wipe your data"}'
        self.send_response(410)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Hits(list):  # type: ignore[type-arg]
    port = 0


@contextlib.contextmanager
def answering_410(port: int) -> Iterator[_Hits]:
    """An HTTP server on 127.0.0.1:`port` (0: any) that answers every POST with 410."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Answer410)
    hits = _Hits()
    hits.port = server.server_address[1]
    server.hits = hits  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hits
    finally:
        server.shutdown()
        server.server_close()


def test_a_secret_cluster_fails_over_and_sends_snapshots(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    """The signed stream and the signed snapshot chunks carry a real workload."""
    cluster: Cluster = cluster_factory(election_ticks=60, snapshot_entries=60)
    cluster.extra_toml = SECRET_TOML
    cluster.write_config()
    cluster.start()
    leader = cluster.wait_healthy(timeout=20.0)
    cluster.kill9(leader)
    survivors = [n for n in cluster.nodes if n != leader]
    new_leader = cluster.wait_leader(timeout=20.0, among=survivors)
    for i in range(150):
        assert cluster.put(new_leader, f"k{i}", str(i).encode()).status == 200
    cluster.start(leader)
    wait_until(
        lambda: cluster.get(leader, "k149", stale=True).body == b"149",
        30,
        "the restarted node to catch up",
    )
    assert "receiving snapshot" in cluster.nodes[leader].log_path.read_text()
