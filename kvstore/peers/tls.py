"""TLS contexts for the node's listeners and its peer links, and the node identity a
certificate carries (stdlib `ssl` only; certificates are made by `kv certs init`).

A node certificate names `urn:pyraftkv:<cluster id>:node:<node id>` as a URI subject
alternative name. A client certificate signed by the same CA has no such name, so it
can never speak as a peer.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from kvstore.peers.auth import NODE_URI_PREFIX


def server_context(
    ca_file: Path, cert_file: Path, key_file: Path, require_cert: bool
) -> ssl.SSLContext:
    """For a listener: its certificate, and client certificates checked against the CA
    (required on the peer port, optional on the client port unless configured)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cafile=ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """For peer links and forwarding: verify the server against the CA (and its host
    name), present this node's certificate."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def identity(peercert: dict[str, Any] | None) -> tuple[str, str] | None:
    """(cluster id, node id) named by a verified certificate, or None if it names none."""
    if not peercert:
        return None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and value.startswith(NODE_URI_PREFIX):
            cluster, sep, node = value[len(NODE_URI_PREFIX) :].rpartition(":node:")
            if sep:
                return unquote(cluster), node
    return None


def transport_identity(transport: Any) -> tuple[str, str] | None:
    """The node identity of the certificate the other end of `transport` presented."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return identity(ssl_object.getpeercert())
