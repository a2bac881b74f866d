"""Typed errors of the Python client.

Callers branch on what an error *means* for their data, not on HTTP codes:
`NotFound` and `VersionMismatch` are answers, `NoLeader` and `ClusterUnavailable`
mean nothing was written, and `OutcomeUnknown` means a write may or may not have
taken effect (the one case a caller must never treat as "failed").
"""

from __future__ import annotations


class KVError(Exception):
    """Base class of every error the client raises.

    `status` and `code` carry the HTTP status and the contract's error code when
    the error came from an answer of the cluster (None otherwise).
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class NotFound(KVError, LookupError):
    """The key does not exist (404 `not_found`)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key not found: {key!r}", status=404, code="not_found")
        self.key = key


class RevisionMismatch(KVError):
    """A `prev_revision` compare-and-set saw another mod_revision (0: the key is missing)."""

    def __init__(self, key: str, current_revision: int) -> None:
        super().__init__(
            f"revision mismatch on {key!r}: its mod_revision is {current_revision}",
            status=409,
            code="revision_mismatch",
        )
        self.key = key
        self.current_revision = current_revision


class VersionMismatch(KVError):
    """A compare-and-set saw another version; `current_version` is 0 when the key is missing."""

    def __init__(self, key: str, current_version: int) -> None:
        super().__init__(
            f"version mismatch on {key!r}: current version is {current_version}",
            status=409,
            code="version_mismatch",
        )
        self.key = key
        self.current_version = current_version


class InvalidRequest(KVError):
    """The request is malformed (400) or too large (413): retrying it cannot help."""


class ClusterUnavailable(KVError, ConnectionError):
    """No node gave a usable answer within the retry budget; nothing was written.
    Also a `ConnectionError`, as Python code expects of "could not reach the service"."""


class NoLeader(ClusterUnavailable):
    """Nodes answered, but none knew a leader (503 `no_leader`) until the budget ran out.

    A subclass of `ClusterUnavailable` because, to a caller, both mean "not done,
    safe to try again later".
    """


class OutcomeUnknown(KVError, TimeoutError):
    """A write may have been applied or not: the cluster never confirmed either way.

    Raised when a write whose earlier attempt may have reached a leader (timeout,
    lost connection, 504) could not be settled by retrying it under the same
    sequence number, or when the cluster forgot the client's session (409
    `session_expired`). Read the key to find out what happened. Also a `TimeoutError`:
    the cluster did not confirm in time.
    """


class Compacted(KVError):
    """The changes asked for are older than the history the cluster keeps (410
    `compacted`): list again (a range read) and watch from the revision it returns.
    `compact_revision` is the oldest revision still readable."""

    def __init__(
        self,
        message: str,
        *,
        compact_revision: int = 0,
        status: int | None = 410,
        code: str | None = "compacted",
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.compact_revision = compact_revision


class AuthenticationFailed(KVError):
    """The cluster does not know who is calling (401): no token where one is needed
    (`auth_required`), a token that is malformed, signed with another key or of a
    changed user (`bad_token`) or expired (`token_expired`), or a wrong user name or
    password (`bad_credentials`). A client with a user and password renews its token
    by itself; this is raised when that did not help, or with a fixed token."""


class PermissionDenied(KVError, PermissionError):
    """The caller is known but may not do this (403 `permission_denied`): a key outside
    its roles' ranges, or an administrative call without the root role. Also a
    `PermissionError`, as Python code expects of a refusal."""


class TLSError(KVError):
    """A TLS problem that retrying cannot fix: an untrusted or wrong certificate, a
    handshake with a node that does not serve https, unreadable certificate files."""


class EndpointConfigError(KVError):
    """No endpoints found: no argument, no KV_ENDPOINTS, no usable cluster.toml."""


class MemberUnreachable(KVError):
    """The leader cannot reach a node being added, so it cannot catch up (409
    `member_unreachable`). The node was added as a learner and stays one until it is
    started (`kv serve --join`) or removed."""


class Fenced(KVError):
    """A fenced write was refused (409 `fenced`): its token no longer holds the lock, so
    another holder may have written since. `holder` is the token that holds it now (0:
    nobody). Never retry the write with the same token; take the lock again."""

    def __init__(self, message: str, holder: int) -> None:
        super().__init__(message, status=409, code="fenced")
        self.holder = holder


class LeaseNotFound(KVError):
    """The lease does not exist (404 `lease_not_found`): it was revoked or it expired."""


class LockTimeout(KVError):
    """The lock (or the leadership of an election) was not obtained within the timeout;
    the waiter left the queue."""
