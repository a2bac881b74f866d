"""The `kv` client commands work with nothing of the server installed.

`pip install pyraftkv` (no extras) brings aiohttp and click only. This test runs the
CLI in an interpreter where the server's packages cannot be imported (a meta-path
hook refuses them, as if they were not installed) and drives a real cluster with it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.harness import Cluster, child_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("integration"),
    pytest.mark.timeout(60),
]

SERVER_ONLY = ("plyvel", "msgpack", "matplotlib", "numpy", "PIL", "uvloop", "consensus")
CLIENT_ONLY_KV = f"""
import sys
BLOCKED = {SERVER_ONLY!r}

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name.startswith(
            ("kvstore.runtime", "kvstore.api", "kvstore.peers", "kvstore.state", "kvstore.server")
        ):
            raise ModuleNotFoundError(f"No module named {{name!r}} (client-only install)")
        return None

sys.meta_path.insert(0, NotInstalled())
from kvstore.cli.main import main
sys.argv[0] = "kv"
main()
"""


def client_only_kv(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env() | {"KV_ENDPOINTS": cluster.endpoints()}
    return subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY_KV, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=cluster.root,
    )


def test_the_blocker_really_blocks(cluster: Cluster) -> None:
    """A server command must fail in this interpreter, or the test below proves nothing."""
    out = client_only_kv(cluster, "serve", "--config", str(cluster.config_path), "--node", "n1")
    assert out.returncode != 0
    assert "client-only install" in out.stderr


def test_put_get_delete_and_status_without_the_server_packages(cluster: Cluster) -> None:
    put = client_only_kv(cluster, "put", "greeting", "hello")
    assert put.returncode == 0, put.stderr
    got = client_only_kv(cluster, "get", "greeting")
    assert (got.returncode, got.stdout.strip()) == (0, "hello"), got.stderr
    status = client_only_kv(cluster, "status")
    assert status.returncode == 0, status.stderr
    assert "leader" in status.stdout
    gone = client_only_kv(cluster, "delete", "greeting")
    assert gone.returncode == 0, gone.stderr
    missing = client_only_kv(cluster, "get", "greeting")
    assert missing.returncode == 1
