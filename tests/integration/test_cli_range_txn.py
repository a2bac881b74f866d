"""`kv get` ranges, `kv put -` / `@FILE`, `kv txn` and the exit code table, as a user
runs them (real processes)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, child_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def kv(c: Cluster, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli.main", *args, "--endpoints", c.endpoints()],
        input=stdin,
        capture_output=True,
        timeout=60,
        env=child_env(),
    )


def test_cli_ranges_values_from_stdin_and_files_and_transactions(
    cluster: Cluster, tmp_path: Path
) -> None:
    blob = bytes(range(256)) * 40
    (tmp_path / "blob").write_bytes(blob)
    assert kv(cluster, "put", "bin/file", f"@{tmp_path / 'blob'}").returncode == 0
    put = kv(cluster, "put", "bin/stdin", "-", "--json", stdin=b"\x00from stdin\xff")
    assert put.returncode == 0 and json.loads(put.stdout) == {"revision": 2, "version": 1}
    assert kv(cluster, "get", "bin/file").stdout == blob
    assert kv(cluster, "get", "bin/stdin").stdout == b"\x00from stdin\xff"
    for i in range(4):
        assert kv(cluster, "put", f"cfg/{i}", f"v{i}").stdout == f"{3 + i}\n".encode()

    listed = kv(cluster, "get", "--prefix", "cfg/")
    assert listed.returncode == 0
    assert listed.stdout.decode().splitlines() == [f"cfg/{i}\tv{i}" for i in range(4)]
    keys = kv(cluster, "get", "cfg/1", "cfg/3", "--keys-only")
    assert keys.stdout.decode().splitlines() == ["cfg/1", "cfg/2"]
    limited = json.loads(kv(cluster, "get", "--prefix", "cfg/", "--limit", "2", "--json").stdout)
    assert limited["revision"] == 6 and [k["key"] for k in limited["kvs"]] == ["cfg/0", "cfg/1"]
    assert base64.b64decode(limited["kvs"][1]["value"]) == b"v1"
    single = json.loads(kv(cluster, "get", "cfg/2", "--json").stdout)
    assert single["create_revision"] == single["mod_revision"] == 5

    txn = {
        "compare": [{"key": "cfg/0", "target": "value", "op": "=", "text": "v0"}],
        "success": [{"put": {"key": "cfg/0", "text": "changed"}}, {"delete": {"key": "cfg/1"}}],
        "failure": [{"get": {"key": "cfg/0"}}],
    }
    (tmp_path / "txn.json").write_text(json.dumps(txn))
    ran = kv(cluster, "txn", str(tmp_path / "txn.json"))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.decode().splitlines()[0] == "SUCCESS revision 7"
    again = kv(cluster, "txn", "--json", stdin=json.dumps(txn).encode())
    assert again.returncode == 1  # the compare failed: the failure branch ran
    answer = json.loads(again.stdout)
    assert answer["succeeded"] is False
    assert base64.b64decode(answer["results"][0]["range"]["kvs"][0]["value"]) == b"changed"

    # The exit code table: 1 no, 2 usage, 3 unavailable.
    assert kv(cluster, "get", "missing").returncode == 1
    stale_cas = kv(cluster, "put", "cfg/0", "x", "--prev-revision", "3")
    assert stale_cas.returncode == 1 and b"revision mismatch" in stale_cas.stderr
    assert kv(cluster, "get").returncode == 2
    assert kv(cluster, "txn", stdin=b"{not json").returncode == 2
    bad = kv(cluster, "txn", stdin=json.dumps({"success": [{"nope": {}}]}).encode())
    assert bad.returncode == 2 and b"nope" in bad.stderr
    down = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvstore.cli.main",
            "get",
            "k",
            "--endpoints",
            "http://127.0.0.1:9",
            "--timeout",
            "1",
        ],
        capture_output=True,
        timeout=30,
        env=child_env(),
    )
    assert down.returncode == 3, down.stderr
