"""`kv --version`, `kv completion bash|zsh|fish` (what an operator installs once), and
Ctrl-C under `--watch`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kvstore.cli.main import cli
from kvstore.cli.ops_commands import add_ops_commands

KV = Path(sys.executable).parent / "kv"


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == "kv, version 0.1.0"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert f"_KV_COMPLETE={shell}_complete" in result.output
    checker = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}[
        shell
    ]
    if shutil.which(checker[0]):
        subprocess.run([*checker], input=result.output, text=True, check=True)


def test_completion_answers_for_the_installed_command() -> None:
    """What the bash script asks the `kv` program at a TAB, and what it answers."""
    if not KV.exists():
        pytest.skip(f"no installed kv script next to {sys.executable}")
    env = {
        **os.environ,
        "COMP_WORDS": "kv member a",
        "COMP_CWORD": "2",
        "_KV_COMPLETE": "bash_complete",
    }
    out = subprocess.run([str(KV)], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["plain,add"], out
    env.update(COMP_WORDS="kv completion ", COMP_CWORD="2")
    out = subprocess.run([str(KV)], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["plain,bash", "plain,zsh", "plain,fish"], out


def test_unknown_shell_is_refused() -> None:
    result = CliRunner().invoke(cli, ["completion", "powershell"])
    assert result.exit_code == 2 and "powershell" in result.output


def test_ctrl_c_stops_a_watch_even_when_the_round_swallows_it() -> None:
    """`kv status --watch` went on forever when the Ctrl-C that landed during a round
    was lost inside it (a cancellation swallowed under asyncio.run): the watch must
    stop after that round all the same."""
    rounds = []

    @click.command("status")
    def status() -> None:
        rounds.append(1)
        assert len(rounds) <= 2, "the watch went on after Ctrl-C"
        if len(rounds) == 2:
            try:
                signal.raise_signal(signal.SIGINT)  # its handler runs before this returns
            except KeyboardInterrupt:
                click.echo("interrupt swallowed")

    group = click.Group(commands=[status])
    add_ops_commands(group)
    before = signal.getsignal(signal.SIGINT)
    result = CliRunner().invoke(group, ["status", "--watch", "0.1"])
    assert result.exception is None, result.output
    assert (len(rounds), "interrupt swallowed" in result.output) == (2, True)
    assert signal.getsignal(signal.SIGINT) is before
