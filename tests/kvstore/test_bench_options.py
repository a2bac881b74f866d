"""`kv bench` leaves nothing behind and measures a remote cluster only when told to."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kvstore.cli.bench import bench_command, bench_endpoints
from kvstore.client.endpoints import ENV_VAR
from tests.kvstore.test_client import FakeCluster, threaded


def bench(*args: str) -> object:
    return CliRunner().invoke(bench_command, list(args), env={ENV_VAR: ""})


def test_non_loopback_endpoints_need_allow_remote() -> None:
    remote = "http://10.1.2.3:8001,http://127.0.0.1:8002"
    with pytest.raises(SystemExit):
        bench_endpoints("kv", remote, None)
    assert bench_endpoints("kv", remote, None, allow_remote=True) == remote.split(",")
    refused = bench("--endpoints", remote, "--duration", "1")
    assert refused.exit_code == 2 and "--allow-remote" in refused.stderr


def test_each_run_writes_under_its_own_prefix_and_deletes_it() -> None:
    with threaded(FakeCluster()) as cluster:
        eps = ",".join(cluster.urls.values())
        cluster.store["bench/mine"] = (b"keep me", 1, 1)  # someone else's key
        args = ["--endpoints", eps, "--duration", "0.2", "--keys", "10", "--json"]
        for _ in range(2):
            done = bench(*args)
            assert done.exit_code == 0, done.output
            assert json.loads(done.stdout)["ops"] > 0
        prefixes = {s.raw_path.rsplit("%2F", 1)[0] for s in cluster.kv_requests("PUT")}
        assert len(prefixes) == 2  # one per run
        assert cluster.store == {"bench/mine": (b"keep me", 1, 1)}

        kept = bench(*args, "--keep-keys")
        assert kept.exit_code == 0
        assert len(cluster.store) > 1
