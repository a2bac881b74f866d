"""The client: what a microservice imports. `AsyncKV` (asyncio) and `KV` (blocking).

It depends on aiohttp alone and imports nothing of the server (kvstore.runtime,
kvstore.api, consensus, plyvel), so `pip install pyraftkv` without extras is enough.
"""

from kvstore.client.async_client import AsyncKV, Consistency
from kvstore.client.errors import (
    ClusterUnavailable,
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

__all__ = [
    "KV",
    "AsyncKV",
    "ClusterUnavailable",
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
    "PutResult",
    "RetryPolicy",
    "VersionMismatch",
]
