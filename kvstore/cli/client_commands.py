"""`kv get/put/delete/status`: thin click commands over `kvstore.client.AsyncKV`.

Every failure ends as one line on stderr and an exit code a script can act on,
never a traceback:

- 0 success;
- 1 a definite "no" from the cluster: key missing, version mismatch, invalid request;
- 2 the cluster could not be reached or found (no endpoints, no leader, down),
  or a write's outcome is unknown (it may or may not have been applied).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import click

from kvstore.client import AsyncKV, Consistency
from kvstore.client.endpoints import ENV_VAR
from kvstore.client.errors import (
    ClusterUnavailable,
    EndpointConfigError,
    KVError,
    OutcomeUnknown,
)
from kvstore.client.types import EndpointStatus

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_NO = 1
EXIT_UNAVAILABLE = 2


def timed_endpoint_options(default_timeout: float) -> Callable[[F], F]:
    """The options every client command shares: where the cluster is, and how long the
    whole command may take (`default_timeout` for commands that legitimately take long,
    such as a snapshot; shown in --help, and honoured exactly when given)."""

    def decorate(func: F) -> F:
        func = click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=default_timeout,
            show_default=True,
            help="Seconds the command may take, retries included.",
        )(func)
        func = click.option(
            "--config",
            "config",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="cluster.toml to read [[nodes]] client_url from (default ./cluster.toml).",
        )(func)
        return click.option(
            "--endpoints",
            default=None,
            metavar="URL,URL",
            help=f"Client URLs of the nodes (else ${ENV_VAR}, else --config / ./cluster.toml).",
        )(func)

    return decorate


endpoint_options = timed_endpoint_options(10.0)


def fail(code: int, message: str) -> NoReturn:
    """Print one line on stderr and exit: what every error path of these commands does."""
    click.echo(f"kv: {' '.join(message.split())}", err=True)
    raise SystemExit(code)


def run_client(params: dict[str, Any], action: Callable[[AsyncKV], Awaitable[T]]) -> T:
    """Run `action` against a fresh client and map every client error to an exit code."""

    async def main() -> T:
        async with AsyncKV(
            params["endpoints"], config=params["config"], timeout=params["timeout"]
        ) as kv:
            return await action(kv)

    try:
        return asyncio.run(main())
    except (ClusterUnavailable, EndpointConfigError) as exc:
        fail(EXIT_UNAVAILABLE, exc.message)
    except OutcomeUnknown as exc:
        fail(EXIT_UNAVAILABLE, f"outcome unknown: {exc.message}")
    except KVError as exc:
        fail(EXIT_NO, exc.message)


@click.command("get")
@click.argument("key")
@click.option(
    "--consistency",
    type=click.Choice(["linearizable", "stale"]),
    default="linearizable",
    show_default=True,
    help="stale: answer from the node asked, without a quorum check.",
)
@click.option("--show-version", is_flag=True, help="Also print version and mod_revision on stderr.")
@endpoint_options
def get_command(key: str, consistency: str, show_version: bool, **params: Any) -> None:
    """Print the value of KEY (raw bytes); exit 1 when it does not exist."""
    mode = cast(Consistency, consistency)
    item = run_client(params, lambda kv: kv.get(key, mode))
    sys.stdout.flush()
    out = sys.stdout.buffer
    out.write(item.value)
    if sys.stdout.isatty() and not item.value.endswith(b"\n"):
        out.write(b"\n")  # keep the shell prompt on its own line; pipes get the exact bytes
    out.flush()
    if show_version:
        click.echo(f"version {item.version} mod_revision {item.mod_revision}", err=True)


@click.command("put")
@click.argument("key")
@click.argument("value")
@click.option(
    "--prev-version",
    type=click.IntRange(min=0),
    default=None,
    help="Compare-and-set: write only if KEY is at this version (0: only if missing).",
)
@endpoint_options
def put_command(key: str, value: str, prev_version: int | None, **params: Any) -> None:
    """Write VALUE under KEY and print the new revision."""
    data = os.fsencode(value)  # the argument's bytes as the shell passed them
    result = run_client(params, lambda kv: kv.put(key, data, prev_version))
    click.echo(result.revision)


@click.command("delete")
@click.argument("key")
@click.option(
    "--prev-version",
    type=click.IntRange(min=0),
    default=None,
    help="Delete only if KEY is at this version.",
)
@endpoint_options
def delete_command(key: str, prev_version: int | None, **params: Any) -> None:
    """Delete KEY and print the new revision; exit 1 when it does not exist."""
    revision = run_client(params, lambda kv: kv.delete(key, prev_version))
    click.echo(revision)


STATUS_COLUMNS = (
    "ID",
    "ROLE",
    "TERM",
    "LEADER",
    "COMMIT",
    "APPLIED",
    "SNAPSHOT",
    "LOG",
    "ENDPOINT",
)


def status_cells(row: EndpointStatus) -> tuple[str, ...]:
    """One table row; an unreachable node keeps its id (when known) and URL.
    SNAPSHOT is the index the log was last compacted at, LOG the entries kept after it."""
    st = row.status
    if st is None:
        return (row.node_id or "?", "unreachable", "-", "-", "-", "-", "-", "-", row.endpoint)
    return (
        st.id,
        st.role,
        str(st.term),
        st.leader or "-",
        str(st.commit_index),
        str(st.applied_index),
        str(st.raw.get("snapshot_index", "-")),
        str(st.raw.get("log_size", "-")),
        row.endpoint,
    )


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in [header, *rows]
    )


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@endpoint_options
def status_command(as_json: bool, **params: Any) -> None:
    """One line per node: id, role, term, leader, commit and applied index, snapshot
    index and log size."""
    timeout = min(params["timeout"], 2.0)
    rows = run_client(params, functools.partial(_cluster_status, timeout=timeout))
    if as_json:
        click.echo(json.dumps([_status_json(r) for r in rows], indent=2))
    else:
        click.echo(format_table(STATUS_COLUMNS, [status_cells(r) for r in rows]))
    if not any(r.reachable for r in rows):
        reasons = "; ".join(r.error or r.endpoint for r in rows)
        fail(EXIT_UNAVAILABLE, f"cluster unavailable: no node answered /v1/status: {reasons}")


async def _cluster_status(kv: AsyncKV, *, timeout: float) -> list[EndpointStatus]:
    return await kv.cluster_status(timeout=timeout)


def _status_json(row: EndpointStatus) -> dict[str, Any]:
    if row.status is None:
        return {"endpoint": row.endpoint, "id": row.node_id, "reachable": False, "error": row.error}
    return {"endpoint": row.endpoint, "reachable": True, **row.status.raw}


CLIENT_COMMANDS: list[click.Command] = [get_command, put_command, delete_command, status_command]
