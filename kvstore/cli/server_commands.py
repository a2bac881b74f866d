"""`kv serve` and `kv cluster up`: thin click wrappers over kvstore.server.

The heavy imports (aiohttp, plyvel, the runtime) happen inside the commands, so
`kv get` and friends start fast. Errors end as one line on stderr with exit code 2
(bad config, unusable data dir) or 1 (cannot listen, fatal runtime error).
"""

from __future__ import annotations

import sys

import click

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default="cluster.toml",
    show_default=True,
    help="The cluster file.",
)
"""The cluster file, the same way for every command that runs nodes."""


@click.command("serve")
@config_option
@click.option("--node", "node_id", required=True, help="The id of the node to run, e.g. n1.")
@click.option(
    "--join",
    is_flag=True,
    help="Join an existing cluster: start empty and wait for `kv member add` instead of "
    "founding a cluster (ignored, with a log line, when the node already has data).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="text (the default) or json: one object a line with node id, term and role. "
    "Overrides `log_format` under [cluster].",
)
@click.option(
    "--initial-cluster",
    is_flag=True,
    help="Found a NEW cluster from the file's nodes without asking them first. Without "
    "it a founder on an empty data directory asks its peers and refuses when one has "
    "seen an earlier incarnation of it (a wiped disk) or was seeded by a restore "
    "(ignored when the node already has data).",
)
def serve_command(
    config_path: str, node_id: str, join: bool, log_format: str | None, initial_cluster: bool
) -> None:
    """Run one node in the foreground until SIGTERM/SIGINT."""
    from kvstore.server import run_node

    sys.exit(run_node(config_path, node_id, join, log_format, initial_cluster))


@click.group("cluster")
def cluster_group() -> None:
    """Run a whole cluster on this machine."""


@cluster_group.command("up")
@config_option
def cluster_up_command(config_path: str) -> None:
    """Start every node of the file, print their URLs, stop them all on Ctrl-C."""
    from kvstore.server import cluster_up

    sys.exit(cluster_up(config_path))


SERVER_COMMANDS: list[click.Command] = [serve_command, cluster_group]
