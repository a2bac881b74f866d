"""cluster.toml keys for operating a node: `listen_client`/`listen_peer` and
`[cluster] log_format`; plus the JSON log formatter itself."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kvstore.config import ConfigError, load_cluster_config
from kvstore.runtime.log_format import JsonFormatter, NodeContext

HEAD = '[cluster]\nname = "t"\ndata_dir = "./data"\n{cluster_extra}\n'
NODE = '[[nodes]]\nid = "{id}"\nclient_url = "{client}"\npeer_url = "{peer}"\n{extra}\n'


def load(tmp_path: Path, extra: str = "", cluster_extra: str = "", peer: str = "") -> object:
    text = HEAD.format(cluster_extra=cluster_extra) + NODE.format(
        id="n1",
        client="http://kv-0.kv.default.svc:8001",
        peer=peer or "http://kv-0.kv.default.svc:7001",
        extra=extra,
    )
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return load_cluster_config(path)


def test_binds_default_to_the_urls(tmp_path: Path) -> None:
    (node,) = load(tmp_path).nodes  # type: ignore[attr-defined]
    assert node.client_bind == ("kv-0.kv.default.svc", 8001)
    assert node.peer_bind == ("kv-0.kv.default.svc", 7001)


def test_listen_addresses_apart_from_the_urls(tmp_path: Path) -> None:
    extra = 'listen_client = "0.0.0.0:8001"\nlisten_peer = "[::]:7001"'
    (node,) = load(tmp_path, extra).nodes  # type: ignore[attr-defined]
    assert node.client_bind == ("0.0.0.0", 8001)
    assert node.peer_bind == ("::", 7001)
    assert node.client_url == "http://kv-0.kv.default.svc:8001"  # still advertised


def test_a_shared_url_shares_its_listener(tmp_path: Path) -> None:
    url = "http://kv-0.kv.default.svc:8001"
    (node,) = load(tmp_path, 'listen_client = "0.0.0.0:8001"', peer=url).nodes  # type: ignore[attr-defined]
    assert node.peer_bind == node.client_bind == ("0.0.0.0", 8001)
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.listen_peer: client_url and peer_url"):
        load(tmp_path, 'listen_client = "0.0.0.0:8001"\nlisten_peer = "0.0.0.0:7001"', peer=url)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('listen_client = "0.0.0.0"', r"nodes\[0\]\.listen_client: expected host:port"),
        ('listen_client = "0.0.0.0:0"', r"nodes\[0\]\.listen_client: expected host:port"),
        ('listen_peer = "http://x:1"', r"nodes\[0\]\.listen_peer: expected host:port"),
        ("listen_client = 8001", r"nodes\[0\]\.listen_client: expected a string"),
        (
            'listen_client = "0.0.0.0:9"\nlisten_peer = "0.0.0.0:9"',
            r"nodes\[0\]\.listen_peer: must differ",
        ),
    ],
)
def test_bad_listen_addresses_are_named(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, extra)


def test_log_format_key(tmp_path: Path) -> None:
    assert load(tmp_path).log_format == "text"  # type: ignore[attr-defined]
    assert load(tmp_path, cluster_extra='log_format = "json"').log_format == "json"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"cluster\.log_format: expected one of"):
        load(tmp_path, cluster_extra='log_format = "xml"')


def test_json_records_carry_node_term_and_role() -> None:
    class Core:  # what NodeContext reads of the RaftNode
        term = 7

        class role:  # mimics Role.LEADER: only `.value` is read
            value = "leader"

    context = NodeContext("n2")
    record = logging.LogRecord("kvstore.x", logging.WARNING, __file__, 1, "a\nb %d", (5,), None)
    context.filter(record)
    before = json.loads(JsonFormatter().format(record))
    assert (before["node_id"], before["term"], before["role"]) == ("n2", None, None)
    context.follow(Core())  # type: ignore[arg-type]
    context.filter(record)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    rec = json.loads(line)
    assert rec["message"] == "a\nb 5" and rec["level"] == "WARNING" and rec["logger"] == "kvstore.x"
    assert (rec["node_id"], rec["term"], rec["role"]) == ("n2", 7, "leader")
