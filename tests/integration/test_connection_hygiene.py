"""Connection deadlines and one-line errors on a real cluster with short timeouts
(`[tuning] idle_timeout_ms`, `receive_timeout_ms`): silent and half-sent connections
are closed on both ports, garbage is one log line, and what must last (the peers'
message streams, a watch stream) outlives every deadline."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from kvstore.peers.link import STREAM_CONTENT_TYPE
from tests.integration.harness import Cluster, wait_until

pytestmark = pytest.mark.integration

IDLE_MS, RECEIVE_MS = 1500, 700


@pytest.fixture
def short(cluster_factory) -> Cluster:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(
        election_ticks=30, idle_timeout_ms=IDLE_MS, receive_timeout_ms=RECEIVE_MS
    )
    cluster.start()
    try:
        cluster.wait_healthy(timeout=20.0)
    except TimeoutError:
        pytest.fail(f"cluster did not come up:\n{cluster.logs()}")
    return cluster


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def _closed_within(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes `sock`; fails if it is still open after `limit`."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit} s")
    return time.monotonic() - start


def _log_lines(cluster: Cluster, node_id: str, text: str) -> list[str]:
    return [
        line for line in cluster.nodes[node_id].log_path.read_text().splitlines() if text in line
    ]


def test_silent_and_half_sent_connections_are_closed_on_both_ports(short: Cluster) -> None:
    node = short.nodes["n1"]
    for url in (node.client_url, node.peer_url):
        with socket.create_connection(_address(url)) as silent:
            mine = "{}:{}".format(*silent.getsockname())
            assert _closed_within(silent, 10.0) < IDLE_MS / 1000
        wait_until(lambda m=mine: _log_lines(short, "n1", m), 5, "the closing logged")
        (line,) = _log_lines(short, "n1", mine)
        assert "no request received" in line
        with socket.create_connection(_address(url)) as half:
            half.sendall(b"POST /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            mine = "{}:{}".format(*half.getsockname())
            assert _closed_within(half, 10.0) < IDLE_MS / 1000
        wait_until(lambda m=mine: _log_lines(short, "n1", m), 5, "the closing logged")
    assert "Traceback" not in short.logs()


def test_garbage_is_one_log_line_on_both_ports(short: Cluster) -> None:
    node = short.nodes["n2"]
    with socket.create_connection(_address(node.client_url)) as sock:
        sock.sendall(b"HELLO? \x00\x01\x02\r\n\r\n")
        sock.settimeout(10)
        assert b" 400 " in sock.recv(65536)
    frame = b"\x93\xc1garbage"
    head = (
        f"POST /raft/messages HTTP/1.1\r\nHost: x\r\nContent-Type: {STREAM_CONTENT_TYPE}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = struct.pack(">I", len(frame)) + frame
    with socket.create_connection(_address(node.peer_url)) as sock:
        sock.sendall(head + b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        sock.settimeout(10)
        assert b" 400 " in sock.recv(65536)
    with socket.create_connection(_address(node.peer_url)) as sock:
        sock.sendall(b"POST /raft/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\ngarbage")
        sock.settimeout(10)
        assert b" 400 " in sock.recv(65536)
    wait_until(lambda: _log_lines(short, "n2", "undecodable snap"), 5, "the bad chunk logged")
    (bad_chunk,) = _log_lines(short, "n2", "undecodable snapshot chunk")
    assert "127.0.0.1" in bad_chunk
    wait_until(lambda: _log_lines(short, "n2", "undecodable"), 5, "the bad frame logged")
    (bad_http,) = _log_lines(short, "n2", "malformed request")
    assert "127.0.0.1" in bad_http
    (bad_frame,) = _log_lines(short, "n2", "undecodable message batch")
    assert "127.0.0.1" in bad_frame
    assert "Traceback" not in short.logs()


def test_peer_streams_and_a_watch_outlive_the_deadlines(short: Cluster) -> None:
    leader = short.wait_leader()
    term = short.status(leader)["term"]
    node = short.nodes[leader]
    with socket.create_connection(_address(node.client_url)) as watch:
        watch.sendall(b"GET /v1/watch?prefix=w/ HTTP/1.1\r\nHost: x\r\n\r\n")
        watch.settimeout(10)
        assert b" 200 " in watch.recv(65536)
        time.sleep(3 * IDLE_MS / 1000)  # the thing under test is a quiet period
        assert short.put(leader, "w/1", b"still here").status == 200
        seen = b""
        deadline = time.monotonic() + 10
        while b"still here" not in seen and b"c3RpbGwgaGVyZQ" not in seen:
            assert time.monotonic() < deadline, seen
            chunk = watch.recv(65536)
            assert chunk, "the watch stream was closed"
            seen += chunk
    assert short.status(leader)["term"] == term  # no election: the peer streams stayed up
    for node_id in short.nodes:
        assert _log_lines(short, node_id, "closed the connection") == [], short.logs()
