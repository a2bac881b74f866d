"""A seeded in-memory network between node ids.

Every message gets a random delivery delay in ticks, so messages overtake each other
(reordering) naturally; on top of that a message can be dropped, duplicated or held
back much longer. Partitions are a set of cut directed links, checked at delivery time
so that a partition also swallows what was already in flight. All randomness comes
from the one `random.Random` the simulator hands in, which makes every run replayable.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from consensus import AppendEntries, InstallSnapshot, Message, NodeId


@dataclass(slots=True)
class NetConfig:
    """Steady-state behaviour of the links; bursts temporarily raise these."""

    min_delay: int = 1
    max_delay: int = 3
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    """Probability that a message is held back by up to `reorder_extra` more ticks."""
    reorder_extra: int = 10
    snapshot_echo: float = 0.0
    """Probability that an InstallSnapshot comes with an echo: the previous, different
    InstallSnapshot sent to the same node (an older snapshot, maybe of an older term)
    arrives again right behind it, and this one arrives once more later. Deliveries
    that race an install, as a late retry or a slow stale message would."""
    legacy: frozenset[NodeId] = frozenset()
    """Nodes that predate AppendEntries.commit_only: the transport sends them plain
    appends (kvstore.peers.link), so they answer every append, as before."""


@dataclass(slots=True)
class NetStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    cut: int = 0


@dataclass(slots=True)
class _Burst:
    until: int
    probability: float
    extra: int = 0


@dataclass(slots=True)
class Network:
    """Holds messages in flight, ordered by (delivery tick, send sequence)."""

    rng: random.Random
    nodes: Sequence[NodeId]
    config: NetConfig = field(default_factory=NetConfig)
    now: int = 0
    stats: NetStats = field(default_factory=NetStats)
    _queue: list[tuple[int, int, Message]] = field(default_factory=list)
    _seq: int = 0
    _cuts: set[tuple[NodeId, NodeId]] = field(default_factory=set)
    _snapshots_sent: dict[NodeId, InstallSnapshot] = field(default_factory=dict)
    """The last InstallSnapshot sent to each node, which `snapshot_echo` re-delivers."""
    _drop_burst: _Burst | None = None
    _dup_burst: _Burst | None = None
    _delay_burst: _Burst | None = None
    _hold: Callable[[Message], bool] | None = None
    _held: list[Message] = field(default_factory=list)

    # ----------------------------------------------------------------- sending
    def send(self, msg: Message) -> None:
        """Queue `msg` for delivery (or lose it), deciding its fate now from the rng."""
        self.stats.sent += 1
        if type(msg) is AppendEntries and msg.commit_only and msg.recipient in self.config.legacy:
            msg = dataclasses.replace(msg, commit_only=False)
        if self.rng.random() < self._drop_probability():
            self.stats.dropped += 1
            return
        self._enqueue(msg)
        if self.rng.random() < self._dup_probability():
            self.stats.duplicated += 1
            self._enqueue(msg)
        if self.config.snapshot_echo and isinstance(msg, InstallSnapshot):
            self._echo_snapshot(msg)

    def _echo_snapshot(self, msg: InstallSnapshot) -> None:
        previous = self._snapshots_sent.get(msg.recipient)
        self._snapshots_sent[msg.recipient] = msg
        if self.rng.random() >= self.config.snapshot_echo:
            return
        if previous is not None and previous != msg:
            self.stats.duplicated += 1
            self._enqueue(previous, self.rng.randint(0, 2))
        self.stats.duplicated += 1
        self._enqueue(msg, self.rng.randint(1, self.config.reorder_extra))

    def _enqueue(self, msg: Message, later: int = 0) -> None:
        cfg = self.config
        delay = later + self.rng.randint(cfg.min_delay, cfg.max_delay)
        if self.rng.random() < cfg.reorder:
            delay += self.rng.randint(1, cfg.reorder_extra)
        burst = self._active(self._delay_burst)
        if burst is not None and self.rng.random() < burst.probability:
            delay += self.rng.randint(1, burst.extra)
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, msg))

    def _drop_probability(self) -> float:
        burst = self._active(self._drop_burst)
        return max(self.config.drop, burst.probability if burst else 0.0)

    def _dup_probability(self) -> float:
        burst = self._active(self._dup_burst)
        return max(self.config.duplicate, burst.probability if burst else 0.0)

    def _active(self, burst: _Burst | None) -> _Burst | None:
        return burst if burst is not None and burst.until > self.now else None

    # -------------------------------------------------------------- delivering
    def due(self) -> list[Message]:
        """Pop every message due at or before `now`, minus those on cut links."""
        out: list[Message] = []
        while self._queue and self._queue[0][0] <= self.now:
            _, _, msg = heapq.heappop(self._queue)
            if (msg.sender, msg.recipient) in self._cuts:
                self.stats.cut += 1
                continue
            if self._hold is not None and self._hold(msg):
                self._held.append(msg)
                continue
            self.stats.delivered += 1
            out.append(msg)
        return out

    def in_flight(self) -> int:
        return len(self._queue)

    # --------------------------------------------------------------- faults
    def partition(self, groups: Iterable[Iterable[NodeId]]) -> None:
        """Symmetric partition: nodes in different groups cannot talk. Nodes not named in
        any group form one more group of their own."""
        group_of: dict[NodeId, int] = {}
        for number, group in enumerate(groups):
            for node in group:
                group_of[node] = number
        for a in self.nodes:
            for b in self.nodes:
                if a != b and group_of.get(a, -1) != group_of.get(b, -1):
                    self._cuts.add((a, b))

    def isolate(self, node: NodeId) -> None:
        self.partition([[node]])

    def cut(self, sender: NodeId, recipient: NodeId) -> None:
        """One-way cut: `sender` can no longer reach `recipient` (the reverse still works)."""
        self._cuts.add((sender, recipient))

    def hold(self, which: Callable[[Message], bool]) -> None:
        """Hold back every message `which` picks when it falls due, until `release`: one
        kind of message overtaken by all others on its link, for scripted scenarios."""
        self._hold = which

    def release(self) -> None:
        """Deliver what was held back, in its order, from the next tick on."""
        held, self._hold, self._held = self._held, None, []
        for msg in held:
            self._enqueue(msg)

    def heal(self) -> None:
        """Remove every partition and cut, and end any burst."""
        self._cuts.clear()
        self._drop_burst = self._dup_burst = self._delay_burst = None

    def is_healed(self) -> bool:
        return not self._cuts

    def drop_burst(self, ticks: int, probability: float) -> None:
        self._drop_burst = _Burst(self.now + ticks, probability)

    def duplicate_burst(self, ticks: int, probability: float) -> None:
        self._dup_burst = _Burst(self.now + ticks, probability)

    def delay_burst(self, ticks: int, probability: float, extra: int) -> None:
        self._delay_burst = _Burst(self.now + ticks, probability, max(1, extra))

    def describe_cuts(self) -> str:
        return ", ".join(f"{a}->{b}" for a, b in sorted(self._cuts)) or "none"
