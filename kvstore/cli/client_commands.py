"""`kv get/put/delete/status`: thin click commands over `kvstore.client.AsyncKV`.

Every failure ends as one line on stderr and an exit code a script can act on,
never a traceback (the same table for every client command):

- 0 success;
- 1 a definite "no" from the cluster: key missing, compare-and-set or transaction
  compare failed;
- 2 usage: bad arguments or options, no or bad endpoints, a request the cluster
  refused as malformed (400/413);
- 3 the cluster could not be reached (down, no leader): nothing was written;
- 4 a write's outcome is unknown (it may or may not have been applied);
- 5 refused by authentication: no, a wrong or an expired credential (401), or a
  permission the user lacks (403).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import click

from kvstore.client import AsyncKV, ClientTLS, Consistency, Fence, KeyValue
from kvstore.client.endpoints import ENV_VAR
from kvstore.client.errors import (
    AuthenticationFailed,
    ClusterUnavailable,
    EndpointConfigError,
    InvalidRequest,
    KVError,
    OutcomeUnknown,
    PermissionDenied,
)
from kvstore.client.types import EndpointStatus

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_NO = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_UNKNOWN = 4
EXIT_DENIED = 5
CREDENTIALS_HINT = "give --user (and --password) or --token, or set KV_USER/KV_PASSWORD or KV_TOKEN"


def timed_endpoint_options(default_timeout: float) -> Callable[[F], F]:
    """The options every client command shares: where the cluster is, how to trust it
    (https: --cacert, client --cert/--key), who is asking (--user/--password or
    --token, for a cluster with authentication on), and how long the
    whole command may take (`default_timeout` for commands that legitimately take long,
    such as a snapshot; shown in --help, and honoured exactly when given)."""

    def decorate(func: F) -> F:
        for name, dest, env, text in (
            ("--cacert", "ca_file", "KV_CACERT", "CA that signed the nodes' certificates."),
            ("--cert", "cert_file", "KV_CERT", "Client certificate, if the cluster wants one."),
            ("--key", "key_file", "KV_KEY", "Key of the client certificate."),
            ("--token", "token", "KV_TOKEN", "A token (from `kv auth token`) to use as is."),
            ("--password", "password", "KV_PASSWORD", "The user's password (else prompted)."),
            ("--user", "user", "KV_USER", "User to authenticate as (auth enabled)."),
        ):
            path = click.Path(dir_okay=False) if dest.endswith("_file") else None
            func = click.option(name, dest, envvar=env, default=None, type=path, help=text)(func)
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

    user, password, token = params["user"], params["password"], params["token"]
    if user is not None and token is not None:
        fail(EXIT_USAGE, "give --user or --token, not both (check KV_USER and KV_TOKEN)")
    if password is not None and user is None:
        fail(EXIT_USAGE, "--password goes with --user")
    if user is not None and password is None:
        password = click.prompt(f"Password for {user}", hide_input=True, err=True)

    async def main() -> T:
        async with AsyncKV(
            params["endpoints"],
            config=params["config"],
            timeout=params["timeout"],
            tls=ClientTLS(params["ca_file"], params["cert_file"], params["key_file"]),
            user=user,
            password=password,
            token=token,
        ) as kv:
            return await action(kv)

    try:
        return asyncio.run(main())
    except EndpointConfigError as exc:
        fail(EXIT_USAGE, exc.message)
    except ClusterUnavailable as exc:
        fail(EXIT_UNAVAILABLE, exc.message)
    except OutcomeUnknown as exc:
        fail(EXIT_UNKNOWN, f"outcome unknown: {exc.message}")
    except InvalidRequest as exc:
        fail(EXIT_USAGE, exc.message)
    except AuthenticationFailed as exc:
        fail(EXIT_DENIED, f"{exc.message}; {CREDENTIALS_HINT}")
    except PermissionDenied as exc:
        who = f" for user {user!r}" if user else ""
        fail(EXIT_DENIED, f"{exc.message}{who}")
    except KVError as exc:
        fail(EXIT_NO, exc.message)


def kv_json(item: KeyValue, keys_only: bool = False) -> dict[str, Any]:
    """A key for --json output: the API's fields, the value as base64 (binary-safe)."""
    out: dict[str, Any] = {
        "key": item.key,
        "version": item.version,
        "create_revision": item.create_revision,
        "mod_revision": item.mod_revision,
    }
    if not keys_only:
        out["value"] = base64.b64encode(item.value).decode("ascii")
    return out


def write_bytes(data: bytes) -> None:
    sys.stdout.flush()
    out = sys.stdout.buffer
    out.write(data)
    if sys.stdout.isatty() and not data.endswith(b"\n"):
        out.write(b"\n")  # keep the shell prompt on its own line; pipes get the exact bytes
    out.flush()


@click.command("get")
@click.argument("key", required=False)
@click.argument("end", required=False)
@click.option("--prefix", default=None, help="Every key starting with PREFIX (a range read).")
@click.option("--keys-only", is_flag=True, help="Range: print keys, not values.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Range: at most N keys.")
@click.option(
    "--revision", type=click.IntRange(min=1), default=None, help="Read at a past revision."
)
@click.option(
    "--consistency",
    type=click.Choice(["linearizable", "stale"]),
    default="linearizable",
    show_default=True,
    help="stale: answer from the node asked, without a quorum check.",
)
@click.option("--show-version", is_flag=True, help="Also print version and mod_revision on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (values as base64).")
@endpoint_options
def get_command(
    key: str | None,
    end: str | None,
    prefix: str | None,
    keys_only: bool,
    limit: int | None,
    revision: int | None,
    consistency: str,
    show_version: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Print the value of KEY (raw bytes; exit 1 when it does not exist), or a range:
    `--prefix P`, or `START END` (END exclusive), one `key<TAB>value` line per key,
    every page at one revision."""
    mode = cast(Consistency, consistency)
    if prefix is not None or end is not None:
        if prefix is not None and key is not None:
            fail(EXIT_USAGE, "give --prefix or KEY / START END, not both")
        _get_range(key, end, prefix, keys_only, limit, revision, mode, as_json, params)
        return
    if key is None:
        fail(EXIT_USAGE, "missing KEY (or --prefix P, or START END)")
    if keys_only or limit is not None or revision is not None:
        fail(EXIT_USAGE, "--keys-only, --limit and --revision go with a range")
    item = run_client(params, lambda kv: kv.get(key, mode))
    if as_json:
        click.echo(json.dumps(kv_json(item)))
    else:
        write_bytes(item.value)
    if show_version:
        click.echo(f"version {item.version} mod_revision {item.mod_revision}", err=True)


def _get_range(
    start: str | None,
    end: str | None,
    prefix: str | None,
    keys_only: bool,
    limit: int | None,
    revision: int | None,
    mode: Consistency,
    as_json: bool,
    params: dict[str, Any],
) -> None:
    async def read(kv: AsyncKV) -> tuple[int | None, list[KeyValue]]:
        pages = kv.range(
            start,
            end,
            prefix=prefix,
            limit=limit,
            keys_only=keys_only,
            revision=revision,
            consistency=mode,
        )
        items = [item async for item in pages]
        return pages.revision, items

    cut, items = run_client(params, read)
    if as_json:
        kvs = [kv_json(item, keys_only) for item in items]
        click.echo(json.dumps({"revision": cut, "count": len(kvs), "kvs": kvs}))
        return
    for item in items:
        if keys_only:
            click.echo(item.key)
        else:
            click.echo(f"{item.key}\t{item.value.decode('utf-8', 'backslashreplace')}")


def read_value_argument(value: str) -> bytes:
    """VALUE as given; `-` reads standard input and `@FILE` a file, both binary-safe."""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            fail(EXIT_USAGE, f"cannot read {value[1:]}: {exc.strerror or exc}")
    return os.fsencode(value)  # the argument's bytes as the shell passed them


@click.command("put")
@click.argument("key")
@click.argument("value")
@click.option(
    "--prev-version",
    type=click.IntRange(min=0),
    default=None,
    help="Compare-and-set on the version (0: only if missing). A deleted and re-created "
    "key restarts at version 1: prefer --prev-revision.",
)
@click.option(
    "--prev-revision",
    type=click.IntRange(min=0),
    default=None,
    help="Compare-and-set: write only if KEY's mod_revision is this (0: only if missing).",
)
@click.option(
    "--lease",
    type=click.IntRange(min=1),
    default=None,
    help="Attach KEY to this lease: it is deleted when the lease ends.",
)
@click.option("--fence-lock", default=None, help="Write only while --fence-token holds this lock.")
@click.option("--fence-token", type=click.IntRange(min=1), default=None, help="See --fence-lock.")
@click.option("--json", "as_json", is_flag=True, help="Print {revision, version} as JSON.")
@endpoint_options
def put_command(
    key: str,
    value: str,
    prev_version: int | None,
    prev_revision: int | None,
    lease: int | None,
    fence_lock: str | None,
    fence_token: int | None,
    as_json: bool,
    **params: Any,
) -> None:
    """Write VALUE under KEY (`-`: from stdin, `@FILE`: from a file) and print the new
    revision (on a terminal: `revision R version V`)."""
    if (fence_lock is None) != (fence_token is None):
        fail(EXIT_USAGE, "--fence-lock and --fence-token go together")
    fence = Fence(fence_lock, fence_token) if fence_lock and fence_token else None
    data = read_value_argument(value)
    result = run_client(
        params,
        lambda kv: kv.put(
            key, data, prev_version, prev_revision=prev_revision, lease=lease, fence=fence
        ),
    )
    if as_json:
        click.echo(json.dumps({"revision": result.revision, "version": result.version}))
    elif sys.stdout.isatty():
        click.echo(f"revision {result.revision} version {result.version}")
    else:
        click.echo(result.revision)


@click.command("delete")
@click.argument("key")
@click.option(
    "--prev-version",
    type=click.IntRange(min=0),
    default=None,
    help="Delete only if KEY is at this version.",
)
@click.option(
    "--prev-revision",
    type=click.IntRange(min=0),
    default=None,
    help="Delete only if KEY's mod_revision is this.",
)
@click.option("--json", "as_json", is_flag=True, help="Print {revision} as JSON.")
@endpoint_options
def delete_command(
    key: str, prev_version: int | None, prev_revision: int | None, as_json: bool, **params: Any
) -> None:
    """Delete KEY and print the new revision; exit 1 when it does not exist."""
    revision = run_client(
        params, lambda kv: kv.delete(key, prev_version, prev_revision=prev_revision)
    )
    click.echo(json.dumps({"revision": revision}) if as_json else revision)


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
