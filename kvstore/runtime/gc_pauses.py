"""How long the cyclic garbage collector holds the process, per collection.

Why: a collection runs on whichever thread allocated last, holding the GIL, so the
event loop waits for all of it. Its cost is the number of tracked objects in the
generations collected: with a million per-key objects a full (generation 2) collection
took hundreds of ms and cost leaders their office. The per-key records are now
untracked bytes (kvstore.state.records), so collections should stay short; this makes
that visible: every collection is timed (`gc.callbacks`), the longest per generation is
kept for `GET /v1/status` and `/metrics`, and one over WARN_S is logged at WARNING
with its generation and the objects it freed, so a stall in the loop-lag warnings
(kvstore.runtime.loop_lag) can be told apart from the collector's.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger("kvstore.gc")

WARN_S = 0.02


class GcPauses:
    """Times every collection while installed; `max_s[g]`: the longest of generation g."""

    def __init__(self, warn_s: float = WARN_S) -> None:
        self.warn_s = warn_s
        self.max_s = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self.total_s = 0.0
        self._started = 0.0

    def install(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self.counts[generation] += 1
        self.total_s += took
        if took > self.max_s[generation]:
            self.max_s[generation] = took
        if took > self.warn_s:
            log.warning(
                "garbage collection of generation %d took %.0f ms (%d objects freed, "
                "%d uncollectable)",
                generation,
                took * 1000,
                info["collected"],
                info["uncollectable"],
            )
