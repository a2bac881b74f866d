"""pyraftkv: a Raft-replicated key-value store for microservices.

`from kvstore import AsyncKV, KV` is all a service needs. The packages below show the
architecture (docs/architecture.md walks through it), top to bottom:

- kvstore.server   the process entry: `kv serve` (one node), `kv cluster up`
- kvstore.api      the HTTP surfaces: client API, members and backup, status, peer API
- kvstore.runtime  the asyncio node runtime driving the pure Raft core (package
                   `consensus`): request bookkeeping, compaction, LevelDB storage, backup
- kvstore.peers    links to the other nodes: message streams, snapshot transfer
- kvstore.state    the replicated state machine: commands, results, snapshot format,
                   member directory; pure and deterministic, run by the simulator too
- kvstore.config   cluster.toml, read the same way by the client and the server
- kvstore.client   the Python client; imports none of the above but kvstore.config
- kvstore.cli      the `kv` command; kvstore.chaos, the fault-injection run behind
                   `kv chaos`
"""

from kvstore.client import (
    KV,
    AsyncKV,
    ClusterUnavailable,
    InvalidRequest,
    KeyValue,
    KVError,
    NoLeader,
    NotFound,
    OutcomeUnknown,
    VersionMismatch,
)

__all__ = [
    "KV",
    "AsyncKV",
    "ClusterUnavailable",
    "InvalidRequest",
    "KVError",
    "KeyValue",
    "NoLeader",
    "NotFound",
    "OutcomeUnknown",
    "VersionMismatch",
]
