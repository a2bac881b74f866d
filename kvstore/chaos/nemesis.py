"""Faults on a schedule: kill, pause, partition and delay, each healed after a bounded time.

A schedule is plain data made in advance from a seed (or a name), so a run can be
repeated: the times, kinds, variants and durations are fixed, and so is every random
choice of target except "the leader", which only the running cluster can say.

Two tracks run side by side. The main track holds process and partition faults one at
a time, so at most one of them is in force and a majority is usually reachable (the
point is to test safety under faults, but a cluster that never answers tests nothing).
When delay is among the kinds, a second track adds slow or lossy links that may overlap
the main track's faults: slowness composes with everything else.

Network faults are composed, not overwritten: each active fault contributes link states
and every link gets the combination (blocked if any blocks, the largest delay and loss),
so healing one fault never heals another. Every fault ends before the schedule's end,
and `heal_all` restores everything whatever was interrupted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore.chaos.cluster import LocalCluster
from kvstore.chaos.proxy import PASS, LinkState

KINDS: tuple[str, ...] = ("kill", "pause", "partition", "delay")
VARIANTS: dict[str, tuple[str, ...]] = {
    "kill": ("leader", "random"),
    "pause": ("leader", "random"),
    "partition": ("isolate-leader", "split", "bridge", "one-way"),
    "delay": ("slow", "lossy"),
}
NAMED_SCHEDULES: dict[str, tuple[str, ...]] = {
    "mixed": KINDS,
    "leader-churn": ("kill", "pause"),
    "partitions": ("partition",),
    "flaky-network": ("delay", "partition"),
}
"""Named schedules: the kinds they draw from (the seed still fixes times and variants)."""
END_MARGIN_S = 0.5


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """One fault of a schedule: when, how long, what, and a seeded number for its targets."""

    at: float
    duration: float
    kind: str
    variant: str
    pick: int
    track: str = "main"

    @property
    def end(self) -> float:
        return self.at + self.duration


@dataclass
class FaultWindow:
    """A fault as it happened: on the run's clock, with the nodes it hit."""

    kind: str
    variant: str
    start: float
    end: float | None = None
    targets: list[str] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "variant": self.variant,
            "start": round(self.start, 6),
            "end": None if self.end is None else round(self.end, 6),
            "targets": self.targets,
            "detail": self.detail,
        }

    def label(self) -> str:
        return f"{self.kind}:{self.variant} {','.join(self.targets)}".strip()


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown fault kinds {bad or [text]}: choose from {', '.join(KINDS)}")
    return kinds


def random_schedule(
    seed: int,
    duration: float,
    kinds: Sequence[str] = KINDS,
    *,
    lengths: tuple[float, float] = (2.0, 5.0),
    gaps: tuple[float, float] = (0.3, 1.0),
    start: float = 0.5,
) -> list[PlannedFault]:
    """A deterministic schedule: same seed and arguments, same faults.

    Every fault lies within [start, duration - END_MARGIN_S], so all are healed before
    the workload ends. A fault that would not fit at least its minimum length is not
    planned.
    """
    rng = random.Random(seed)
    main_kinds = [k for k in kinds if k != "delay"] or ["delay"]
    plan = _track(rng, duration, main_kinds, lengths, gaps, start, "main")
    if "delay" in kinds and main_kinds != ["delay"]:
        slow_gaps = (gaps[0] * 3, gaps[1] * 4)
        plan += _track(rng, duration, ["delay"], lengths, slow_gaps, start + 1.0, "network")
    return sorted(plan, key=lambda f: (f.at, f.track))


def named_schedule(name: str, seed: int, duration: float) -> list[PlannedFault]:
    if name not in NAMED_SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: choose from {', '.join(NAMED_SCHEDULES)}")
    return random_schedule(seed, duration, NAMED_SCHEDULES[name])


def _track(
    rng: random.Random,
    duration: float,
    kinds: Sequence[str],
    lengths: tuple[float, float],
    gaps: tuple[float, float],
    start: float,
    track: str,
) -> list[PlannedFault]:
    plan: list[PlannedFault] = []
    at, end = start, duration - END_MARGIN_S
    while at + lengths[0] <= end:
        kind = rng.choice(list(kinds))
        variant = rng.choice(VARIANTS[kind])
        length = min(rng.uniform(*lengths), end - at)
        plan.append(
            PlannedFault(
                round(at, 3), round(length, 3), kind, variant, rng.randrange(1 << 30), track
            )
        )
        at += length + rng.uniform(*gaps)
    return plan


def faulted_time(windows: Sequence[tuple[float, float]]) -> float:
    """Seconds covered by at least one window (overlaps counted once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(windows):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


ClientFault = Callable[[PlannedFault, FaultWindow], Awaitable[Callable[[], Any] | None]]
"""A fault on the workload's own processes (e.g. pausing a lock holder): applies it,
sets the window's targets and detail, and returns how to undo it (None: nothing done)."""


class Nemesis:
    """Runs a schedule against a LocalCluster and records what it did."""

    def __init__(
        self,
        cluster: LocalCluster,
        schedule: Sequence[PlannedFault],
        now: Callable[[], float],
        client_faults: Mapping[str, ClientFault] | None = None,
    ) -> None:
        self.cluster = cluster
        self.client_faults = dict(client_faults or {})
        """Extra fault kinds a workload brings, by kind."""
        self.schedule = list(schedule)
        self.now = now
        self.windows: list[FaultWindow] = []
        self.active: dict[int, FaultWindow] = {}
        self._net: dict[int, dict[tuple[str, str], LinkState]] = {}
        self._undo: dict[int, Callable[[], Any]] = {}
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Play every track to its end; cancel to stop early (then call heal_all)."""
        tracks = sorted({f.track for f in self.schedule})
        await asyncio.gather(
            *(self._play([f for f in self.schedule if f.track == t]) for t in tracks)
        )

    async def _play(self, faults: Sequence[PlannedFault]) -> None:
        for fault in faults:
            await _sleep_until(self.now, fault.at)
            ident = await self.begin(fault)
            await _sleep_until(self.now, fault.end)
            await self.heal(ident)

    async def heal_all(self) -> None:
        """Heal whatever is still in force (also after cancellation), then all links."""
        for ident in list(self.active):
            await self.heal(ident)
        self.cluster.net.heal()
        for node_id in self.cluster.ids:
            if node_id in self.cluster.paused:
                self.cluster.resume(node_id)
            if not self.cluster.running(node_id):
                self.cluster.start_node(node_id)

    def describe_active(self) -> str:
        return "; ".join(w.label() for w in self.active.values()) or "none"

    # -------------------------------------------------------------- applying faults

    async def begin(self, fault: PlannedFault) -> int:
        async with self._lock:
            rng = random.Random(fault.pick)
            ids = list(self.cluster.ids)
            wants_leader = fault.variant in ("leader", "isolate-leader", "one-way")
            leader = await self.cluster.leader() if wants_leader else None
            window = FaultWindow(fault.kind, fault.variant, self.now())
            ident = len(self.windows)
            self.windows.append(window)
            self.active[ident] = window
            client_fault = self.client_faults.get(fault.kind)
            if client_fault is not None:
                undo = await client_fault(fault, window)
                if undo is not None:
                    self._undo[ident] = undo
            elif fault.kind in ("kill", "pause"):
                node = leader or rng.choice(ids)
                window.targets = [node]
                await self._process_fault(ident, fault.kind, node)
            elif fault.kind == "partition":
                links, detail, targets = self._partition(fault.variant, ids, leader, rng)
                self._set_net(ident, links, window, detail, targets)
            else:
                links, detail = self._slow(fault.variant, ids, rng)
                touched = sorted({node for pair in links for node in pair})
                self._set_net(ident, links, window, detail, touched)
            window.start = self.now()
            return ident

    async def _process_fault(self, ident: int, kind: str, node: str) -> None:
        cluster = self.cluster
        if kind == "kill":
            await cluster.kill9(node)
            self._undo[ident] = lambda: cluster.start_node(node)
        else:
            cluster.pause(node)
            self._undo[ident] = lambda: cluster.resume(node)

    def _set_net(
        self,
        ident: int,
        links: dict[tuple[str, str], LinkState],
        window: FaultWindow,
        detail: str,
        targets: list[str],
    ) -> None:
        self._net[ident] = links
        window.targets = targets
        window.detail = detail
        self._apply_net()

    async def heal(self, ident: int) -> None:
        async with self._lock:
            window = self.active.pop(ident, None)
            if window is None:
                return
            undo = self._undo.pop(ident, None)
            if undo is not None:
                undo()
            if self._net.pop(ident, None) is not None:
                self._apply_net()
            window.end = self.now()

    def _apply_net(self) -> None:
        """Give every link the combination of what the active faults ask of it."""
        net = self.cluster.net
        for pair in net.links:
            wanted = [links[pair] for links in self._net.values() if pair in links]
            state = PASS
            if wanted:
                state = LinkState(
                    blocked=any(s.blocked for s in wanted),
                    delay_s=max(s.delay_s for s in wanted),
                    jitter_s=max(s.jitter_s for s in wanted),
                    loss=max(s.loss for s in wanted),
                )
            if net.state(*pair) != state:
                net.set(*pair, state)

    def _partition(
        self, variant: str, ids: list[str], leader: str | None, rng: random.Random
    ) -> tuple[dict[tuple[str, str], LinkState], str, list[str]]:
        """Links to cut, a description, and the nodes singled out (the smaller side)."""
        blocked = LinkState(blocked=True)
        if variant == "one-way":
            node = leader or rng.choice(ids)
            outbound = rng.random() < 0.5
            pairs = [(node, o) if outbound else (o, node) for o in ids if o != node]
            what = f"{node} cannot send" if outbound else f"{node} cannot receive"
            return {p: blocked for p in pairs}, what, [node]
        if variant == "bridge" and len(ids) >= 3:
            bridge = rng.choice(ids)
            rest = [n for n in ids if n != bridge]
            rng.shuffle(rest)
            left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
            groups = [left, right]
            what = f"{' '.join(left)} | {' '.join(right)}, bridged by {bridge}"
            targets = [bridge]
        elif variant == "isolate-leader" or (variant == "bridge" and len(ids) < 3):
            alone = leader or rng.choice(ids)
            groups = [[alone], [n for n in ids if n != alone]]
            what = f"{alone} | {' '.join(groups[1])}"
            targets = [alone]
        else:  # split: a random minority against the majority
            minority = rng.sample(ids, max(1, (len(ids) - 1) // 2))
            groups = [minority, [n for n in ids if n not in minority]]
            what = f"{' '.join(groups[0])} | {' '.join(groups[1])}"
            targets = sorted(minority)
        group_of = {n: i for i, group in enumerate(groups) for n in group}
        pairs = [
            (a, b)
            for a in ids
            for b in ids
            if a in group_of and b in group_of and group_of[a] != group_of[b]
        ]
        return {p: blocked for p in pairs}, what, targets

    def _slow(
        self, variant: str, ids: list[str], rng: random.Random
    ) -> tuple[dict[tuple[str, str], LinkState], str]:
        pairs = [(a, b) for a in ids for b in ids if a != b]
        chosen = rng.sample(pairs, rng.randint(max(1, len(pairs) // 3), len(pairs)))
        # Bounded so a round trip stays under the default election timeout (150-300 ms):
        # slower links make a 3-node cluster unable to elect at all, which tests nothing.
        delay = rng.uniform(0.005, 0.05)
        jitter = rng.uniform(0.0, delay / 2)
        loss = rng.uniform(0.02, 0.10) if variant == "lossy" else 0.0
        state = LinkState(delay_s=delay, jitter_s=jitter, loss=loss)
        links = ", ".join(f"{a}->{b}" for a, b in sorted(chosen))
        return {p: state for p in chosen}, f"{state.describe()} on {links}"


async def _sleep_until(now: Callable[[], float], at: float) -> None:
    """Sleep to a point on the run's clock (re-checked, since sleeps may end early)."""
    while (left := at - now()) > 0:
        await asyncio.sleep(min(left, 0.5))


def monotonic_clock() -> Callable[[], float]:
    """Seconds since this call, on the monotonic clock every part of a run shares."""
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0
