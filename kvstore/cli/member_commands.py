"""`kv member list|add|remove` and `kv snapshot save|restore`.

They talk to any node (followers forward to the leader) and end like the other client
commands: one line on stderr and exit 1 for a definite "no" (not a member, a change
already running, a bad file), 2 when the cluster cannot be reached or the outcome of a
change is unknown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from kvstore.cli.client_commands import (
    EXIT_NO,
    EXIT_UNAVAILABLE,
    endpoint_options,
    fail,
    format_table,
    run_client,
    timed_endpoint_options,
)
from kvstore.client import AsyncKV, MemberList, MemberUnreachable


def _member_table(members: MemberList) -> str:
    header = ("ID", "ROLE", "CLIENT_URL", "PEER_URL", "MATCH")
    rows = [
        (
            m.id,
            m.role + (" (leader)" if m.id == members.leader else ""),
            m.client_url or "?",
            m.peer_url or "?",
            "-" if m.match_index is None else str(m.match_index),
        )
        for m in members.members
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
    members = run_client(params, lambda kv: kv.members(stale=stale))
    click.echo(json.dumps(members.raw, indent=2) if as_json else _member_table(members))


@member_group.command("add")
@click.argument("node_id", metavar="ID")
@click.option("--peer-url", required=True, help="The new node's peer_url (http://host:port).")
@click.option("--client-url", required=True, help="The new node's client_url.")
@click.option(
    "--remove-if-unreachable",
    is_flag=True,
    help="If the leader cannot reach the new node, remove the learner again.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the leader's JSON answer.")
@timed_endpoint_options(60.0)
def member_add(
    node_id: str,
    peer_url: str,
    client_url: str,
    remove_if_unreachable: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Add ID as a learner, wait until it has caught up, then make it a voter.

    Start the new node first with `kv serve --join`. The leader waits for the catch-up
    within --timeout; if that runs out the node stays a learner and keeps catching up:
    run the same command again to promote it. A node the leader cannot reach is
    reported at once; it stays a learner unless --remove-if-unreachable is given."""

    async def add(kv: AsyncKV) -> tuple[MemberList | None, str]:
        try:
            return await kv.add_member(node_id, client_url, peer_url), ""
        except MemberUnreachable as exc:
            if not remove_if_unreachable:
                raise MemberUnreachable(
                    f"{exc.message}; start it with `kv serve --join`, or remove the learner "
                    f"with `kv member remove {node_id}` (or add with --remove-if-unreachable)"
                ) from None
            await kv.remove_member(node_id)
            return None, exc.message

    members, unreachable = run_client(params, add)
    if members is None:
        fail(EXIT_NO, f"{unreachable}; the learner {node_id} was removed again")
    doc = members.raw
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    took = f" after catching up in {doc['caught_up_s']}s" if "caught_up_s" in doc else ""
    already = " (it already was)" if doc.get("already") else ""
    click.echo(f"{node_id} is a voter{already}{took}")


@member_group.command("remove")
@click.argument("node_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the leader's JSON answer.")
@timed_endpoint_options(35.0)
def member_remove(node_id: str, as_json: bool, **params: Any) -> None:
    """Remove ID; if it leads, leadership moves to the most up-to-date voter first."""
    members = run_client(params, lambda kv: kv.remove_member(node_id))
    click.echo(json.dumps(members.raw, indent=2) if as_json else f"{node_id} removed")


# ---------------------------------------------------------------------- kv snapshot


@click.group("snapshot")
def snapshot_group() -> None:
    """Consistent backups, and seeding a new cluster from one."""


@snapshot_group.command("save")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@timed_endpoint_options(60.0)
def snapshot_save(file: Path, **params: Any) -> None:
    """Write a consistent backup of the whole cluster state to FILE.

    The leader takes it after confirming its leadership with a quorum, so it holds
    every write acknowledged before the command started."""
    blob = run_client(params, lambda kv: kv.snapshot())
    # Imported only now: the state machine behind it takes a few hundred ms to import on
    # a loaded machine, which must not eat into --timeout before the request is sent.
    from kvstore.runtime.backup import BackupError, decode_backup

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
