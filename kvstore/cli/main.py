"""The `kv` click group: every subcommand lives in a module of its own and is added here."""

from __future__ import annotations

import click

from kvstore.cli.auth_commands import AUTH_COMMANDS
from kvstore.cli.bench import bench_command
from kvstore.cli.certs_commands import CERTS_COMMANDS
from kvstore.cli.chaos import chaos_command
from kvstore.cli.client_commands import CLIENT_COMMANDS
from kvstore.cli.lock_commands import LOCK_COMMANDS
from kvstore.cli.member_commands import MEMBER_COMMANDS
from kvstore.cli.ops_commands import add_ops_commands
from kvstore.cli.server_commands import SERVER_COMMANDS
from kvstore.cli.txn_commands import TXN_COMMANDS
from kvstore.cli.watch_commands import WATCH_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyraftkv", prog_name="kv")
def cli() -> None:
    """A Raft-replicated key-value store: run nodes, read and write keys, measure."""


for command in (
    *SERVER_COMMANDS,
    *CLIENT_COMMANDS,
    *TXN_COMMANDS,
    *MEMBER_COMMANDS,
    *WATCH_COMMANDS,
    *LOCK_COMMANDS,
    *CERTS_COMMANDS,
    *AUTH_COMMANDS,
    bench_command,
    chaos_command,
):
    cli.add_command(command)
add_ops_commands(cli)


def main() -> None:
    cli(auto_envvar_prefix="KV")


if __name__ == "__main__":
    main()
