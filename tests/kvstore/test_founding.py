"""The founding decision and the incarnation files, without processes: a pristine
founder refuses on a peer's proof of an earlier life or of a restore, and founds when
its peers know nothing or never answer."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from consensus.types import NodeId
from kvstore.config import ClusterConfig, load_cluster_config
from kvstore.peers.seen import SeenAnswer
from kvstore.runtime.founding import FoundingRefused, check_founding
from kvstore.runtime.incarnation import (
    IncarnationError,
    NodeIncarnations,
    mark_restored,
    read_incarnation,
)

OTHER = "0" * 32


def _cluster(tmp_path: Path) -> ClusterConfig:
    lines = ["[cluster]", 'name = "t"', 'data_dir = "./data"', ""]
    for i in (1, 2, 3):
        lines += [
            "[[nodes]]",
            f'id = "n{i}"',
            f'client_url = "http://127.0.0.1:{15000 + i}"',
            f'peer_url = "http://127.0.0.1:{16000 + i}"',
            "",
        ]
    (tmp_path / "cluster.toml").write_text("\n".join(lines))
    return load_cluster_config(tmp_path / "cluster.toml")


def _run(cluster: ClusterConfig, answers: dict[NodeId, list[SeenAnswer | None]], mine=None):  # type: ignore[no-untyped-def]
    asked: list[NodeId] = []

    async def ask(peer: NodeId, url: str, node: NodeId) -> SeenAnswer | None:
        assert node == "n1" and url == cluster.node(peer).peer_url
        asked.append(peer)
        queue = answers[peer]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    answered = asyncio.run(check_founding(cluster, cluster.node("n1"), mine, ask, window_s=0.6))
    return answered, asked


def test_founds_when_no_peer_has_seen_it(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    answered, asked = _run(
        cluster, {"n2": [SeenAnswer("n2", None, False)], "n3": [SeenAnswer("n3", None, False)]}
    )
    assert sorted(answered) == ["n2", "n3"] and sorted(asked) == ["n2", "n3"]


def test_refuses_when_a_peer_has_seen_an_earlier_incarnation(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    with pytest.raises(FoundingRefused, match="n3 has seen an earlier incarnation of n1"):
        _run(cluster, {"n2": [None], "n3": [None, SeenAnswer("n3", OTHER, False)]})


def test_its_own_incarnation_is_no_reason_to_refuse(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    answered, _ = _run(
        cluster,
        {"n2": [SeenAnswer("n2", OTHER, False)], "n3": [SeenAnswer("n3", None, False)]},
        mine=OTHER,
    )
    assert sorted(answered) == ["n2", "n3"]


def test_refuses_when_a_peer_was_seeded_by_a_restore(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    with pytest.raises(FoundingRefused, match="seeded by `kv snapshot restore`"):
        _run(cluster, {"n2": [SeenAnswer("n2", None, True)], "n3": [None]})


def test_silent_peers_are_asked_again_then_given_up(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    answered, asked = _run(
        cluster, {"n2": [None, None, SeenAnswer("n2", None, False)], "n3": [None]}
    )
    assert answered == ["n2"]
    assert asked.count("n2") == 3 and asked.count("n3") >= 3  # retried for the window


def test_incarnation_files(tmp_path: Path) -> None:
    assert read_incarnation(tmp_path) is None
    first = NodeIncarnations(tmp_path)
    assert read_incarnation(tmp_path) == first.own and len(first.own) == 32
    assert not first.restored
    first.saw("n2", OTHER)
    first.saw("n3", "1" * 32)
    again = NodeIncarnations(tmp_path)
    assert again.own == first.own and again.get("n2") == OTHER
    again.forget(["n2", "n9"])
    assert NodeIncarnations(tmp_path).get("n2") is None
    assert NodeIncarnations(tmp_path).get("n3") == "1" * 32
    mark_restored(tmp_path, "index 5 term 2")
    assert NodeIncarnations(tmp_path).restored
    shutil.rmtree(tmp_path / "raft")  # a lost log is a new life, whatever else is left
    assert NodeIncarnations(tmp_path).own != first.own
    (tmp_path / "seen_incarnations.json").write_text(json.dumps({"n2": "../x"}))
    with pytest.raises(IncarnationError):
        NodeIncarnations(tmp_path)
