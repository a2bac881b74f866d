"""The client: what a microservice imports. `AsyncKV` (asyncio) and `KV` (blocking).

It depends on aiohttp alone and imports nothing of the server (kvstore.runtime,
kvstore.api, consensus, plyvel), so `pip install pyraftkv` without extras is enough.
"""

from kvstore.client.async_client import AsyncKV, Consistency
from kvstore.client.errors import (
    AuthenticationFailed,
    ClusterUnavailable,
    Compacted,
    EndpointConfigError,
    Fenced,
    InvalidRequest,
    KVError,
    LeaseNotFound,
    LockTimeout,
    MemberUnreachable,
    NoLeader,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    RevisionMismatch,
    TLSError,
    VersionMismatch,
)
from kvstore.client.fence import Fence
from kvstore.client.leases import Lease, LeaseInfo
from kvstore.client.locks import Election, Leader, Lock
from kvstore.client.mirror import Change, Mirror
from kvstore.client.ranges import RangeIterator
from kvstore.client.session import RetryPolicy
from kvstore.client.sync_client import KV
from kvstore.client.tls import ClientTLS
from kvstore.client.txn import Cmp, Compare, Deleted, Op, RangePage, TxnBuilder, TxnResponse
from kvstore.client.types import EndpointStatus, KeyValue, MemberList, NodeStatus, PutResult
from kvstore.client.watch import PrevValue, Watch, WatchEvent, WatchProgress

__all__ = [
    "KV",
    "AsyncKV",
    "AuthenticationFailed",
    "Change",
    "ClientTLS",
    "ClusterUnavailable",
    "Cmp",
    "Compacted",
    "Compare",
    "Consistency",
    "Deleted",
    "Election",
    "EndpointConfigError",
    "EndpointStatus",
    "Fence",
    "Fenced",
    "InvalidRequest",
    "KVError",
    "KeyValue",
    "Leader",
    "Lease",
    "LeaseInfo",
    "LeaseNotFound",
    "Lock",
    "LockTimeout",
    "MemberList",
    "MemberUnreachable",
    "Mirror",
    "NoLeader",
    "NodeStatus",
    "NotFound",
    "Op",
    "OutcomeUnknown",
    "PermissionDenied",
    "PrevValue",
    "PutResult",
    "RangeIterator",
    "RangePage",
    "RetryPolicy",
    "RevisionMismatch",
    "TLSError",
    "TxnBuilder",
    "TxnResponse",
    "VersionMismatch",
    "Watch",
    "WatchEvent",
    "WatchProgress",
]
