"""Run many seeded fault schedules, or replay one with a verbose trace.

    python -m tests.sim.soak --seeds 5000 [--start 0] [--nodes 3|5] [--steps 300]
    python -m tests.sim.soak --replay SEED [--nodes 3|5] [--steps 300] [--messages]

A schedule is fully determined by (seed, nodes, steps), so the replay command printed
on failure reproduces the failure exactly, in any process.
"""

from __future__ import annotations

import sys
import time

import click

from tests.sim.checkers import SimFailure
from tests.sim.swarm import replay_command, run_schedule


@click.command()
@click.option("--seeds", type=int, default=1000, show_default=True, help="Schedules to run.")
@click.option("--start", type=int, default=0, show_default=True, help="First seed.")
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True)
@click.option("--steps", type=int, default=300, show_default=True, help="Chaos ticks per run.")
@click.option("--replay", type=int, default=None, help="Replay this one seed, verbosely.")
@click.option("--messages", is_flag=True, help="With --replay: trace every delivered message.")
@click.option("--keep-going", is_flag=True, help="Do not stop at the first failing seed.")
def main(
    seeds: int,
    start: int,
    nodes: str,
    steps: int,
    replay: int | None,
    messages: bool,
    keep_going: bool,
) -> None:
    n = int(nodes)
    if replay is not None:
        sys.exit(_replay(replay, n, steps, messages))
    sys.exit(_soak(seeds, start, n, steps, keep_going))


def _replay(seed: int, nodes: int, steps: int, messages: bool) -> int:
    click.echo(f"replaying seed {seed} with {nodes} nodes, {steps} steps")
    try:
        result = run_schedule(seed, nodes, steps, verbose=True, trace_messages=messages)
    except SimFailure as failure:
        click.echo(f"\nFAILED\n{failure}")
        return 1
    click.echo(
        f"\nok: {result.committed} entries committed, liveness in {result.liveness_ticks} "
        f"ticks, {result.counters}, fingerprint {result.fingerprint:08x}"
    )
    return 0


def _soak(seeds: int, start: int, nodes: int, steps: int, keep_going: bool) -> int:
    began = last_report = time.monotonic()
    failed: list[int] = []
    for done, seed in enumerate(range(start, start + seeds), 1):
        try:
            run_schedule(seed, nodes, steps)
        except SimFailure as failure:
            failed.append(seed)
            click.echo(f"\nseed {seed} FAILED:\n{failure}\n")
            click.echo(f"replay with: {replay_command(seed, nodes, steps)}")
            if not keep_going:
                break
        now = time.monotonic()
        if now - last_report >= 2.0 or done == seeds:
            last_report = now
            rate = done / (now - began)
            click.echo(
                f"[{done}/{seeds}] seeds {start}..{seed}: {rate:.1f} schedules/s, "
                f"{len(failed)} failed"
            )
    elapsed = time.monotonic() - began
    click.echo(f"done in {elapsed:.1f}s; failing seeds: {failed or 'none'}")
    for seed in failed:
        click.echo(f"  {replay_command(seed, nodes, steps)}")
    return 1 if failed else 0


if __name__ == "__main__":
    main()
