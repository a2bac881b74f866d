"""`kv` as a user meets it when something is wrong: one line on stderr naming the cause,
a meaningful exit code, never a traceback. Each command runs as a real process, so what
is checked is exactly what a terminal would show.
"""

from __future__ import annotations

import http.server
import os
import pty
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kvstore.client.endpoints import ENV_VAR
from tests.kvstore.test_client import FakeCluster, refused_url, threaded
from tests.kvstore.test_client_failures import self_signed

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    ["get", "k"],
    ["put", "k", "v"],
    ["delete", "k"],
    ["status"],
    ["member", "list"],
    ["member", "remove", "n9"],
    [
        "member",
        "add",
        "n9",
        "--peer-url",
        "http://127.0.0.1:1",
        "--client-url",
        "http://127.0.0.1:2",
    ],
]


def kv(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV_VAR: ""}
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


class _NotOurs(http.server.BaseHTTPRequestHandler):
    """Any HTTP server that is not a pyraftkv client API: 404 text for every request."""

    def _answer(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"Not Found")

    do_GET = do_PUT = do_DELETE = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def not_pyraftkv(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotOurs)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_port_out_of_range_is_one_line(args: list[str]) -> None:
    done = kv(*args, "--endpoints", "http://127.0.0.1:99999")
    assert done.returncode == 2
    assert one_line(done) == (
        "kv: bad endpoint URL 'http://127.0.0.1:99999': the port must be 1..65535"
    )


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_not_a_pyraftkv_endpoint_is_named(args: list[str]) -> None:
    with not_pyraftkv() as url:
        done = kv(*args, "--endpoints", url, "--timeout", "2")
    assert done.returncode == 3, done.stderr  # unavailable
    line = one_line(done)
    assert f"{url}: not a pyraftkv endpoint" in line
    assert "not found" not in line.replace("not a pyraftkv", "")


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_refused_is_named_even_when_the_timeout_runs_out(args: list[str]) -> None:
    with refused_url() as url:
        done = kv(*args, "--endpoints", url, "--timeout", "2")
    assert done.returncode == 3  # unavailable
    line = one_line(done)
    assert f"{url}: connection refused" in line and "deadline" not in line


def test_an_untrusted_certificate_is_named(tmp_path: Path) -> None:
    with self_signed(tmp_path) as tls, not_pyraftkv(tls) as url:
        done = kv("get", "k", "--endpoints", url, "--timeout", "2")
    assert done.returncode == 3  # unavailable
    line = one_line(done)
    assert f"{url}: certificate problem" in line and "CERTIFICATE_VERIFY_FAILED" in line


def test_get_ends_with_a_newline_on_a_terminal_and_stays_raw_in_a_pipe() -> None:
    with threaded(FakeCluster()) as cluster:
        eps = ",".join(cluster.urls.values())
        assert kv("put", "k", "no newline", "--endpoints", eps).returncode == 0
        piped = subprocess.run(
            [sys.executable, "-m", "kvstore.cli.main", "get", "k", "--endpoints", eps],
            capture_output=True,
            timeout=60,
            cwd=ROOT,
        )
        assert piped.stdout == b"no newline"
        leader, follower = pty.openpty()
        try:
            subprocess.run(
                [sys.executable, "-m", "kvstore.cli.main", "get", "k", "--endpoints", eps],
                stdout=follower,
                timeout=60,
                cwd=ROOT,
                check=True,
            )
            shown = os.read(leader, 1024)
        finally:
            os.close(leader)
            os.close(follower)
    assert shown == b"no newline\r\n"  # the terminal turns "\n" into "\r\n"
