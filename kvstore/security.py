"""What a node checks about its own exposure before it listens, and its TLS contexts.

Kept out of kvstore.server so the process entry stays small; both raise ConfigError
(one line), which `kv serve` turns into exit code 2.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl

from kvstore.config import ClusterConfig, ConfigError, NodeConfig
from kvstore.peers.tls import client_context, server_context

log = logging.getLogger("kvstore.server")


class TlsContexts:
    """The node's TLS contexts, built before it starts so that a bad file is a config
    error: the client port's, the peer port's (client certificates required), the peer
    links' and the forwarding session's (both verify the other node and present this
    node's certificate)."""

    def __init__(self, cluster: ClusterConfig, me: NodeConfig) -> None:
        self.client: ssl.SSLContext | None = None
        self.peer_server: ssl.SSLContext | None = None
        self.peer_client: ssl.SSLContext | None = None
        self.forward: ssl.SSLContext | None = None
        tls = cluster.tls
        if tls is None:
            return
        cert, key = tls.cert_for(me.id)
        try:
            if me.client_url.startswith("https"):
                self.client = server_context(tls.ca_file, cert, key, tls.require_client_cert)
                self.forward = client_context(tls.ca_file, cert, key)
            if me.peer_url.startswith("https"):
                self.peer_server = server_context(tls.ca_file, cert, key, require_cert=True)
                self.peer_client = client_context(tls.ca_file, cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls: cannot load {cert} / {key} / {tls.ca_file}: {exc}") from None


def is_loopback(host: str) -> bool:
    """Whether a listening host is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cluster: ClusterConfig, me: NodeConfig) -> None:
    """Without TLS or a cluster secret anyone who reaches the peer port controls the
    cluster, so such a node listens on loopback only (the local development mode)."""
    if cluster.peer_secret is not None or me.peer_url.startswith("https"):
        return
    for url, (host, _) in ((me.peer_url, me.peer_bind), (me.client_url, me.client_bind)):
        if not is_loopback(host):
            raise ConfigError(
                f"{url} (listening on {host}): peers are not authenticated (no [peer_auth] "
                "secret, no https peer URLs), so this node listens on loopback addresses "
                "only; see the README's Security section"
            )
    log.warning(
        "peer traffic is not authenticated (no [peer_auth] secret, no TLS): fine on "
        "loopback for development; anyone on this machine can act as a peer"
    )
