"""`kv certs init`: certificates for a TLS cluster in one command (kvstore.certs)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from kvstore.cli.server_commands import config_option


@click.group("certs")
def certs_group() -> None:
    """Create TLS certificates for a cluster."""


@certs_group.command("init")
@config_option
@click.option(
    "--dir",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default="certs",
    show_default=True,
    help="Where to write ca.crt/ca.key, <node>.crt/.key and the client's pair.",
)
@click.option("--client-name", default="client", show_default=True, help="Client cert name.")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
def certs_init_command(config_path: str, out: Path, client_name: str, days: int) -> None:
    """A CA, a certificate per node of the file (node id and URL hosts as subject
    alternative names) and a client certificate; prints the [tls] table to add."""
    try:
        from kvstore.certs import init_certs, plan_from_config, tls_snippet
    except ImportError as exc:  # cryptography comes with the [server] extra
        sys.exit(f"kv certs init: needs pip install 'pyraftkv[server]' ({exc})")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", client_name):
        sys.exit("kv certs init: --client-name must be 1 to 64 of A-Z a-z 0-9 _ -")
    try:
        plan = plan_from_config(Path(config_path))
        written = init_certs(plan, out.resolve(), client_name, days)
    except (ValueError, OSError) as exc:
        sys.exit(f"kv certs init: error: {exc}")
    click.echo(f"wrote {len(written)} files to {out.resolve()} for cluster {plan.cluster_id!r}")
    click.echo(tls_snippet(out.resolve(), client_name), nl=False)


CERTS_COMMANDS: list[click.Command] = [certs_group]
