"""The harness tells a port taken between its draw and the node's bind from a real
failure, so the `cluster` fixture can start again on new ports instead of running a
test against a cluster with a dead node."""

from __future__ import annotations

import socket

import pytest

from tests.integration.harness import Cluster, PortTaken


def test_a_node_that_cannot_listen_is_reported_as_port_taken(
    cluster_factory: type[Cluster],
) -> None:
    c: Cluster = cluster_factory(election_ticks=30)  # type: ignore[call-arg]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        c.nodes["n1"].client_url = f"http://127.0.0.1:{squatter.getsockname()[1]}"
        c.write_config()
        c.start()
        with pytest.raises(PortTaken, match="n1 could not listen"):
            c.wait_healthy(timeout=20.0)
