"""The container image, Compose and Kubernetes files, checked without a container engine:
the manifests validate against the Kubernetes schemas (shipped offline by
kubernetes-validate), the Compose file has the structure `docker compose` needs, and
the Dockerfile keeps its promises (slim base, non-root, volume, ports, health check)."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.deploy.files import (
    COMPOSE,
    ENTRYPOINT,
    ROOT,
    dockerfile_env,
    dockerfile_exec_form,
    dockerfile_final_stage,
    manifests,
    statefulset,
)

K8S_VERSION = "1.30.0"


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} == {"Service", "StatefulSet", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error


def test_a_broken_manifest_is_caught() -> None:
    """The validation above has teeth: a misspelt field fails it."""
    doc = statefulset()
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_statefulset_fits_raft() -> None:
    docs = {d["kind"] + "/" + d["metadata"]["name"]: d for d in manifests()}
    sts = docs["StatefulSet/kv"]
    headless = docs["Service/kv"]
    assert sts["spec"]["serviceName"] == "kv" and headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # peers meet before ready
    assert sts["spec"]["podManagementPolicy"] == "Parallel"  # OrderedReady would deadlock
    assert sts["spec"]["replicas"] == 3
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KV_REPLICAS"] == str(sts["spec"]["replicas"]) and env["KV_SERVICE"] == "kv"
    assert "KV_INITIAL_CLUSTER" not in env  # founders ask their peers; a wiped volume refuses
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]]
    assert mounts["data"] == dockerfile_env()["KV_DATA_DIR"] and claims == ["data"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"client": 8001, "peer": 7001}
    pdb = docs["PodDisruptionBudget/kv"]
    assert pdb["spec"]["maxUnavailable"] == 1  # a quorum of 3 survives one drain
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (headless["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()


def test_compose_file_structure() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert sorted(services) == ["kv-0", "kv-1", "kv-2"]
    host_ports = set()
    for name, svc in services.items():
        assert svc["image"] == "pyraftkv:latest" and svc["hostname"] == name
        env = svc["environment"]
        assert env["KV_NODE_ID"] == name and env["KV_REPLICAS"] == str(len(services))
        assert env["KV_HOST_TEMPLATE"] == "{name}"  # containers find each other by hostname
        (volume,) = svc["volumes"]
        source, target = volume.split(":")
        assert target == dockerfile_env()["KV_DATA_DIR"] and source in doc["volumes"]
        (port,) = svc["ports"]
        host_ports.add(port.rsplit(":", 2)[1])
        assert port.endswith(":8001")
    assert len(host_ports) == 3
    assert [n for n, s in services.items() if "build" in s] == ["kv-0"]


def test_dockerfile_promises() -> None:
    stage = dockerfile_final_stage()
    words = [w for w, _ in stage]
    assert stage[0][0] == "FROM" and "-slim" in stage[0][1]
    (user,) = [r for w, r in stage if w == "USER"]
    assert not user.startswith(("root", "0"))
    assert '"/data"' in dict(stage)["VOLUME"]
    assert set(dict(stage)["EXPOSE"].split()) == {"8001", "7001"}
    assert "HEALTHCHECK" in words and "healthcheck" in dict(stage)["HEALTHCHECK"]
    assert dockerfile_exec_form("ENTRYPOINT") == ["kv-entrypoint"]
    copies = [r.split() for w, r in stage if w == "COPY"]
    assert ["deploy/entrypoint.sh", "/usr/local/bin/kv-entrypoint"] in copies
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "data" in ignored


def test_entrypoint_is_posix_sh() -> None:
    """`sh -n` parses it; the slim image has /bin/sh (dash), not bash."""
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")


def test_image_builds() -> None:
    engine = shutil.which("docker") or shutil.which("podman")
    if engine is None:
        pytest.skip("no container engine (docker or podman) on this machine: `make image` untested")
    probe = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{engine} cannot run here: {probe.stderr.strip()[-200:]}")
    subprocess.run(["make", "image", f"ENGINE={engine}"], cwd=ROOT, check=True, timeout=900)
