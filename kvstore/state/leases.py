"""Leases in the replicated state: which exist, their TTL, and the keys attached to them.

Only facts the log decides live here. When a lease ends is not one of them: time is
the leader's business (kvstore.runtime.leases), which proposes a `LeaseRevoke` when a
lease was not kept alive. Apply therefore never reads a clock, and every replica ends
a lease at the same log index.

A lease's id is the index of the entry that granted it: unique for the cluster's
life (indexes never repeat), and known to every replica without coordination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Lease:
    id: int
    ttl: int
    """Seconds the lease lives without a keep-alive."""
    keys: set[str] = field(default_factory=set)


class LeaseTable:
    """Leases by id, and the lease each attached key belongs to."""

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._key_lease: dict[str, int] = {}

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def ttls(self) -> dict[int, int]:
        """Every lease's TTL by id (the runtime's expiry timer follows this)."""
        return {lease.id: lease.ttl for lease in self._leases.values()}

    def lease_of(self, key: str) -> int:
        """The lease `key` is attached to, 0 for none."""
        return self._key_lease.get(key, 0)

    def grant(self, lease_id: int, ttl: int) -> None:
        self._leases[lease_id] = Lease(lease_id, ttl)

    def attach(self, key: str, lease_id: int) -> None:
        """Tie `key` to `lease_id` (0: to none), leaving any lease it had, as a put
        without a lease does in etcd: the newest write says how long the key lives."""
        old = self._key_lease.pop(key, 0)
        if old:
            self._leases[old].keys.discard(key)
        if lease_id:
            self._leases[lease_id].keys.add(key)
            self._key_lease[key] = lease_id

    def revoke(self, lease_id: int) -> list[str]:
        """Remove the lease; returns its keys in sorted order (the caller deletes them,
        and a set's order could differ between replicas)."""
        lease = self._leases.pop(lease_id)
        for key in lease.keys:
            del self._key_lease[key]
        return sorted(lease.keys)

    def to_wire(self) -> list[Any]:
        return [
            (lease.id, lease.ttl, sorted(lease.keys)) for _, lease in sorted(self._leases.items())
        ]

    @classmethod
    def from_wire(cls, records: Any) -> LeaseTable:
        table = cls()
        for lease_id, ttl, keys in records:
            if type(lease_id) is not int or type(ttl) is not int or lease_id in table._leases:
                raise ValueError(f"bad lease record {lease_id!r}")
            table.grant(lease_id, ttl)
            for key in keys:
                if type(key) is not str or key in table._key_lease:
                    raise ValueError(f"bad key {key!r} of lease {lease_id}")
                table.attach(key, lease_id)
        return table
