"""Terse constructors for hand-written histories: one line per operation in the tests."""

from __future__ import annotations

from kvstore.chaos.history import Operation


def put(
    key: str,
    value: bytes,
    call: float,
    ret: float | None,
    *,
    client: int = 1,
    version: int | None = None,
    outcome: str = "ok",
    error: str | None = None,
) -> Operation:
    if ret is None:
        outcome = "unknown"
    return Operation(
        client=client,
        kind="put",
        key=key,
        value=value,
        call=call,
        ret=ret,
        outcome=outcome,  # type: ignore[arg-type]
        version=version,
        error=error,
    )


def cas(
    key: str,
    value: bytes,
    prev: int,
    call: float,
    ret: float | None,
    *,
    client: int = 1,
    outcome: str = "ok",
    version: int | None = None,
) -> Operation:
    """An ok cas by default; outcome="fail" means a 409 with current `version`."""
    if ret is None:
        outcome = "unknown"
    return Operation(
        client=client,
        kind="cas",
        key=key,
        value=value,
        prev_version=prev,
        call=call,
        ret=ret,
        outcome=outcome,  # type: ignore[arg-type]
        version=version,
        error="version_mismatch" if outcome == "fail" else None,
    )


def delete(
    key: str,
    call: float,
    ret: float | None,
    *,
    client: int = 1,
    outcome: str = "ok",
    error: str | None = None,
    prev: int | None = None,
) -> Operation:
    if ret is None:
        outcome = "unknown"
    return Operation(
        client=client,
        kind="delete",
        key=key,
        prev_version=prev,
        call=call,
        ret=ret,
        outcome=outcome,  # type: ignore[arg-type]
        error=error,
    )


def get(
    key: str,
    value: bytes | None,
    call: float,
    ret: float,
    *,
    client: int = 2,
    version: int | None = None,
) -> Operation:
    """An ok read: `value` None means 404 (not found)."""
    return Operation(
        client=client,
        kind="get",
        key=key,
        call=call,
        ret=ret,
        outcome="ok",
        found=value is not None,
        read_value=value,
        read_version=version if value is not None else None,
    )
