"""cluster.toml loading: the shipped file loads, and every mistake gets a one-line message."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from kvstore.config import (
    MIB,
    ClusterConfig,
    ConfigError,
    Tuning,
    load_cluster_config,
)
from kvstore.runtime import data_dir as data_dir_module
from kvstore.runtime.data_dir import check_data_dir

ROOT_CONFIG = Path(__file__).resolve().parents[2] / "cluster.toml"

GOOD = """
[cluster]
name = "test"
data_dir = "./data"

[[nodes]]
id = "n1"
client_url = "http://127.0.0.1:8001"
peer_url = "http://127.0.0.1:7001"

[[nodes]]
id = "n2"
client_url = "http://127.0.0.1:8002"
peer_url = "http://127.0.0.1:7002"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_cluster_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_the_root_cluster_toml_loads() -> None:
    config = load_cluster_config(ROOT_CONFIG)
    assert config.name == "local"
    assert config.data_dir == ROOT_CONFIG.parent / "data"
    assert [n.id for n in config.nodes] == ["n1", "n2", "n3"]
    n2 = config.node("n2")
    assert (n2.client_host, n2.client_port, n2.peer_host, n2.peer_port) == (
        "127.0.0.1",
        8002,
        "127.0.0.1",
        7002,
    )
    assert n2.client_url == "http://127.0.0.1:8002"
    assert n2.data_dir == ROOT_CONFIG.parent / "data" / "n2"
    assert config.tuning == Tuning()


def test_tuning_defaults() -> None:
    assert Tuning() == Tuning(
        tick_ms=10,
        heartbeat_ticks=3,
        election_ticks=15,
        max_inflight=64,
        max_batch_bytes=MIB // 8,
        max_key_bytes=1024,
        max_value_bytes=MIB,
        request_timeout_ms=5000,
        session_ttl_entries=1_000_000,
        max_sessions=10_000,
    )


def test_data_dir_is_taken_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD)
    monkeypatch.chdir("/")
    config = load_cluster_config(str(path))
    assert config.data_dir == tmp_path / "data"
    assert config.node("n1").data_dir == tmp_path / "data" / "n1"


def test_an_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    config = load_cluster_config(
        write(tmp_path, GOOD.replace('"./data"', f'"{elsewhere.as_posix()}"'))
    )
    assert config.data_dir == elsewhere


def test_tuning_values_override_the_defaults(tmp_path: Path) -> None:
    config = load_cluster_config(
        write(tmp_path, GOOD + "[tuning]\ntick_ms = 5\nheartbeat_ticks = 2\nmax_sessions = 7\n")
    )
    assert config.tuning == Tuning(tick_ms=5, heartbeat_ticks=2, max_sessions=7)


def test_a_node_may_serve_clients_and_peers_on_one_url(tmp_path: Path) -> None:
    text = GOOD.replace("http://127.0.0.1:7001", "http://127.0.0.1:8001")
    node = load_cluster_config(write(tmp_path, text)).node("n1")
    assert (node.client_port, node.peer_port) == (8001, 8001)


def test_ipv6_and_host_names_are_accepted(tmp_path: Path) -> None:
    text = GOOD.replace("http://127.0.0.1:8001", "http://[::1]:8001").replace(
        "http://127.0.0.1:7001", "http://kv-node_1.example:7001"
    )
    node = load_cluster_config(write(tmp_path, text)).node("n1")
    assert (node.client_host, node.peer_host) == ("::1", "kv-node_1.example")


def test_unknown_node_id_names_the_known_ones(tmp_path: Path) -> None:
    config = load_cluster_config(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"unknown node id 'n9' \(known: n1, n2\)"):
        config.node("n9")


def test_a_config_built_in_code_needs_no_source_file() -> None:
    config = ClusterConfig("x", Path("/d"), ())
    with pytest.raises(ConfigError, match=r"^nodes: unknown node id 'a'"):
        config.node("a")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_cluster_config(tmp_path / "nope.toml")


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    assert "invalid TOML" in load_error(tmp_path, "[cluster\nname = 1")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_bytes(b"[cluster]\nname = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_cluster_config(path)


NODE = '[[nodes]]\nid = "n1"\nclient_url = "http://127.0.0.1:8001"\npeer_url = "http://127.0.0.1:7001"\n'
CLUSTER = '[cluster]\nname = "t"\ndata_dir = "d"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD + "[extra]\n",
            "extra: unknown key (allowed: auth, cluster, nodes, peer_auth, tls, tuning)",
        ),
        (GOOD.replace('name = "test"', 'name = "t"\nnmae = "x"'), "cluster.nmae: unknown key"),
        (GOOD.replace('id = "n2"', 'id = "n2"\nport = 1'), "nodes[1].port: unknown key"),
        (GOOD + "[tuning]\ntick = 5\n", "tuning.tick: unknown key (allowed: election_ticks"),
        (NODE, "cluster: missing required table [cluster]"),
        ("cluster = 3\n" + NODE, "cluster: expected a table, got an integer"),
        ('[cluster]\ndata_dir = "d"\n' + NODE, "cluster.name: missing required key"),
        ('[cluster]\nname = "t"\n' + NODE, "cluster.data_dir: missing required key"),
        ('[cluster]\nname = 5\ndata_dir = "d"\n' + NODE, "cluster.name: expected a string, got"),
        ('[cluster]\nname = "t"\ndata_dir = ""\n' + NODE, "cluster.data_dir: must not be empty"),
        (CLUSTER, "nodes: at least one [[nodes]] entry is required"),
        ("nodes = []\n" + CLUSTER, "nodes: at least one [[nodes]] entry is required"),
        (
            CLUSTER + "[nodes]\nid = 'n1'\n",
            "nodes: expected an array of tables [[nodes]], got a table",
        ),
        ("nodes = [1]\n" + CLUSTER, "nodes[0]: expected a table, got an integer"),
        (GOOD.replace('id = "n2"\n', ""), "nodes[1].id: missing required key"),
        (GOOD.replace('id = "n2"', "id = 2"), "nodes[1].id: expected a string, got an integer"),
        (GOOD.replace('id = "n2"', 'id = "n 2"'), "nodes[1].id: 'n 2' is not 1 to 64 of"),
        (GOOD.replace('id = "n2"', f'id = "{"n" * 65}"'), "nodes[1].id: 'nnnn"),
        (
            GOOD.replace('id = "n2"', 'id = "n1"'),
            "nodes[1].id: duplicate node id 'n1' (also nodes[0].id)",
        ),
        (
            GOOD.replace('peer_url = "http://127.0.0.1:7002"\n', ""),
            "nodes[1].peer_url: missing required key",
        ),
        (GOOD.replace('"http://127.0.0.1:7002"', "7002"), "nodes[1].peer_url: expected a string"),
        (
            GOOD.replace("http://127.0.0.1:8002", "https://127.0.0.1:8002"),
            "nodes.client_url: mixes http and https; use one for every node",
        ),
        (
            GOOD.replace("http://", "https://"),
            "tls: https URLs need a [tls] table (ca_file, cert_file, key_file)",
        ),
        (
            GOOD.replace("http://127.0.0.1:8002", "ftp://127.0.0.1:8002"),
            "nodes[1].client_url: expected http://host:port or https://host:port",
        ),
        (
            GOOD.replace("http://127.0.0.1:8002", "http://127.0.0.1"),
            "nodes[1].client_url: expected",
        ),
        (
            GOOD.replace("http://127.0.0.1:8002", "http://127.0.0.1:0"),
            "nodes[1].client_url: expected",
        ),
        (GOOD.replace("127.0.0.1:8002", "127.0.0.1:65536"), "nodes[1].client_url: expected"),
        (GOOD.replace("127.0.0.1:8002", "127.0.0.1:8002/"), "nodes[1].client_url: expected"),
        (GOOD.replace("127.0.0.1:8002", "127.0.0.1:8002/v1"), "nodes[1].client_url: expected"),
        (GOOD.replace("127.0.0.1:8002", "user@host:8002"), "nodes[1].client_url: expected"),
        (
            GOOD.replace("127.0.0.1:8002", "127.0.0.1:8001"),
            "nodes[1].client_url: address 127.0.0.1:8001 is already used by nodes[0].client_url",
        ),
        (
            GOOD.replace("127.0.0.1:7002", "127.0.0.1:8001"),
            "nodes[1].peer_url: address 127.0.0.1:8001 is already used by nodes[0].client_url",
        ),
        (
            GOOD.replace("127.0.0.1:8001", "LOCALHOST:9").replace("127.0.0.1:8002", "localhost:9"),
            "nodes[1].client_url: address localhost:9 is already used",
        ),
        ("tuning = 1\n" + GOOD, "tuning: expected a table, got an integer"),
        (GOOD + "[tuning]\ntick_ms = '10'\n", "tuning.tick_ms: expected an integer, got a string"),
        (GOOD + "[tuning]\ntick_ms = true\n", "tuning.tick_ms: expected an integer, got a boolean"),
        (GOOD + "[tuning]\ntick_ms = 1.5\n", "tuning.tick_ms: expected an integer, got a float"),
        (
            GOOD + "[tuning]\nmax_inflight = 0\n",
            "tuning.max_inflight: must be a positive integer, got 0",
        ),
        (GOOD + "[tuning]\nmax_sessions = -3\n", "tuning.max_sessions: must be a positive integer"),
        (
            GOOD + "[tuning]\nheartbeat_ticks = 15\n",
            "tuning.heartbeat_ticks: must be less than tuning.election_ticks (15 >= 15)",
        ),
    ],
)
def test_each_mistake_gets_a_one_line_message_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in load_error(tmp_path, text)


def test_newlines_in_a_message_are_folded() -> None:
    assert str(ConfigError("a\nb")) == "a b"


def test_check_data_dir_creates_missing_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "n1"
    check_data_dir(target)
    assert target.is_dir()
    assert list(target.iterdir()) == []  # the write probe is cleaned up
    check_data_dir(target)  # an existing directory is fine


def test_check_data_dir_rejects_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="exists but is not a directory"):
        check_data_dir(target)


def test_check_data_dir_rejects_a_path_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create it"):
        check_data_dir(tmp_path / "file" / "n1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_check_data_dir_rejects_a_read_only_directory(tmp_path: Path) -> None:
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check_data_dir(target)
    finally:
        target.chmod(0o755)


def test_check_data_dir_reports_a_failed_write_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**_: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data_dir_module.tempfile, "mkstemp", refuse)
    with pytest.raises(ConfigError, match=r"data directory .*: not writable: Permission denied"):
        check_data_dir(tmp_path)
