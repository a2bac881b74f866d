"""End-to-end `kv chaos` runs against real `kv serve` processes on loopback.

The command runs in a subprocess with a hard timeout; it stops its own nodes by PID
(and the run directory is under tmp_path). The first test demands a PASS under about
30 s of mixed faults; the second proves the checker has teeth: with the test-only
switch KV_UNSAFE_STALE_READS=1 followers answer reads from local state, and partitions
must make that visible as a linearizability violation. The third is a short `--tls`
run: https everywhere with certificates made as `kv certs init` makes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kvstore.chaos.history import read_history

REPO_ROOT = Path(__file__).resolve().parents[2]
UNSAFE_SWITCH = "KV_UNSAFE_STALE_READS"


def _kv_chaos(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kvstore.cli.chaos", "--out", str(out), *args]
    return subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_mixed_faults_run_passes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Seed 12 plans every fault kind and partition variants over ~32 s of the 35 s.
    result = _kv_chaos(out, "--duration", "35", "--seed", "12", "--clients", "6", timeout=200)
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, report
    assert "PASS" in result.stdout, report

    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "PASS"
    assert summary["faulted_seconds"] >= 30.0, summary["faults"]
    assert {f["kind"] for f in summary["faults"]} == {"kill", "pause", "partition", "delay"}
    assert all(f["end"] is not None for f in summary["faults"])
    ops = summary["ops"]
    assert ops["by_outcome"]["ok"] >= 100
    assert summary["checks"]["linearizable"] is True
    assert summary["checks"]["converged"] is True
    assert summary["checks"]["acknowledged_writes_ok"] is True
    assert summary["checks"]["checker_seconds"] >= 0
    assert len(read_history(out / "history.jsonl")) == ops["total"]
    assert (out / "latency.png").stat().st_size > 10_000


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_unsafe_stale_reads_are_caught(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _kv_chaos(
        out,
        "--duration",
        "20",
        "--seed",
        "5",
        "--nemesis",
        "partition",
        "--node-env",
        f"{UNSAFE_SWITCH}=1",
        timeout=200,
    )
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 1, report
    assert "FAIL: not linearizable" in result.stdout, report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checks"]["linearizable"] is False
    assert summary["settings"]["extra_env"] == {UNSAFE_SWITCH: "1"}


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_tls_run_passes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _kv_chaos(out, "--tls", "--duration", "12", "--seed", "3", timeout=200)
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, report
    assert "PASS" in result.stdout and "tls: every port https" in result.stdout, report

    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "PASS" and summary["settings"]["tls"] is True
    assert summary["faults"], "the run injected no fault"
    certs = out / "cluster" / "certs"
    for node in summary["settings"]["nodes"]:
        config = tomllib.loads((out / "cluster" / f"cluster-{node}.toml").read_text())
        urls = [n[k] for n in config["nodes"] for k in ("client_url", "peer_url")]
        assert urls and all(u.startswith("https://127.0.0.1:") for u in urls), urls
        assert config["tls"]["ca_file"] == str(certs / "ca.crt")
        assert (certs / f"{node}.crt").is_file() and (certs / f"{node}.key").is_file()
    ops = read_history(out / "history.jsonl")
    assert summary["ops"]["by_outcome"]["ok"] >= 100
    assert not [op for op in ops if op.error == "tls"], "a client rejected a node's certificate"
