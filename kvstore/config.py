"""Reading and checking cluster.toml.

Everything is checked before a node starts, because a mistake found later (two nodes on
one port, a typo in a tuning key silently ignored) shows up as a cluster that never
elects a leader, far from its cause. Every problem is a `ConfigError` whose message is
one line, `<file>: <key>: <problem>`, so `kv serve` can print it as is.
"""

from __future__ import annotations

import datetime
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

MIB = 1024 * 1024

_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LISTEN = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]+)")
LOG_FORMATS = ("text", "json")
TLS_FILES = ("ca_file", "cert_file", "key_file")
_URL = re.compile(
    r"(?P<scheme>https?)://(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]+)"
)


class ConfigError(Exception):
    """A configuration problem, described on one line (newlines are folded into spaces)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True, slots=True)
class Tuning:
    """Optional `[tuning]` table; the defaults suit a cluster on one machine or one LAN."""

    tick_ms: int = 10
    heartbeat_ticks: int = 3
    election_ticks: int = 15
    max_inflight: int = 64
    max_batch_bytes: int = MIB // 8
    """Entries per AppendEntries message and per applied Ready, in bytes. A follower
    far behind gets full batches read from the log on the leader's event loop, and each
    is decoded on the follower's: at a million keys a 1 MiB batch (~3,400 writes of
    256 B) held the leader's loop for 40-70 ms; 128 KiB holds it for a few ms, and
    two batches in flight per follower still stream a catch-up."""
    max_key_bytes: int = 1024
    max_value_bytes: int = MIB
    request_timeout_ms: int = 5000
    session_ttl_entries: int = 1_000_000
    max_sessions: int = 10_000
    snapshot_entries: int = 100_000
    """Compact the log into a snapshot once this many applied entries follow the last
    one (and the log is large enough for the state: kvstore.runtime.snapshots): bounds
    the log (disk, restart replay time) at the cost of one state copy. 100,000 as
    etcd's `--snapshot-count`: with a small state the snapshot is mostly the change
    history (`history_revisions`: 5.9 MB of 6 MB at 1,000 keys), and taking it every
    10,000 writes cost 7-8 % of the node CPU per write at concurrency 64. A restart
    replays at most this many entries (2.4 s to the first read with 99,000)."""
    snapshot_chunk_bytes: int = MIB
    """Size of one InstallSnapshot chunk; each is checksummed and a transfer resumes
    from the last chunk received after a dropped connection."""
    history_revisions: int = 10_000
    """Revisions of change history kept (kvstore.state.history): reads at an older
    `revision=R`, and paged reads that take longer than this many writes, answer 410."""
    watch_buffer_bytes: int = 4 * MIB
    """Changes one watcher may have waiting for its reader; a reader further behind is
    cut off (it resumes from its last revision) instead of holding the node's memory."""
    watch_progress_ms: int = 5000
    """An idle watch hears the current revision this often (and a dead reader is found)."""
    idle_timeout_ms: int = 60_000
    """A keep-alive connection with no request is closed after this long (both ports)."""
    receive_timeout_ms: int = 15_000
    """Time to receive a request's head, then its body (slowloris); never cuts a stream."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str
    client_url: str
    peer_url: str
    client_host: str
    client_port: int
    peer_host: str
    peer_port: int
    data_dir: Path
    """The cluster data_dir / id: this node's own files."""
    join: bool = False
    """`join = true`: not a founder. The node starts empty and waits to be added
    (`kv member add`) instead of bootstrapping; founders leave it out of their voters."""
    listen_client: tuple[str, int] | None = None
    listen_peer: tuple[str, int] | None = None
    """`listen_client`/`listen_peer = "host:port"`: where to bind when that differs from
    the advertised URL (a container binds 0.0.0.0 and advertises its DNS name)."""

    @property
    def client_bind(self) -> tuple[str, int]:
        return self.listen_client or (self.client_host, self.client_port)

    @property
    def peer_bind(self) -> tuple[str, int]:
        return self.listen_peer or (self.peer_host, self.peer_port)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Paths (absolute) of the cluster CA and of each node's certificate and key; in
    `cert_file` and `key_file`, `{id}` stands for the node id, so one file serves all."""

    ca_file: Path
    cert_file: str
    key_file: str
    require_client_cert: bool = False  # client port: only clients with a CA certificate

    def cert_for(self, node_id: str) -> tuple[Path, Path]:
        """(certificate, key) of one node."""
        cert, key = (Path(t.replace("{id}", node_id)) for t in (self.cert_file, self.key_file))
        return cert, key


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    data_dir: Path
    """Absolute; a relative value in the file is taken from the file's directory."""
    nodes: tuple[NodeConfig, ...]
    tuning: Tuning = Tuning()
    source: Path | None = None
    """The file this was loaded from, for error messages."""
    log_format: str = "text"
    """`[cluster] log_format`: "text" (for people) or "json" (one object a line)."""
    cluster_id: str = ""
    """`[cluster] id` (else the name): in every peer request, so clusters never mix."""
    peer_secret: bytes | None = None
    """`[peer_auth]`: the shared key that authenticates every peer request (HMAC)."""
    tls: TlsConfig | None = None
    """`[tls]`: certificates for the https URLs (mutual TLS between peers)."""
    token_ttl: int = 300
    """`[auth] token_ttl`: seconds a token this node issues stays valid."""

    @property
    def founders(self) -> tuple[str, ...]:
        """The voters a brand-new cluster starts with: every node not marked `join`."""
        return tuple(n.id for n in self.nodes if not n.join)

    def node(self, node_id: str) -> NodeConfig:
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(n.id for n in self.nodes)
        where = f"{self.source}: " if self.source is not None else ""
        raise ConfigError(f"{where}nodes: unknown node id {node_id!r} (known: {known})")


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """The whole file, as a node needs it: every key checked, every error naming it."""
    path = Path(path)
    return _Parser(path).cluster(_read_toml(path))


def load_client_urls(path: str | Path) -> list[str]:
    """The `[[nodes]] client_url` entries, as a client needs them. The same reader and
    checks as `load_cluster_config`, but a client machine's file may hold only these."""
    path = Path(path)
    return _Parser(path).client_urls(_read_toml(path))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of an `http(s)://host:port` URL; ConfigError (naming the URL) otherwise."""
    match = _URL.fullmatch(url)
    port = int(match["port"]) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ConfigError(
            f"expected http://host:port or https://host:port with a port in 1..65535, "
            f"got {_show(url)}"
        )
    host = match["ipv6"] or match["host"]
    return host.lower(), port


def valid_node_id(node_id: object) -> bool:
    return isinstance(node_id, str) and _NODE_ID.fullmatch(node_id) is not None


def member_node_config(node_id: str, client_url: str, peer_url: str, data_root: Path) -> NodeConfig:
    """A NodeConfig for a member known from the log rather than from cluster.toml."""
    client_host, client_port = parse_url(client_url)
    peer_host, peer_port = parse_url(peer_url)
    return NodeConfig(
        node_id,
        client_url,
        peer_url,
        client_host,
        client_port,
        peer_host,
        peer_port,
        data_root / node_id,
    )


_TOML_TYPES = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (dict, "a table"),
    (list, "an array"),
    (datetime.date | datetime.time, "a date/time"),
)


def _toml_type(value: object) -> str:
    return next(
        (name for kind, name in _TOML_TYPES if isinstance(value, kind)), type(value).__name__
    )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Parser:
    """Holds the file path so every error can name it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}")

    def keys(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                shown = f"{where}.{key}" if where else key
                raise self.fail(shown, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def required(self, table: dict[str, Any], key: str, where: str) -> Any:
        if key not in table:
            raise self.fail(f"{where}.{key}", "missing required key")
        return table[key]

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_toml_type(value)}")
        if not value:
            raise self.fail(key, "must not be empty")
        return value

    def cluster(self, doc: dict[str, Any]) -> ClusterConfig:
        self.keys(doc, {"cluster", "nodes", "tuning", "peer_auth", "tls", "auth"}, "")
        if "cluster" not in doc:
            raise self.fail("cluster", "missing required table [cluster]")
        table = doc["cluster"]
        if not isinstance(table, dict):
            raise self.fail("cluster", f"expected a table, got {_toml_type(table)}")
        self.keys(table, {"name", "data_dir", "log_format", "id"}, "cluster")
        name = self.string(self.required(table, "name", "cluster"), "cluster.name")
        cluster_id = self.string(table.get("id", name), "cluster.id")
        raw_dir = self.string(self.required(table, "data_dir", "cluster"), "cluster.data_dir")
        base = self.path.parent / Path(raw_dir).expanduser()
        data_dir = Path(os.path.abspath(base))
        nodes = self.nodes(doc.get("nodes"), data_dir)
        tuning = self.tuning(doc.get("tuning", {}))
        log_format = self.string(table.get("log_format", "text"), "cluster.log_format")
        if log_format not in LOG_FORMATS:
            raise self.fail(
                "cluster.log_format", f"expected one of {LOG_FORMATS}, got {_show(log_format)}"
            )
        secret = self.peer_secret(doc.get("peer_auth"))
        tls = self.tls(doc.get("tls"), nodes)
        ttl = self.table(doc.get("auth", {}), "auth", {"token_ttl"}).get("token_ttl", 300)
        if type(ttl) is not int or not 1 <= ttl <= 86400:
            raise self.fail("auth.token_ttl", f"expected seconds in 1..86400, got {_show(ttl)}")
        return ClusterConfig(
            name, data_dir, nodes, tuning, self.path, log_format, cluster_id, secret, tls, ttl
        )

    def table(self, raw: object, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(key, f"expected a table, got {_toml_type(raw)}")
        self.keys(raw, allowed, key)
        return raw

    def file(self, raw: object, key: str) -> Path:
        """A path relative to the config file's directory, which must exist."""
        path = Path(os.path.abspath(self.path.parent / Path(self.string(raw, key)).expanduser()))
        if "{id}" not in str(path) and not path.is_file():
            raise self.fail(key, f"no such file: {path}")
        return path

    def peer_secret(self, raw: object) -> bytes | None:
        """`secret = "..."` or `secret_file = "path"`: at least 32 bytes."""
        if raw is None:
            return None
        table = self.table(raw, "peer_auth", {"secret", "secret_file"})
        if len(table) != 1:
            raise self.fail("peer_auth", "give exactly one of secret, secret_file")
        if "secret" in table:
            secret = self.string(table["secret"], "peer_auth.secret").encode()
        else:
            path = self.file(table["secret_file"], "peer_auth.secret_file")
            try:
                secret = path.read_bytes().strip()
            except OSError as exc:
                raise self.fail("peer_auth.secret_file", f"cannot read {path}: {exc}") from None
        if len(secret) < 32:
            raise self.fail("peer_auth", f"the secret must be at least 32 bytes, got {len(secret)}")
        return secret

    def tls(self, raw: object, nodes: tuple[NodeConfig, ...]) -> TlsConfig | None:
        """`[tls]` goes with https URLs, one scheme for all peers and one for all clients."""
        for kind in ("client_url", "peer_url"):
            schemes = {getattr(n, kind).split(":", 1)[0] for n in nodes}
            if len(schemes) > 1:
                raise self.fail(f"nodes.{kind}", "mixes http and https; use one for every node")
        uses_tls = any(n.client_url.startswith("https:") for n in nodes) or any(
            n.peer_url.startswith("https:") for n in nodes
        )
        if raw is None and uses_tls:
            raise self.fail("tls", "https URLs need a [tls] table (ca_file, cert_file, key_file)")
        if raw is None:
            return None
        table = self.table(raw, "tls", {*TLS_FILES, "require_client_cert"})
        if not uses_tls:
            raise self.fail("tls", "[tls] is set but no URL is https")
        paths = [self.file(self.required(table, k, "tls"), f"tls.{k}") for k in TLS_FILES]
        required = table.get("require_client_cert", False)
        if type(required) is not bool:
            raise self.fail("tls.require_client_cert", f"expected a boolean, got {required!r}")
        return TlsConfig(paths[0], str(paths[1]), str(paths[2]), required)

    def client_urls(self, doc: dict[str, Any]) -> list[str]:
        urls = []
        for i, table in enumerate(self.node_tables(doc.get("nodes"))):
            where = f"nodes[{i}]"
            url = self.string(self.required(table, "client_url", where), f"{where}.client_url")
            self.url(url.rstrip("/"), f"{where}.client_url")  # a client forgives a final /
            urls.append(url)
        return urls

    def node_tables(self, raw: object) -> list[dict[str, Any]]:
        if raw is None:
            raise self.fail("nodes", "at least one [[nodes]] entry is required")
        if not isinstance(raw, list):
            raise self.fail(
                "nodes", f"expected an array of tables [[nodes]], got {_toml_type(raw)}"
            )
        if not raw:
            raise self.fail("nodes", "at least one [[nodes]] entry is required")
        for i, table in enumerate(raw):
            if not isinstance(table, dict):
                raise self.fail(f"nodes[{i}]", f"expected a table, got {_toml_type(table)}")
        return raw

    def nodes(self, raw: object, data_dir: Path) -> tuple[NodeConfig, ...]:
        nodes: list[NodeConfig] = []
        ids: dict[str, str] = {}
        addresses: dict[tuple[str, int], str] = {}
        for i, table in enumerate(self.node_tables(raw)):
            where = f"nodes[{i}]"
            self.keys(
                table,
                {"id", "client_url", "peer_url", "join", "listen_client", "listen_peer"},
                where,
            )
            join = table.get("join", False)
            if type(join) is not bool:
                raise self.fail(f"{where}.join", f"expected a boolean, got {_toml_type(join)}")
            node_id = self.string(self.required(table, "id", where), f"{where}.id")
            if not _NODE_ID.fullmatch(node_id):
                raise self.fail(
                    f"{where}.id", f"{_show(node_id)} is not 1 to 64 of A-Z a-z 0-9 _ -"
                )
            if node_id in ids:
                raise self.fail(
                    f"{where}.id", f"duplicate node id {node_id!r} (also {ids[node_id]})"
                )
            ids[node_id] = f"{where}.id"
            client_url = self.string(
                self.required(table, "client_url", where), f"{where}.client_url"
            )
            peer_url = self.string(self.required(table, "peer_url", where), f"{where}.peer_url")
            client = self.url(client_url, f"{where}.client_url")
            peer = self.url(peer_url, f"{where}.peer_url")
            own = {client: f"{where}.client_url", peer: f"{where}.peer_url"}
            for address, key in own.items():  # one entry when the node shares its URL
                if address in addresses:
                    raise self.fail(
                        key,
                        f"address {_address(address)} is already used by {addresses[address]}",
                    )
            addresses.update(own)
            listen_client, listen_peer = self.listens(table, where, client == peer)
            nodes.append(
                NodeConfig(
                    id=node_id,
                    client_url=client_url,
                    peer_url=peer_url,
                    client_host=client[0],
                    client_port=client[1],
                    peer_host=peer[0],
                    peer_port=peer[1],
                    data_dir=data_dir / node_id,
                    join=join,
                    listen_client=listen_client,
                    listen_peer=listen_peer,
                )
            )
        if all(node.join for node in nodes):
            raise self.fail("nodes", "every node has join = true: the cluster needs a founder")
        return tuple(nodes)

    def listens(
        self, table: dict[str, Any], where: str, shared: bool
    ) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
        """The optional bind addresses; one listener serves both APIs exactly when the
        two URLs are the same, so the binds must agree with that."""
        found: dict[str, tuple[str, int] | None] = {}
        for name in ("listen_client", "listen_peer"):
            key = f"{where}.{name}"
            raw = table.get(name)
            found[name] = None if raw is None else self.listen(self.string(raw, key), key)
        client, peer = found["listen_client"], found["listen_peer"]
        if shared:
            if peer is not None and peer != client:
                raise self.fail(
                    f"{where}.listen_peer",
                    "client_url and peer_url are the same, so one listener serves both: "
                    "set only listen_client",
                )
            peer = client
        if not shared and client is not None and client == peer:
            raise self.fail(
                f"{where}.listen_peer", "must differ from listen_client when the URLs differ"
            )
        return client, peer

    def listen(self, value: str, key: str) -> tuple[str, int]:
        match = _LISTEN.fullmatch(value)
        port = int(match["port"]) if match else 0
        if match is None or not 1 <= port <= 65535:
            raise self.fail(key, f"expected host:port with a port in 1..65535, got {_show(value)}")
        return (match["ipv6"] or match["host"]).lower(), port

    def url(self, url: str, key: str) -> tuple[str, int]:
        try:
            return parse_url(url)
        except ConfigError as exc:
            raise self.fail(key, str(exc)) from None

    def tuning(self, table: object) -> Tuning:
        if not isinstance(table, dict):
            raise self.fail("tuning", f"expected a table, got {_toml_type(table)}")
        names = {f.name for f in fields(Tuning)}
        self.keys(table, names, "tuning")
        for key, value in table.items():
            if type(value) is not int:
                raise self.fail(f"tuning.{key}", f"expected an integer, got {_toml_type(value)}")
            if value <= 0:
                raise self.fail(f"tuning.{key}", f"must be a positive integer, got {value}")
        tuning = Tuning(**table)
        if tuning.heartbeat_ticks >= tuning.election_ticks:
            raise self.fail(
                "tuning.heartbeat_ticks",
                f"must be less than tuning.election_ticks "
                f"({tuning.heartbeat_ticks} >= {tuning.election_ticks})",
            )
        return tuning


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
