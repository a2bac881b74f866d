"""`kv auth enable|disable|status|token`, `kv user ...`, `kv role ...`: users, roles and
the authentication switch (README, Security), over kvstore.client.auth_admin.

Every command takes the client options (--user/--password or --token, else KV_USER /
KV_PASSWORD / KV_TOKEN; the password is prompted when only the user is given) and ends
like the other client commands: one line on stderr and the exit codes of
kvstore.cli.client_commands (5: not authenticated, or not allowed).
"""

from __future__ import annotations

import json
from typing import Any

import click

from kvstore.cli.client_commands import EXIT_USAGE, endpoint_options, fail, format_table, run_client
from kvstore.client import AsyncKV, auth_admin
from kvstore.client.auth_admin import ACCESS, Role

# ---------------------------------------------------------------------- kv auth


@click.group("auth")
def auth_group() -> None:
    """Turn authentication on or off, see whether it is on, get a token."""


@auth_group.command("status")
@click.option("--json", "as_json", is_flag=True, help='Print {"enabled": ...}.')
@endpoint_options
def auth_status(as_json: bool, **params: Any) -> None:
    """Print whether authentication is enabled (anyone may ask)."""
    enabled = run_client(params, auth_admin.status)
    click.echo(
        json.dumps({"enabled": enabled}) if as_json else ("enabled" if enabled else "disabled")
    )


@auth_group.command("enable")
@endpoint_options
def auth_enable(**params: Any) -> None:
    """Turn authentication on. Needs a user "root" with the role "root" first:
    `kv user add root && kv user grant root root && kv auth enable`."""
    run_client(params, auth_admin.enable)
    click.echo("authentication enabled")


@auth_group.command("disable")
@endpoint_options
def auth_disable(**params: Any) -> None:
    """Turn authentication off (as root): every request is open again."""
    run_client(params, auth_admin.disable)
    click.echo("authentication disabled")


@auth_group.command("token")
@click.option("--json", "as_json", is_flag=True, help="Print {token, ttl, user}.")
@endpoint_options
def auth_token(as_json: bool, **params: Any) -> None:
    """Print a token for --user (for KV_TOKEN: `export KV_TOKEN=$(kv auth token --user
    alice)`); it expires after the cluster's [auth] token_ttl (default 300 s)."""
    if params["user"] is None:
        fail(EXIT_USAGE, "kv auth token needs --user (or KV_USER)")

    async def issue(kv: AsyncKV) -> dict[str, Any]:
        await auth_admin.status(kv)  # any call makes the client authenticate
        return {"token": kv.token, "user": params["user"]}

    answer = run_client(params, issue)
    if answer["token"] is None:
        fail(EXIT_USAGE, "authentication is not enabled on this cluster: no token needed")
    click.echo(json.dumps(answer) if as_json else answer["token"])


# ---------------------------------------------------------------------- kv user


def _new_password(password: str | None, name: str) -> str:
    if password is not None:
        return password
    return str(click.prompt(f"New password for {name}", hide_input=True, confirmation_prompt=True))


@click.group("user")
def user_group() -> None:
    """Add, delete and list users; set passwords; grant and revoke roles."""


@user_group.command("add")
@click.argument("name")
@click.option("--new-password", default=None, help="The new user's password (else prompted).")
@endpoint_options
def user_add(name: str, new_password: str | None, **params: Any) -> None:
    """Create user NAME (as root; anyone while authentication is off)."""
    secret = _new_password(new_password, name)
    run_client(params, lambda kv: auth_admin.add_user(kv, name, secret))
    click.echo(f"user {name} added")


@user_group.command("delete")
@click.argument("name")
@endpoint_options
def user_delete(name: str, **params: Any) -> None:
    """Delete user NAME; its tokens stop working."""
    run_client(params, lambda kv: auth_admin.delete_user(kv, name))
    click.echo(f"user {name} deleted")


@user_group.command("passwd")
@click.argument("name")
@click.option("--new-password", default=None, help="The new password (else prompted).")
@endpoint_options
def user_passwd(name: str, new_password: str | None, **params: Any) -> None:
    """Change NAME's password (as root, or as NAME); its existing tokens stop working."""
    secret = _new_password(new_password, name)
    run_client(params, lambda kv: auth_admin.set_password(kv, name, secret))
    click.echo(f"password of {name} changed")


@user_group.command("grant")
@click.argument("name")
@click.argument("role")
@endpoint_options
def user_grant(name: str, role: str, **params: Any) -> None:
    """Give user NAME the role ROLE."""
    run_client(params, lambda kv: auth_admin.grant_role(kv, name, role))
    click.echo(f"role {role} granted to {name}")


@user_group.command("revoke")
@click.argument("name")
@click.argument("role")
@endpoint_options
def user_revoke(name: str, role: str, **params: Any) -> None:
    """Take the role ROLE from user NAME."""
    run_client(params, lambda kv: auth_admin.revoke_role(kv, name, role))
    click.echo(f"role {role} revoked from {name}")


@user_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@endpoint_options
def user_list(as_json: bool, **params: Any) -> None:
    """Every user with its roles (as root)."""
    users = run_client(params, auth_admin.list_users)
    if as_json:
        click.echo(json.dumps([{"name": u.name, "roles": list(u.roles)} for u in users]))
        return
    click.echo(format_table(("USER", "ROLES"), [(u.name, ",".join(u.roles)) for u in users]))


@user_group.command("get")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@endpoint_options
def user_get(name: str, as_json: bool, **params: Any) -> None:
    """User NAME and its roles (as root, or as NAME)."""
    user = run_client(params, lambda kv: auth_admin.get_user(kv, name))
    if as_json:
        click.echo(json.dumps({"name": user.name, "roles": list(user.roles)}))
    else:
        click.echo(format_table(("USER", "ROLES"), [(user.name, ",".join(user.roles))]))


# ---------------------------------------------------------------------- kv role


def _range_options(func: Any) -> Any:
    for name, text in (
        ("--end", "With --start: the first key after the range (default: no end)."),
        ("--start", "The first key of a range [start, end)."),
        ("--exact-key", "A single key (--key names the client certificate's key)."),
        ("--prefix", "Every key starting with this (e.g. app/)."),
    ):
        func = click.option(name, default=None, help=text)(func)
    return func


def _key_range(params: dict[str, Any]) -> dict[str, str]:
    """The range options, taken out of `params`; exactly one of prefix, key, start."""
    given = {k: params.pop(k) for k in ("prefix", "exact_key", "start", "end")}
    given["key"] = given.pop("exact_key")
    chosen = {k: v for k, v in given.items() if v is not None and k != "end"}
    if len(chosen) != 1 or (given["end"] is not None and "start" not in chosen):
        fail(EXIT_USAGE, "give one of --prefix, --exact-key or --start (--end only with --start)")
    return {**chosen, "end": given["end"] or ""} if "start" in chosen else chosen


def _role_rows(roles: list[Role]) -> list[tuple[str, ...]]:
    rows = []
    for role in roles:
        perms = role.permissions or ()
        rows += [(role.name, p.access, p.start, p.end or "(no end)") for p in perms]
        if not perms:
            rows.append((role.name, "-", "-", "-"))
    return rows


ROLE_COLUMNS = ("ROLE", "ACCESS", "START", "END")


@click.group("role")
def role_group() -> None:
    """Add, delete and list roles; grant and revoke their permissions on key ranges."""


@role_group.command("add")
@click.argument("name")
@endpoint_options
def role_add(name: str, **params: Any) -> None:
    """Create role NAME, with no permission yet."""
    run_client(params, lambda kv: auth_admin.add_role(kv, name))
    click.echo(f"role {name} added")


@role_group.command("delete")
@click.argument("name")
@endpoint_options
def role_delete(name: str, **params: Any) -> None:
    """Delete role NAME (not root)."""
    run_client(params, lambda kv: auth_admin.delete_role(kv, name))
    click.echo(f"role {name} deleted")


@role_group.command("grant")
@click.argument("name")
@click.argument("access", type=click.Choice(ACCESS))
@_range_options
@endpoint_options
def role_grant(name: str, access: str, **params: Any) -> None:
    """Let role NAME read, write or readwrite a range: `kv role grant app readwrite
    --prefix app/` (or --exact-key K, or --start S [--end E])."""
    where = _key_range(params)
    run_client(params, lambda kv: auth_admin.grant_permission(kv, name, access, **where))  # type: ignore[arg-type]
    click.echo(f"{access} on {where} granted to role {name}")


@role_group.command("revoke")
@click.argument("name")
@_range_options
@endpoint_options
def role_revoke(name: str, **params: Any) -> None:
    """Remove role NAME's permission on exactly the range given when it was granted."""
    where = _key_range(params)
    run_client(params, lambda kv: auth_admin.revoke_permission(kv, name, **where))
    click.echo(f"permission on {where} revoked from role {name}")


@role_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@endpoint_options
def role_list(as_json: bool, **params: Any) -> None:
    """Every role, one line per permission (as root)."""
    roles = run_client(params, auth_admin.list_roles)
    if as_json:
        click.echo(json.dumps([_role_json(r) for r in roles]))
        return
    click.echo(format_table(ROLE_COLUMNS, _role_rows(roles)))


@role_group.command("get")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@endpoint_options
def role_get(name: str, as_json: bool, **params: Any) -> None:
    """Role NAME's permissions (as root, or as a user holding it)."""
    role = run_client(params, lambda kv: auth_admin.get_role(kv, name))
    if as_json:
        click.echo(json.dumps(_role_json(role)))
    else:
        click.echo(format_table(ROLE_COLUMNS, _role_rows([role])))


def _role_json(role: Role) -> dict[str, Any]:
    perms = [{"access": p.access, "start": p.start, "end": p.end} for p in role.permissions]
    return {"name": role.name, "permissions": perms}


AUTH_COMMANDS: list[click.Command] = [auth_group, user_group, role_group]
