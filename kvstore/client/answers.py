"""What a definite answer of the cluster means to the caller: its typed error.

One table for every client method, so an error code means the same thing wherever it
comes back (a 409 `revision_mismatch` from a put or a delete, a 410 from any read).
"""

from __future__ import annotations

from kvstore.client.errors import (
    AuthenticationFailed,
    Compacted,
    Fenced,
    InvalidRequest,
    KVError,
    LeaseNotFound,
    MemberUnreachable,
    OutcomeUnknown,
    PermissionDenied,
    RevisionMismatch,
    VersionMismatch,
)
from kvstore.client.transport import Answer


def raise_for_answer(answer: Answer, key: str | None) -> None:
    """Turn a definite non-200 answer into its typed error."""
    if answer.status == 200:
        return
    code = answer.error_code
    if answer.status == 409 and code == "version_mismatch":
        raise VersionMismatch(key or "", int(answer.json().get("version") or 0))
    if answer.status == 409 and code == "revision_mismatch":
        raise RevisionMismatch(key or "", int(answer.json().get("mod_revision") or 0))
    if answer.status == 410:
        compact = int(answer.json().get("compact_revision") or 0)
        raise Compacted(answer.error_message, compact_revision=compact)
    if answer.status == 409 and code == "session_expired":
        raise OutcomeUnknown(
            "the cluster forgot this client's session; the write's outcome is unknown",
            status=409,
            code=code,
        )
    if answer.status == 409 and code == "fenced":
        raise Fenced(answer.error_message, int(answer.json().get("holder") or 0))
    if answer.status == 404 and code == "lease_not_found":
        raise LeaseNotFound(answer.error_message, status=404, code=code)
    if answer.status == 409 and code == "member_unreachable":
        raise MemberUnreachable(answer.error_message, status=409, code=code)
    if answer.status == 401:
        raise AuthenticationFailed(
            f"authentication failed ({code}): {answer.error_message}", status=401, code=code
        )
    if answer.status == 403 and code == "permission_denied":
        raise PermissionDenied(f"permission denied: {answer.error_message}", status=403, code=code)
    if answer.status in (400, 413):
        raise InvalidRequest(answer.error_message, status=answer.status, code=code)
    what = f"{code}: {answer.error_message}" if code else f"HTTP {answer.status}"
    raise KVError(f"{answer.endpoint} answered {what}", status=answer.status, code=code)
