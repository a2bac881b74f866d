"""`kv watch KEY` / `kv watch --prefix P [--rev R]`: print changes as they happen.

One line per change, flushed at once so a pipe (`kv watch --prefix cfg/ | while read`)
sees it immediately: `REVISION PUT KEY VALUE` or `REVISION DELETE KEY`, or one JSON
object per line with `--json`. The watch reconnects and resumes by itself (it is the
client library's); it ends on Ctrl-C, after `--count` changes, or with exit 1 when the
history asked for is compacted (start again with a later `--rev`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from typing import Any

import click

from kvstore.cli.client_commands import endpoint_options, run_client
from kvstore.client import AsyncKV
from kvstore.client.watch import WatchEvent, WatchProgress


def event_line(event: WatchEvent) -> str:
    """The human form: values as UTF-8 text (undecodable bytes escaped)."""
    if event.type == "delete":
        return f"{event.revision} DELETE {event.key}"
    value = event.value.decode("utf-8", "backslashreplace")
    return f"{event.revision} PUT {event.key} {value}"


def event_json(event: WatchEvent) -> str:
    """The --json form: the value as text when it is UTF-8, else base64 in value_b64."""
    out: dict[str, Any] = {"revision": event.revision, "type": event.type, "key": event.key}
    if event.type == "put":
        try:
            out["value"] = event.value.decode("utf-8")
        except UnicodeDecodeError:
            out["value_b64"] = base64.b64encode(event.value).decode("ascii")
        out.update(version=event.version, create_revision=event.create_revision)
    return json.dumps(out, ensure_ascii=False)


@click.command("watch")
@click.argument("key", required=False)
@click.option("--prefix", default=None, help="Watch every key starting with this.")
@click.option(
    "--rev",
    "start_revision",
    type=click.IntRange(min=1),
    default=None,
    help="Start at this revision (default: the next change).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N changes.")
@click.option(
    "--progress",
    is_flag=True,
    help="Also print '# revision R' when nothing changed for a while.",
)
@endpoint_options
def watch_command(
    key: str | None,
    prefix: str | None,
    start_revision: int | None,
    as_json: bool,
    count: int | None,
    progress: bool,
    **params: Any,
) -> None:
    """Print every change to KEY (or under --prefix) as it happens, in revision order."""
    if (key is None) == (prefix is None):
        raise click.UsageError("give either KEY or --prefix")

    async def follow(kv: AsyncKV) -> None:
        seen = 0
        watch = kv.watch(key=key, prefix=prefix, start_revision=start_revision, progress=progress)
        try:
            async for item in watch:
                if type(item) is WatchProgress:
                    click.echo(f"# revision {item.revision}")
                elif type(item) is WatchEvent:
                    click.echo(event_json(item) if as_json else event_line(item))
                    seen += 1
                sys.stdout.flush()
                if count is not None and seen >= count:
                    return
        finally:
            await watch.aclose()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch normally ends
        run_client(params, follow)


WATCH_COMMANDS = (watch_command,)
