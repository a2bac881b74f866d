"""The client: what a microservice imports. `AsyncKV` (asyncio) and `KV` (blocking).

It depends on aiohttp alone and imports nothing of the server (kvstore.runtime,
kvstore.api, consensus, plyvel), so `pip install pyraftkv` without extras is enough.
"""

from kvstore.client.async_client import AsyncKV, Consistency
from kvstore.client.errors import (
    ClusterUnavailable,
    Compacted,
    EndpointConfigError,
    InvalidRequest,
    KVError,
    MemberUnreachable,
    NoLeader,
    NotFound,
    OutcomeUnknown,
    VersionMismatch,
)
from kvstore.client.session import RetryPolicy
from kvstore.client.sync_client import KV
from kvstore.client.types import EndpointStatus, KeyValue, MemberList, NodeStatus, PutResult
from kvstore.client.watch import PrevValue, Watch, WatchEvent, WatchProgress

__all__ = [
    "KV",
    "AsyncKV",
    "ClusterUnavailable",
    "Compacted",
    "Consistency",
    "EndpointConfigError",
    "EndpointStatus",
    "InvalidRequest",
    "KVError",
    "KeyValue",
    "MemberList",
    "MemberUnreachable",
    "NoLeader",
    "NodeStatus",
    "NotFound",
    "OutcomeUnknown",
    "PrevValue",
    "PutResult",
    "RetryPolicy",
    "VersionMismatch",
    "Watch",
    "WatchEvent",
    "WatchProgress",
]
