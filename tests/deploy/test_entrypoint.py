"""The image's entrypoint, run outside a container: three StatefulSet pods kv-0..kv-2
with the command line of the Dockerfile and the environment of the StatefulSet (and the
Dockerfile's ENV), each on its own "volume". Only what a container network would give
differs: every pod is on 127.0.0.1 with ports from the OS, so the host template and the
ports are overridden. Then the README's scaling step: kv-3 starts with join = true and
`kv member add` makes it a voter."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.files import ENTRYPOINT, dockerfile_env, dockerfile_exec_form, pod_env
from tests.integration.harness import PortTaken, child_env, free_ports, request, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]


class Pods:
    """kv-N "pods": the entrypoint as each container would run it, stopped by PID."""

    def __init__(self, root: Path, count: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * count)
        self.client_ports, self.peer_ports = ports[:count], ports[count:]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, ordinal: int) -> str:
        return f"http://127.0.0.1:{self.client_ports[ordinal]}"

    def env(self, ordinal: int) -> dict[str, str]:
        name = f"kv-{ordinal}"
        env = {**child_env(), **dockerfile_env(), **pod_env(name, "default")}
        env.update(  # what a pod network would provide differently
            HOSTNAME=name,
            KV_HOST_TEMPLATE="127.0.0.1",
            KV_CLIENT_PORT=",".join(map(str, self.client_ports)),
            KV_PEER_PORT=",".join(map(str, self.peer_ports)),
            KV_LISTEN_HOST="127.0.0.1",
            KV_DATA_DIR=str(self.root / f"{name}-volume"),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]),
        )
        return env

    def command(self, *args: str) -> list[str]:
        return ["sh", str(ENTRYPOINT), *dockerfile_exec_form("CMD"), *args]

    def start(self, ordinal: int) -> None:
        log = (self.root / f"kv-{ordinal}.log").open("ab")
        self.procs[f"kv-{ordinal}"] = subprocess.Popen(
            self.command(), env=self.env(ordinal), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def ready(self, ordinal: int) -> bool:
        return request(self.url(ordinal), "GET", "/readyz", timeout=2).status == 200

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.root.glob("kv-*.log")))

    def found(self) -> None:
        """Start kv-0..kv-2 and wait until all three are ready. PortTaken when a pod
        exited because it could not listen: a port free when drawn was bound since by
        another process (a parallel test's node), which says nothing about the image."""
        for ordinal in range(3):
            self.start(ordinal)

        def ready_or_exited() -> bool:
            exited = [p for p in self.procs.values() if p.poll() is not None]
            return bool(exited) or all(self.ready(i) for i in range(3))

        try:
            wait_until(ready_or_exited, 30, "kv-0..kv-2 ready")
        except TimeoutError:
            pytest.fail(f"the pods did not become ready:\n{self.logs()}")
        if any(p.poll() is not None for p in self.procs.values()):
            if "cannot listen on" in self.logs():
                raise PortTaken(f"a pod could not listen:\n{self.logs()}")
            pytest.fail(f"a pod exited while the cluster was founded:\n{self.logs()}")


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    """kv-0..kv-2 founded and ready (kv-3's ports drawn too); on fresh ports and volumes
    when a drawn port was taken meanwhile, as the integration `cluster` fixture does."""
    for attempt in range(3):
        made = Pods(tmp_path / f"attempt{attempt}", 4)
        try:
            made.found()
            break
        except PortTaken:
            made.stop_all()
            if attempt == 2:
                raise
        except BaseException:
            made.stop_all()
            raise
    try:
        yield made
    finally:
        made.stop_all()


def test_statefulset_pods_form_a_cluster_and_scale(pods: Pods) -> None:
    assert dockerfile_exec_form("ENTRYPOINT") == ["kv-entrypoint"]
    config = tomllib.loads((pods.root / "kv-1-volume" / "cluster.toml").read_text())
    assert [n["id"] for n in config["nodes"]] == ["kv-0", "kv-1", "kv-2"]
    assert config["cluster"]["log_format"] == "json"  # from the StatefulSet's env
    own = config["nodes"][1]
    assert own["listen_client"] == f"127.0.0.1:{pods.client_ports[1]}"
    assert not any(n.get("join") for n in config["nodes"])
    assert (pods.root / "kv-1-volume" / "kv-1" / "raft").is_dir()  # the node's files
    assert request(pods.url(1), "PUT", "/v1/kv/greeting", b"hello").status == 200
    assert request(pods.url(2), "GET", "/v1/kv/greeting").body == b"hello"
    health = subprocess.run(pods.command("healthcheck"), env=pods.env(0), capture_output=True)
    assert health.returncode == 0, health.stderr

    # Scaling the StatefulSet to 4: kv-3 writes join = true, then `kv member add`.
    preview = subprocess.run(
        pods.command("print-config"), env=pods.env(3), capture_output=True, text=True, check=True
    )
    joiner = tomllib.loads(preview.stdout)["nodes"][3]
    assert joiner["id"] == "kv-3" and joiner["join"] is True
    pods.start(3)
    wait_until(  # the leader refuses to add a learner it cannot reach
        lambda: request(pods.url(3), "GET", "/livez", timeout=2).status == 200, 20, "kv-3 up"
    )
    added = subprocess.run(
        [
            sys.executable, "-m", "kvstore.cli.main", "member", "add", "kv-3",
            "--client-url", pods.url(3),
            "--peer-url", f"http://127.0.0.1:{pods.peer_ports[3]}",
            "--endpoints", pods.url(0),
        ],
        env=child_env(), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert added.returncode == 0, (added.stdout, added.stderr, pods.logs())
    wait_until(lambda: pods.ready(3), 20, "kv-3 ready")
    voters = request(pods.url(0), "GET", "/v1/status").json()["voters"]
    assert sorted(voters) == ["kv-0", "kv-1", "kv-2", "kv-3"]
    assert request(pods.url(3), "GET", "/v1/kv/greeting").body == b"hello"

    pods.stop_all()
    health = subprocess.run(pods.command("healthcheck"), env=pods.env(0), capture_output=True)
    assert health.returncode != 0  # the HEALTHCHECK notices a dead node


def test_a_pod_that_cannot_listen_is_reported_as_port_taken(tmp_path: Path) -> None:
    """What lets the `pods` fixture start again on new ports rather than fail a test."""
    pods = Pods(tmp_path, 3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", pods.peer_ports[0]))
        squatter.listen()
        try:
            with pytest.raises(PortTaken, match="a pod could not listen"):
                pods.found()
        finally:
            pods.stop_all()


def test_entrypoint_refuses_a_name_without_an_ordinal(tmp_path: Path) -> None:
    env = {**os.environ, "KV_POD_NAME": "kv", "KV_DATA_DIR": str(tmp_path)}
    out = subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "does not end in -<ordinal>" in out.stderr


def test_a_pod_whose_volume_was_wiped_refuses_to_found_again(pods: Pods) -> None:
    """No KV_INITIAL_CLUSTER (the manifest's default): the pods found the cluster by
    asking each other; a founder whose volume is then wiped must not found a second
    history: a peer remembers its earlier incarnation, so it exits 2 (the pod
    crash-loops visibly) and leaves its volume as it found it."""
    assert request(pods.url(1), "PUT", "/v1/kv/greeting", b"hello").status == 200
    own = (pods.root / "kv-0-volume" / "kv-0" / "raft" / "INCARNATION").read_text().strip()

    def remembered() -> bool:
        files = [
            pods.root / f"kv-{i}-volume" / f"kv-{i}" / "seen_incarnations.json" for i in (1, 2)
        ]
        return any(f.exists() and json.loads(f.read_text()).get("kv-0") == own for f in files)

    wait_until(remembered, 15, "a peer to record kv-0's incarnation")
    proc = pods.procs["kv-0"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    shutil.rmtree(pods.root / "kv-0-volume" / "kv-0")
    out = subprocess.run(
        pods.command(), env=pods.env(0), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "earlier incarnation" in out.stderr, out.stderr
    assert not (pods.root / "kv-0-volume" / "kv-0" / "raft").exists()
    assert request(pods.url(1), "GET", "/v1/kv/greeting").body == b"hello"
