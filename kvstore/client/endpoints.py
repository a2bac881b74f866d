"""Where the cluster is: endpoint lists from an argument, KV_ENDPOINTS or cluster.toml.

The order (argument, then the environment, then the file) is the contract's, so
the library and the `kv` commands find the same cluster. cluster.toml is read by
kvstore.config, the same reader the server uses (standard library only), so a file
means the same thing to a client as to the nodes it describes.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from kvstore.client.errors import EndpointConfigError
from kvstore.config import ConfigError, load_client_urls

ENV_VAR = "KV_ENDPOINTS"
DEFAULT_CONFIG = Path("cluster.toml")

EndpointsArg = str | Sequence[str] | None


def normalize_url(url: str) -> str:
    """Strip blanks and trailing slashes and insist on an http(s) URL with a host and a
    valid port, so a typo is refused here with its reason instead of deep in aiohttp."""
    cleaned = url.strip().rstrip("/")
    parts = urlsplit(cleaned)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointConfigError(f"not an http(s) endpoint URL: {url!r}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise EndpointConfigError(f"bad endpoint URL {url!r}: the port must be 1..65535")
    return cleaned


def split_endpoints(value: str | Sequence[str]) -> list[str]:
    """Accept "URL,URL" or a sequence of URLs; drop empty items and duplicates, keep order."""
    items = value.split(",") if isinstance(value, str) else list(value)
    seen: dict[str, None] = {}
    for item in items:
        if item.strip():
            seen.setdefault(normalize_url(item), None)
    return list(seen)


def endpoints_from_config(path: str | os.PathLike[str]) -> list[str]:
    """The client URLs of every `[[nodes]]` entry of a cluster.toml."""
    try:
        return split_endpoints(load_client_urls(path))
    except ConfigError as exc:
        raise EndpointConfigError(str(exc)) from None


def resolve_endpoints(
    endpoints: EndpointsArg = None,
    config: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Apply the contract's order: explicit endpoints, then KV_ENDPOINTS, then the config file.

    Without an explicit `config`, ./cluster.toml is used when it exists.
    """
    if endpoints:
        found = split_endpoints(endpoints)
        if found:
            return found
    env = os.environ if environ is None else environ
    from_env = env.get(ENV_VAR, "").strip()
    if from_env:
        return split_endpoints(from_env)
    if config is not None:
        return endpoints_from_config(config)
    if DEFAULT_CONFIG.is_file():
        return endpoints_from_config(DEFAULT_CONFIG)
    raise EndpointConfigError(
        f"no cluster endpoints: pass --endpoints URL,URL, set {ENV_VAR}, "
        "or provide --config / ./cluster.toml"
    )


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is localhost or a loopback address (used to bound benchmarks)."""
    host = urlsplit(url).hostname
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
