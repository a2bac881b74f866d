"""Histories of a simulated, correct key-value store, for testing the checker.

A discrete-event simulation: each client issues one request at a time; every request
takes effect on an atomic in-memory store at one instant inside its interval (so the
history is linearizable by construction) and its answer is what that instant produced.
Faults are imitated by outcomes: some writes are answered "unknown" (they take effect
late, possibly after the client gave up and moved on, or never) and some "fail" with
no_leader (never applied). Every written value is unique, which the tests' corruptions
rely on to make a read provably wrong.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from kvstore.chaos.history import Operation


@dataclass
class _Pending:
    client: int
    kind: str
    key: str
    call: float
    ret: float
    fate: str  # "ok", "unknown-applied", "unknown-lost", "no_leader"
    value: bytes | None = None
    prev_version: int | None = None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Store:
    data: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    revision: int = 0

    def apply(self, p: _Pending) -> dict[str, Any]:
        current = self.data.get(p.key)
        version = 0 if current is None else current[1]
        if p.kind == "get":
            if current is None:
                return {"found": False}
            return {"found": True, "read_value": current[0], "read_version": version}
        if p.kind == "delete" and current is None:
            return {"outcome": "fail", "error": "not_found"}
        if p.prev_version is not None and p.prev_version != version:
            return {"outcome": "fail", "error": "version_mismatch", "version": version}
        self.revision += 1
        if p.kind == "delete":
            del self.data[p.key]
            return {"revision": self.revision}
        assert p.value is not None
        self.data[p.key] = (p.value, version + 1)
        return {"revision": self.revision, "version": version + 1}


def simulate(
    rng: random.Random,
    *,
    clients: int = 5,
    operations: int = 100,
    keys: int = 2,
    unknown_rate: float = 0.1,
    fail_rate: float = 0.05,
) -> list[Operation]:
    """A linearizable history of `operations` operations; see the module docstring."""
    store = _Store()
    key_names = [f"k{i}" for i in range(keys)]
    seen_version: dict[tuple[int, str], int] = {}
    events: list[tuple[float, int, str, Any]] = []
    seq = 0

    def schedule(at: float, what: str, payload: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, what, payload))

    for c in range(clients):
        schedule(rng.uniform(0, 1), "call", c)
    issued = 0
    history: list[Operation] = []
    while events:
        now, _, what, payload = heapq.heappop(events)
        if what == "call":
            if issued >= operations:
                continue
            issued += 1
            p = _new_request(rng, payload, now, key_names, seen_version, issued)
            roll = rng.random()
            if p.kind != "get" and roll < unknown_rate:
                p.fate = rng.choice(["unknown-applied", "unknown-lost"])
            elif roll > 1 - fail_rate:
                p.fate = "no_leader"
            if p.fate in ("ok", "unknown-applied"):
                late = p.fate == "unknown-applied" and rng.random() < 0.5
                end = p.ret + rng.uniform(0, 5 * (p.ret - p.call)) if late else p.ret
                schedule(rng.uniform(p.call, end), "apply", p)
            schedule(p.ret, "return", p)
        elif what == "apply":
            payload.result = store.apply(payload)
        else:
            p = payload
            history.append(_record(p))
            if p.fate == "ok" and p.kind == "get":
                seen_version[(p.client, p.key)] = p.result.get("read_version", 0)
            elif p.fate == "ok" and "version" in p.result:
                seen_version[(p.client, p.key)] = p.result["version"]
            schedule(p.ret + rng.expovariate(20), "call", p.client)
    return history


def _new_request(
    rng: random.Random,
    client: int,
    now: float,
    key_names: list[str],
    seen_version: dict[tuple[int, str], int],
    number: int,
) -> _Pending:
    key = rng.choice(key_names)
    kind = rng.choices(["get", "put", "cas", "delete"], weights=[5, 3, 2, 1])[0]
    duration = rng.expovariate(10) + 0.001
    p = _Pending(client, kind, key, now, now + duration, "ok")
    if kind in ("put", "cas"):
        p.value = f"v{number}-c{client}".encode()
    if kind == "cas" or (kind == "delete" and rng.random() < 0.5):
        known = seen_version.get((client, key), 0)
        p.prev_version = max(0, known + rng.choice([0, 0, 0, 1, -1]))
    return p


def _record(p: _Pending) -> Operation:
    common: dict[str, Any] = {
        "client": p.client,
        "kind": p.kind,
        "key": p.key,
        "call": p.call,
        "value": p.value,
        "prev_version": p.prev_version,
    }
    if p.fate.startswith("unknown"):
        return Operation(**common, ret=None, outcome="unknown")
    if p.fate == "no_leader":
        return Operation(**common, ret=p.ret, outcome="fail", error="no_leader")
    result = dict(p.result)
    outcome = result.pop("outcome", "ok")
    return Operation(**common, ret=p.ret, outcome=outcome, **result)
