"""Operator conveniences of the `kv` command: `kv completion bash|zsh|fish` and
`--watch` on `kv status`.

`--watch` is added to the existing status command rather than written into it, so the
command keeps one body: watching just runs that body again every few seconds.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from functools import partial
from types import FrameType
from typing import Any

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
DEFAULT_WATCH_S = 2.0


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion_command(shell: str) -> None:
    """Print the completion script for SHELL. Load it with
    `eval "$(kv completion bash)"` (bash, zsh: add the line to ~/.bashrc or ~/.zshrc) or
    `kv completion fish > ~/.config/fish/completions/kv.fish`."""
    root = click.get_current_context().find_root().command
    completion = get_completion_class(shell)
    assert completion is not None  # every name in SHELLS is one click provides
    click.echo(completion(root, {}, "kv", "_KV_COMPLETE").source())


def with_watch(command: click.Command) -> click.Command:
    """Give `command` a `--watch [SECONDS]` option: clear the terminal and run it again
    every SECONDS until Ctrl-C. A failed round (the cluster is down) prints its one-line
    error and the watch goes on: that is when an operator is watching."""
    inner = command.callback
    assert inner is not None
    command.params.append(
        click.Option(
            ["--watch", "-w"],
            type=click.FloatRange(min=0.1),
            is_flag=False,
            flag_value=DEFAULT_WATCH_S,
            default=None,
            metavar="[SECONDS]",
            help=f"Refresh every SECONDS ({DEFAULT_WATCH_S:g} if not given) until Ctrl-C.",
        )
    )

    def callback(watch: float | None, **params: Any) -> Any:
        if watch is None:
            return inner(**params)
        interrupted = threading.Event()
        previous = signal.signal(signal.SIGINT, partial(_interrupt, interrupted))
        try:
            while not interrupted.is_set():
                click.clear()  # a no-op when the output is not a terminal
                stamp = time.strftime("%H:%M:%S")
                click.echo(f"kv {command.name}, every {watch:g}s, {stamp} (Ctrl-C stops)\n")
                with contextlib.suppress(SystemExit):  # its error line is printed
                    inner(**params)
                interrupted.wait(watch)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, previous)
        return None

    command.callback = callback
    return command


def _interrupt(interrupted: threading.Event, signum: int, frame: FrameType | None) -> None:
    """Ctrl-C during `--watch`: stop at once (KeyboardInterrupt, as by default), and
    remember it, so the watch stops even when the round in progress swallows the
    interrupt. By default asyncio.run turns Ctrl-C into a cancellation of its task,
    which code under it can lose (asyncio.wait_for on Python 3.11 drops one arriving as
    its awaited call completes), and the watch then went on as if nothing was pressed."""
    interrupted.set()
    raise KeyboardInterrupt


def add_ops_commands(group: click.Group) -> None:
    """Register `kv completion` and add `--watch` to `kv status` (call once all commands
    are in the group)."""
    group.add_command(completion_command)
    with_watch(group.commands["status"])
