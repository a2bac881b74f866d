"""TLS clusters made with `kv certs init`: the core cases work over https, and the peer
port refuses anyone without a node certificate of this cluster naming the sender."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from consensus.codec import encode_messages
from consensus.messages import RequestVote
from tests.integration.harness import Cluster, request, wait_until

pytestmark = pytest.mark.integration

TUNING = {"election_ticks": 60, "snapshot_entries": 60}


def make_tls_cluster(root: Path, name: str = "test", extra: str = "") -> Cluster:
    """A three-node https cluster with certificates from `kv certs init`."""
    cluster = Cluster(root, size=3, tuning=TUNING, scheme="https", name=name)
    made = cluster.kv("certs", "init", "--config", str(cluster.config_path), "--dir", "certs")
    assert made.returncode == 0, made.stderr
    assert "[tls]" in made.stdout and (root / "certs" / "n1.key").stat().st_mode & 0o077 == 0
    cluster.extra_toml = made.stdout.split("\n", 1)[1] + extra
    cluster.write_config()
    cluster.context = ssl.create_default_context(cafile=str(root / "certs" / "ca.crt"))
    return cluster


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = make_tls_cluster(tmp_path / "a")
    cluster.start()
    try:
        cluster.wait_healthy(timeout=30.0)
        yield cluster
    except TimeoutError:
        pytest.fail(f"TLS cluster did not come up:\n{cluster.logs()}")
    finally:
        cluster.stop_all()


def test_a_tls_cluster_serves_fails_over_and_catches_up(tls_cluster: Cluster) -> None:
    cluster = tls_cluster
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    assert cluster.put(leader, "a", b"1").status == 200
    assert cluster.put(follower, "b", b"2").status == 200  # forwarded over https
    for node in cluster.nodes:
        assert cluster.get(node, "a").body == b"1" and cluster.get(node, "b").body == b"2"

    cluster.kill9(leader)
    survivors = [n for n in cluster.nodes if n != leader]
    new_leader = cluster.wait_leader(timeout=20.0, among=survivors)
    for i in range(150):  # past snapshot_entries: the old leader needs a snapshot
        assert cluster.put(new_leader, f"k{i}", str(i).encode()).status == 200
    cluster.start(leader)
    wait_until(
        lambda: cluster.get(leader, "k149", stale=True).body == b"149",
        30,
        "the restarted node to catch up over TLS",
    )
    assert "receiving snapshot" in cluster.nodes[leader].log_path.read_text()
    assert cluster.get(leader, "a").body == b"1"


def test_the_peer_port_refuses_other_certificates(tls_cluster: Cluster, tmp_path: Path) -> None:
    cluster = tls_cluster
    other = make_tls_cluster(tmp_path / "b", name="other")  # another cluster, another CA
    certs, other_certs = cluster.root / "certs", other.root / "certs"
    leader = cluster.wait_leader()
    target = next(n for n in cluster.nodes if n != leader)
    before = cluster.status(target)
    peer = cluster.nodes[target].peer_url
    term = before["term"]

    def attempt(cert_dir: Path, name: str, sender: str, cluster_id: str = "test") -> int | str:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        ctx.load_cert_chain(cert_dir / f"{name}.crt", cert_dir / f"{name}.key")
        body = encode_messages([RequestVote(term + 5, sender, target, 10**6, term + 5)])
        head = {"X-Raft-Cluster": cluster_id, "X-Raft-Sender": sender}
        try:
            reply = request(peer, "POST", "/raft/messages", body, head, context=ctx)
        except (ssl.SSLError, ConnectionError, http.client.HTTPException) as exc:
            return type(exc).__name__
        return reply.status

    def plain() -> int | str:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))  # no certificate
        try:
            return request(peer, "POST", "/raft/messages", b"", context=ctx).status
        except (ssl.SSLError, ConnectionError, http.client.HTTPException) as exc:
            return type(exc).__name__

    outcomes = {
        "another cluster's node certificate": attempt(other_certs, "n1", "n1"),
        "this cluster's client certificate": attempt(certs, "client", "n1"),
        "n3's certificate claiming to be n1": attempt(
            certs, "n3" if target != "n3" else "n2", "n1"
        ),
        "the right certificate, another cluster id": attempt(certs, leader, leader, "other"),
        "no certificate": plain(),
    }
    assert outcomes["this cluster's client certificate"] == 401
    assert outcomes["n3's certificate claiming to be n1"] == 403
    assert outcomes["the right certificate, another cluster id"] == 403
    for what in ("another cluster's node certificate", "no certificate"):
        assert isinstance(outcomes[what], str), (what, outcomes[what])  # the handshake failed
    after = cluster.status(target)
    assert (after["term"], after["leader"]) == (before["term"], before["leader"])


def test_clients_verify_the_cluster_and_say_clearly_what_is_wrong(tls_cluster: Cluster) -> None:
    from kvstore.client import KV, ClientTLS

    cluster = tls_cluster
    ca = str(cluster.root / "certs" / "ca.crt")
    endpoints = cluster.endpoints()
    put = cluster.kv("put", "via-cli", "1", "--endpoints", endpoints, "--cacert", ca)
    assert put.returncode == 0, put.stderr
    got = cluster.kv("get", "via-cli", "--endpoints", endpoints, "--cacert", ca)
    assert (got.returncode, got.stdout.strip()) == (0, "1"), got.stderr
    members = cluster.kv("member", "list", "--endpoints", endpoints, "--cacert", ca)
    assert members.returncode == 0 and "n1" in members.stdout, members.stderr
    with KV(endpoints, tls=ClientTLS(ca_file=ca), timeout=10) as kv:
        kv.put("via-python", b"2")
        assert kv.get("via-python").value == b"2"

    untrusted = cluster.kv("get", "via-cli", "--endpoints", endpoints, "--timeout", "3")
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr, untrusted.stderr
    assert "Traceback" not in untrusted.stderr and len(untrusted.stderr.splitlines()) == 1
    plain = endpoints.replace("https://", "http://")
    cleartext = cluster.kv("get", "via-cli", "--endpoints", plain, "--timeout", "3")
    assert cleartext.returncode != 0 and "https://" in cleartext.stderr, cleartext.stderr
    assert len(cleartext.stderr.splitlines()) == 1
