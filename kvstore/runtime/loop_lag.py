"""How late the event loop runs: the measure of every stall a node's loop suffers.

Why: everything a node does (Raft ticks and heartbeats, applying, answering clients)
runs on one event loop, so any callback that holds it (a big copy, a synchronous
write, a GC pass) delays all of it; a stall longer than the election timeout costs a
leader its office. The node's clock (kvstore.runtime.clock) sleeps until each tick is
due; `LagProbe` records how late it woke in RuntimeStats.loop_lag (the worst since
start-up, and a histogram for `GET /metrics`), and warns in the log of any stall over
WARN_S. (It had a timer of its own, waking the loop 100 times a second besides the
ticks.)

A late wake-up has three possible causes: this process's own work (a long callback on
the loop, or another thread holding the GIL), a blocking call on the loop (a synchronous
fsync), or the machine not running the process at all (more runnable threads than
cores). The third is not the node's doing, so each stall is also recorded as the part
of it the process spent on a CPU (`busy`: the lateness, capped at the process CPU time
used since the previous wake-up), an upper bound of the self-inflicted stall: it also
counts the node's other threads (LevelDB's compaction, the snapshot writer, the leader's
fsync thread) running on another core while the loop waited on the disk or for a CPU.
So each stall is also recorded as the event loop thread's own CPU time (`loop_cpu`), a
lower bound: the time the loop spent running callbacks (it leaves out waiting for the
GIL a worker thread held). At a million keys the two differ by up to ~50 ms.
"""

from __future__ import annotations

import logging
import time

from kvstore.runtime.stats import LoopLag

log = logging.getLogger("kvstore.loop")

WARN_S = 0.05


class LagProbe:
    """Measures one sleep at a time: `arm` just before it, `woke` with how late it ended."""

    def __init__(self, lag: LoopLag) -> None:
        self._lag = lag
        self._cpu = self._own = 0.0

    def arm(self) -> None:
        self._cpu, self._own = time.process_time(), time.thread_time()

    def woke(self, late: float) -> None:
        late = max(0.0, late)
        busy = min(late, time.process_time() - self._cpu)
        loop_cpu = min(late, time.thread_time() - self._own)
        self._lag.observe(late, busy, loop_cpu)
        if late > WARN_S:
            log.warning(
                "event loop stalled for %.0f ms (the process was on a CPU for %.0f ms of it "
                "at most, the event loop's thread for %.0f ms)",
                late * 1000,
                busy * 1000,
                loop_cpu * 1000,
            )
