"""`kv lease ...`, `kv lock NAME [-- command]` and `kv elect NAME [VALUE]`.

Thin click commands over the client's leases, locks and elections, with the exit codes
of kvstore.cli.client_commands (1: a definite no, 2: unavailable or unknown outcome).
Commands that hold something (`lease keepalive`, `lock`, `elect`) hold it until
Ctrl-C or SIGTERM, then let go of it cleanly (release, resign, revoke).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import click

from kvstore.cli.client_commands import EXIT_NO, endpoint_options, format_table, run_client
from kvstore.client import AsyncKV, Lease
from kvstore.client import leases as lease_api

TOKEN_ENV = "KV_LOCK_TOKEN"
NAME_ENV = "KV_LOCK_NAME"
LEASE_ENV = "KV_LOCK_LEASE"


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while inside (installed before a command says
    it holds something, so a signal right after that message is never missed)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


def _hold_options(func: Any) -> Any:
    func = click.option(
        "--ttl",
        type=click.IntRange(min=1),
        default=10,
        show_default=True,
        help="TTL in seconds of the lease behind the hold (kept alive while held).",
    )(func)
    return click.option(
        "--wait",
        "wait",
        type=click.FloatRange(min=0.1),
        default=None,
        help="Give up after this many seconds in the queue (default: wait for ever).",
    )(func)


# ---------------------------------------------------------------------- kv lease


@click.group("lease")
def lease_group() -> None:
    """Grant, keep alive, revoke and inspect leases."""


@lease_group.command("grant")
@click.argument("ttl", type=click.IntRange(min=1))
@endpoint_options
def lease_grant(ttl: int, **params: Any) -> None:
    """Grant a lease of TTL seconds and print its id."""
    click.echo(run_client(params, lambda kv: lease_api.grant(kv, ttl)))


@lease_group.command("keepalive")
@click.argument("lease_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--once", is_flag=True, help="Renew once and exit instead of until Ctrl-C.")
@endpoint_options
def lease_keepalive(lease_id: int, once: bool, **params: Any) -> None:
    """Keep lease ID alive until Ctrl-C (exit 1 when it ends)."""

    async def keep(kv: AsyncKV) -> None:
        with stop_on_signals() as stop:
            ttl = await lease_api.keep_alive(kv, lease_id)
            click.echo(f"lease {lease_id} kept alive (ttl {ttl})")
            while not once and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ttl / 3)
                if not stop.is_set():
                    ttl = await lease_api.keep_alive(kv, lease_id)

    run_client(params, keep)


@lease_group.command("revoke")
@click.argument("lease_id", metavar="ID", type=click.IntRange(min=1))
@endpoint_options
def lease_revoke(lease_id: int, **params: Any) -> None:
    """Revoke lease ID now; its keys are deleted. Prints how many."""
    deleted = run_client(params, lambda kv: lease_api.revoke(kv, lease_id))
    click.echo(f"lease {lease_id} revoked, {deleted} keys deleted")


@lease_group.command("ttl")
@click.argument("lease_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--keys", "show_keys", is_flag=True, help="Also list the attached keys.")
@endpoint_options
def lease_ttl(lease_id: int, show_keys: bool, **params: Any) -> None:
    """Print the TTL and the seconds left of lease ID."""
    info = run_client(params, lambda kv: lease_api.info(kv, lease_id))
    click.echo(f"lease {info.id} ttl {info.ttl} remaining {info.remaining:.1f}")
    if show_keys:
        for key in info.keys:
            click.echo(key)


@lease_group.command("list")
@endpoint_options
def lease_list(**params: Any) -> None:
    """One line per lease: id, TTL, seconds left."""
    rows = run_client(params, lease_api.list_leases)
    cells = [(str(r.id), str(r.ttl), f"{r.remaining:.1f}") for r in rows]
    click.echo(format_table(("ID", "TTL", "REMAINING"), cells))


# ---------------------------------------------------------------------- kv lock


@click.command("lock", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_hold_options
@endpoint_options
def lock_command(
    name: str, command: tuple[str, ...], ttl: int, wait: float | None, **params: Any
) -> None:
    """Take lock NAME (first come, first served) and print its fencing token.

    With COMMAND (after `--`), run it while holding the lock, with the token in
    $KV_LOCK_TOKEN (and $KV_LOCK_NAME, $KV_LOCK_LEASE), release when it ends and exit
    with its code; the command is sent SIGTERM if the lock's lease is lost. Without,
    hold the lock until Ctrl-C. Writes made with `kv put --fence-lock NAME
    --fence-token $KV_LOCK_TOKEN` are refused once the token no longer holds."""

    async def hold(kv: AsyncKV) -> int:
        lease = Lease(kv, ttl)
        await lease.start()
        lock = kv.lock(name, ttl, timeout=wait)
        try:
            token = await lock.acquire(lease=lease)
            if not command:
                with stop_on_signals() as stop:
                    click.echo(token)
                    await first_of(stop, lease.lost)
                return EXIT_NO if lease.lost.is_set() else 0
            return await _run_holding(command, name, token, lease)
        finally:
            await lock.release()
            await lease.close()

    code = run_client(params, hold)
    if code:
        raise SystemExit(code)


async def _run_holding(command: tuple[str, ...], name: str, token: int, lease: Lease) -> int:
    env = {**os.environ, TOKEN_ENV: str(token), NAME_ENV: name, LEASE_ENV: str(lease.id)}
    proc = await asyncio.create_subprocess_exec(*command, env=env)
    lost = asyncio.create_task(lease.lost.wait())
    done = asyncio.create_task(proc.wait())
    await asyncio.wait([lost, done], return_when=asyncio.FIRST_COMPLETED)
    if not done.done():
        click.echo(f"kv: the lease behind lock {name!r} was lost; stopping the command", err=True)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    lost.cancel()
    return await done


# ---------------------------------------------------------------------- kv elect


@click.command("elect")
@click.argument("name")
@click.argument("value", required=False)
@_hold_options
@endpoint_options
def elect_command(
    name: str, value: str | None, ttl: int, wait: float | None, **params: Any
) -> None:
    """Campaign in election NAME with VALUE, print the token once leading, and lead until
    Ctrl-C (then resign). Without VALUE, print the leader's value at every change."""

    async def campaign(kv: AsyncKV) -> None:
        election = kv.election(name)
        assert value is not None
        try:
            token = await election.campaign(value, ttl, timeout=wait)
            with stop_on_signals() as stop:
                click.echo(f"elected {token}")
                await first_of(stop, election.lost)
        finally:
            await election.resign()

    async def observe(kv: AsyncKV) -> None:
        changes = kv.election(name).observe()
        with stop_on_signals() as stop:
            stopped = asyncio.create_task(stop.wait())
            while not stop.is_set():
                step = asyncio.create_task(anext(changes))
                await asyncio.wait([step, stopped], return_when=asyncio.FIRST_COMPLETED)
                if step.done():
                    leader = step.result()
                    click.echo("(no leader)" if leader is None else leader.value.decode())
                else:
                    step.cancel()

    run_client(params, campaign if value is not None else observe)


LOCK_COMMANDS: list[click.Command] = [lease_group, lock_command, elect_command]
