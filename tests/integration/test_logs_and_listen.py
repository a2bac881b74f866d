"""JSON logs (`[cluster] log_format = "json"`) parse line by line and carry node id,
term and role; a node binds its `listen_client` while advertising another name."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.harness import Cluster, request

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]


def test_json_logs_and_a_listen_address_apart_from_the_url(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = cluster_factory(election_ticks=30)
    n1 = c.nodes["n1"]
    port = int(n1.client_url.rsplit(":", 1)[1])
    n1.client_url = f"http://localhost:{port}"  # advertised by name, bound by address
    c.write_config()
    text = c.config_path.read_text()
    text = text.replace('data_dir = "./data"', 'data_dir = "./data"\nlog_format = "json"')
    text = text.replace('id = "n1"\n', f'id = "n1"\nlisten_client = "127.0.0.1:{port}"\n')
    c.config_path.write_text(text)
    c.start()
    leader = c.wait_healthy(timeout=20)
    reply = request(f"http://127.0.0.1:{port}", "GET", "/v1/status")
    assert reply.status == 200 and reply.json()["id"] == "n1"
    members = {m["id"]: m["client_url"] for m in reply.json()["members"]}
    assert members["n1"] == f"http://localhost:{port}"  # what the others are told
    assert c.put("n2", "k", b"v").status == 200
    c.stop_all()
    roles = {"follower", "pre_candidate", "candidate", "leader"}
    for node_id, node in c.nodes.items():
        records = [json.loads(line) for line in node.log_path.read_text().splitlines()]
        assert records, node_id
        for rec in records:
            assert rec["node_id"] == node_id
            assert {"time", "level", "logger", "message", "term", "role"} <= set(rec)
            assert rec["role"] is None or rec["role"] in roles
            assert rec["term"] is None or isinstance(rec["term"], int)
        assert any(r["role"] is not None and r["term"] >= 1 for r in records)
        listening = [r["message"] for r in records if r["message"].startswith("serving")]
        assert listening, node_id
    leader_records = [json.loads(x) for x in c.nodes[leader].log_path.read_text().splitlines()]
    became = [r for r in leader_records if "now the leader" in r["message"]]
    assert became and became[0]["role"] == "leader"
    (line,) = [
        json.loads(x)["message"] for x in n1.log_path.read_text().splitlines() if "serving" in x
    ]
    assert re.search(rf"listening on 127\.0\.0\.1:{port}", line), line
