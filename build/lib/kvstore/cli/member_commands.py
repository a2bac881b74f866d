"""`kv member list|add|remove` and `kv snapshot save|restore`.

They talk to any node (followers forward to the leader) and end like the other client
commands: one line on stderr and exit 1 for a definite "no" (not a member, a change
already running, a bad file), 2 when the cluster cannot be reached or the outcome of a
change is unknown.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

import click

from kvstore.cli.client_commands import (
    EXIT_NO,
    EXIT_UNAVAILABLE,
    endpoint_options,
    fail,
    format_table,
)
from kvstore.client.endpoints import resolve_endpoints
from kvstore.client.errors import EndpointConfigError


class _NotSent(Exception):
    """No connection could be opened: the request never reached a node."""


def _call(
    params: dict[str, Any],
    method: str,
    path: str,
    body: bytes | None = None,
    timeout: float | None = None,
) -> tuple[int, bytes]:
    """Send to the first node that accepts a connection; (status, body)."""
    try:
        endpoints = resolve_endpoints(params["endpoints"], params["config"])
    except EndpointConfigError as exc:
        fail(EXIT_UNAVAILABLE, exc.message)
    errors = []
    for url in endpoints:
        try:
            return _send(url, method, path, body, timeout or params["timeout"])
        except _NotSent as exc:
            errors.append(f"{url}: {exc}")
        except (OSError, http.client.HTTPException) as exc:
            what = "outcome unknown" if method != "GET" else "failed"
            fail(EXIT_UNAVAILABLE, f"{method} {path} on {url}: {what}: {exc}")
    fail(EXIT_UNAVAILABLE, "cluster unavailable: " + "; ".join(errors))


def _send(
    url: str, method: str, path: str, body: bytes | None, timeout: float
) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout
    )
    try:
        try:
            conn.connect()
        except OSError as exc:
            raise _NotSent(str(exc)) from None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _json_or_fail(status: int, body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {"error": "unexpected", "message": body[:200].decode("utf-8", "replace")}
    if status != 200:
        code = EXIT_UNAVAILABLE if status in (503, 504) else EXIT_NO
        fail(code, f"{doc.get('error', status)}: {doc.get('message', '')}")
    return doc


def _member_table(doc: dict[str, Any]) -> str:
    header = ("ID", "ROLE", "CLIENT_URL", "PEER_URL", "MATCH")
    rows = [
        (
            str(m["id"]),
            str(m["role"]) + (" (leader)" if m["id"] == doc.get("leader") else ""),
            str(m.get("client_url") or "?"),
            str(m.get("peer_url") or "?"),
            str(m.get("match_index", "-")),
        )
        for m in doc.get("members", [])
    ]
    return format_table(header, rows)


# ---------------------------------------------------------------------- kv member


@click.group("member")
def member_group() -> None:
    """List, add and remove cluster members (one change at a time)."""


@member_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")
@click.option("--stale", is_flag=True, help="Ask the node itself, not the leader.")
@endpoint_options
def member_list(as_json: bool, stale: bool, **params: Any) -> None:
    """Members with role and URLs; MATCH is the leader's replication index of each."""
    path = "/v1/members" + ("?consistency=stale" if stale else "")
    doc = _json_or_fail(*_call(params, "GET", path))
    click.echo(json.dumps(doc, indent=2) if as_json else _member_table(doc))


@member_group.command("add")
@click.argument("node_id", metavar="ID")
@click.option("--peer-url", required=True, help="The new node's peer_url (http://host:port).")
@click.option("--client-url", required=True, help="The new node's client_url.")
@click.option(
    "--wait",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the new node to catch up before it is promoted.",
)
@endpoint_options
def member_add(node_id: str, peer_url: str, client_url: str, wait: float, **params: Any) -> None:
    """Add ID as a learner, wait until it has caught up, then make it a voter.

    Start the new node first with `kv serve --join`. If the wait runs out the node
    stays a learner and keeps catching up: run the same command again to promote it."""
    body = json.dumps({"id": node_id, "client_url": client_url, "peer_url": peer_url}).encode()
    path = f"/v1/members?timeout={wait:g}"
    doc = _json_or_fail(*_call(params, "POST", path, body, timeout=wait + 10))
    took = f" after catching up in {doc['caught_up_s']}s" if "caught_up_s" in doc else ""
    already = " (it already was)" if doc.get("already") else ""
    click.echo(f"{node_id} is a voter{already}{took}")


@member_group.command("remove")
@click.argument("node_id", metavar="ID")
@endpoint_options
def member_remove(node_id: str, **params: Any) -> None:
    """Remove ID; if it leads, leadership moves to the most up-to-date voter first."""
    path = "/v1/members/" + urllib.parse.quote(node_id, safe="")
    _json_or_fail(*_call(params, "DELETE", path, timeout=max(params["timeout"], 35.0)))
    click.echo(f"{node_id} removed")


# ---------------------------------------------------------------------- kv snapshot


@click.group("snapshot")
def snapshot_group() -> None:
    """Consistent backups, and seeding a new cluster from one."""


@snapshot_group.command("save")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@endpoint_options
def snapshot_save(file: Path, **params: Any) -> None:
    """Write a consistent backup of the whole cluster state to FILE.

    The leader takes it after confirming its leadership with a quorum, so it holds
    every write acknowledged before the command started."""
    from kvstore.runtime.backup import BackupError, decode_backup

    status, blob = _call(params, "GET", "/v1/snapshot", timeout=max(params["timeout"], 60.0))
    if status != 200:
        _json_or_fail(status, blob)
    try:
        backup = decode_backup(blob)
    except BackupError as exc:
        fail(EXIT_UNAVAILABLE, f"the snapshot arrived damaged: {exc}")
    tmp = file.with_name(file.name + ".part")
    try:
        with tmp.open("wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(file)
    except OSError as exc:
        fail(EXIT_NO, f"cannot write {file}: {exc.strerror or exc}")
    h = backup.header
    click.echo(
        f"saved snapshot at index {h['index']} (term {h['term']}, {h.get('keys', '?')} keys, "
        f"revision {h.get('revision', '?')}, {len(blob)} bytes) to {file}"
    )


@snapshot_group.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="cluster.toml of the NEW cluster whose (empty) data dirs to seed.",
)
@click.option("--node", "nodes", multiple=True, help="Seed only this node (repeatable).")
def snapshot_restore(file: Path, config_path: Path, nodes: tuple[str, ...]) -> None:
    """Seed the empty data dirs of a NEW cluster from FILE, then start it as usual.

    Every founder of the new cluster.toml gets the snapshot with the new nodes as
    voters; non-empty data dirs are refused."""
    from kvstore.config import ConfigError, load_cluster_config
    from kvstore.runtime.backup import BackupError, read_backup, restore_cluster

    try:
        cluster = load_cluster_config(config_path)
        lines = restore_cluster(read_backup(file), cluster, list(nodes) or None)
    except (BackupError, ConfigError) as exc:
        fail(EXIT_NO, str(exc))
    for line in lines:
        click.echo(line)
    click.echo(f"start the new cluster with: kv cluster up --config {config_path}")


MEMBER_COMMANDS: list[click.Command] = [member_group, snapshot_group]
