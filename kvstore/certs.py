"""`kv certs init`: a cluster CA, one certificate per node and one for clients.

A node certificate carries the node's identity as a URI subject alternative name,
`urn:pyraftkv:<cluster id>:node:<node id>` (kvstore.peers.tls checks it on every peer
connection), and the hosts of the node's URLs as DNS or IP names, so that clients and
peers verify the host name as usual. The client certificate has no node identity: it
can authenticate to the client port, never to the peer port. Keys are EC P-256, written
with mode 0600. Needs the `cryptography` package (the `[server]` extra).

The config is read leniently here (only cluster name/id and the nodes' ids and URLs),
because the file may already name https URLs and the [tls] files about to be created.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kvstore.peers.auth import node_uri


@dataclass(frozen=True)
class CertPlan:
    """What to issue: the cluster id and, per node id, the hosts its URLs name."""

    cluster_id: str
    nodes: dict[str, tuple[str, ...]]


def plan_from_config(path: Path) -> CertPlan:
    """Read cluster id and node hosts from a cluster.toml (ValueError if unusable)."""
    try:
        doc = tomllib.loads(path.read_text())
        cluster = doc["cluster"]
        cluster_id = str(cluster.get("id", cluster["name"]))
        nodes = {}
        for table in doc["nodes"]:
            hosts = {urlsplit(table[k]).hostname for k in ("client_url", "peer_url")}
            nodes[str(table["id"])] = tuple(sorted(h for h in hosts if h))
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read cluster name and nodes: {exc}") from None
    return CertPlan(cluster_id, nodes)


def init_certs(
    plan: CertPlan, out: Path, client_name: str = "client", days: int = 365
) -> list[Path]:
    """Create ca.crt/ca.key, <node>.crt/.key for each node and <client_name>.crt/.key
    in `out`; refuses to overwrite an existing CA. Returns the files written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.key").exists():
        raise FileExistsError(f"{out / 'ca.key'} exists; use another directory")
    now = datetime.datetime.now(datetime.UTC)
    written: list[Path] = []

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"pyraftkv {plan.cluster_id}"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    def save(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        key_path, cert_path = out / f"{stem}.key", out / f"{stem}.crt"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        written.extend([cert_path, key_path])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"pyraftkv CA {plan.cluster_id}")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=10 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    save("ca", ca_key, ca)

    def issue(common: str, sans: list[x509.GeneralName], usages: list[x509.ObjectIdentifier]):  # type: ignore[no-untyped-def]
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    for node_id, hosts in plan.nodes.items():
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(node_uri(plan.cluster_id, node_id))
        ]
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        save(node_id, *issue(node_id, sans, both))
    save(client_name, *issue(client_name, [], [ExtendedKeyUsageOID.CLIENT_AUTH]))
    return written


def tls_snippet(out: Path, client_name: str) -> str:
    """The cluster.toml table (and client settings) that use the files just written."""
    return (
        "[tls]\n"
        f'ca_file = "{out / "ca.crt"}"\n'
        f'cert_file = "{out / "{id}.crt"}"\n'
        f'key_file = "{out / "{id}.key"}"\n'
        "# and make every client_url and peer_url https://\n"
        f"# clients: --cacert {out / 'ca.crt'} "
        f"[--cert {out / (client_name + '.crt')} --key {out / (client_name + '.key')}]\n"
    )
