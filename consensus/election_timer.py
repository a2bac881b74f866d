"""ElectionTimer: when a follower, pre-candidate or candidate (re)starts an election.

The usual rule (§3.4): campaign after a random timeout in [election_tick,
2 * election_tick) without word from a leader. That timeout must be long, because a
slow heartbeat is not a dead leader. A *broken connection* to the leader is better
evidence: a process killed with SIGKILL has its sockets reset by the kernel at once,
so the driver can tell the core (RaftNode.peer_unreachable) long before the timeout.

A timer told so is *hurried*, and two things change until its turns are over or the
leader is heard again (`heard_leader`):
- its lease (RaftNode._in_lease: a node that heard a leader lately refuses pre-votes
  and votes) shrinks from an election timeout to `heartbeat_tick + 2` ticks since
  the leader's last message: longer than a heartbeat interval and its jitter, so a
  node told wrongly still refuses while the leader is heard; short enough that the
  other survivors of a dead leader grant each other's pre-votes soon;
- it fires once `elapsed` (ticks since the leader's last message) reaches one tick
  beyond that lease (the others' leases have ended by then, whatever the phase of
  their ticks), plus 2 ticks per voter ranked before this node among the survivors
  (voter ids sorted, the lost leader left out): the survivors take turns instead of
  campaigning in one tick and splitting the vote, which would cost a whole
  randomized timeout more.

Why a hurried timer cannot depose a healthy leader (the node decides, see RaftNode):
the campaign starts with a pre-vote, which every node that heard the leader within
its lease refuses, told or not; and it waits longer than a heartbeat interval, so a
leader that is in fact still reachable is heard first, which calms the timer down.
So even when every follower is told at once, none campaigns while the network
delivers heartbeats within two ticks; and one that really lost the leader (a
partition, one-way or not) gets no pre-vote from the nodes that still hear it.

A hurried node has `HURRIED_TURNS` turns, one every `2 * survivors` ticks, so that
the survivors' turns interleave: a first pre-vote may meet a survivor whose lease
has not quite ended (its ticks lag), or a log longer than the candidate's, and the
next turn must not wait a whole randomized timeout. After them, or once it becomes
a candidate, the usual random timeout is back.
"""

from __future__ import annotations

from consensus.config import Config
from consensus.types import RandomSource

LEASE_MARGIN_TICKS = 2
"""Ticks beyond a heartbeat interval that a hurried node still counts on its leader."""
TURN_TICKS = 2
"""Ticks between the turns of two survivors: more than a pre-vote and vote round."""
HURRIED_TURNS = 3


class ElectionTimer:
    __slots__ = ("_config", "_period", "_rng", "elapsed", "timeout", "turns")

    def __init__(self, config: Config, rng: RandomSource) -> None:
        self._config = config
        self._rng = rng
        self.elapsed = 0
        """Ticks since the last restart: since we last heard a leader, granted a vote
        or campaigned (the lease of RaftNode._in_lease is counted in it too)."""
        self.timeout = config.election_tick
        self.turns = 0
        """Early campaigns left (see `hurry`); 0: the usual random timeout."""
        self._period = 0

    def restart(self) -> None:
        """A new term or role: count from zero towards a fresh random timeout."""
        self.elapsed = 0
        self._randomize()

    def heard_leader(self) -> None:
        """A leader's message: count from zero (and forget any hurry: it is alive)."""
        self.elapsed = 0
        if self.turns:
            self._randomize()

    def tick(self, promotable: bool) -> bool:
        """Advance one tick; True when a promotable node must campaign now."""
        self.elapsed += 1
        if not promotable or self.elapsed < self.timeout:
            return False
        self.elapsed = 0
        if self.turns:
            self.turns -= 1
            if self.turns:
                self.timeout = self._period
            else:
                self._randomize()
        return True

    def hurry(self, rank: int, survivors: int) -> None:
        """Fire early (see the module docstring); `rank`: survivors before us in turn."""
        self.turns = HURRIED_TURNS
        self._period = TURN_TICKS * survivors
        early = self._config.heartbeat_tick + LEASE_MARGIN_TICKS + 1 + TURN_TICKS * rank
        self.timeout = min(self.timeout, early)

    def lease(self) -> int:
        """Ticks after the leader's last message during which we still count on it."""
        if self.turns:
            return self._config.heartbeat_tick + LEASE_MARGIN_TICKS
        return self._config.election_tick

    def state(self) -> tuple[int, int, int, int]:
        return self.elapsed, self.timeout, self.turns, self._period

    def restore(self, state: tuple[int, int, int, int]) -> None:
        """Keep running as before a role change that must not restart the timer."""
        self.elapsed, self.timeout, self.turns, self._period = state

    def _randomize(self) -> None:
        self.turns = 0
        tick = self._config.election_tick
        self.timeout = self._rng.randrange(tick, 2 * tick)
