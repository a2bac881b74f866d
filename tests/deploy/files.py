"""Reading the deployment files the way a container engine or Kubernetes would."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
KUBERNETES = ROOT / "deploy" / "kubernetes"


def dockerfile_final_stage() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages[-1]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_final_stage():
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split())
    return env


def dockerfile_exec_form(instruction: str) -> list[str]:
    (rest,) = [r for w, r in dockerfile_final_stage() if w == instruction]
    return json.loads(rest)


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def statefulset() -> dict[str, Any]:
    (found,) = [d for d in manifests() if d["kind"] == "StatefulSet"]
    return found


def pod_env(pod_name: str, namespace: str) -> dict[str, str]:
    """The StatefulSet container's environment as Kubernetes resolves it for one pod."""
    (container,) = statefulset()["spec"]["template"]["spec"]["containers"]
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace}
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:  # what `kubectl create secret` would hold
            env[item["name"]] = "peer-secret-of-the-test-cluster-0123456789"
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env
