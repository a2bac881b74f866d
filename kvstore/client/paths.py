"""The pieces of a request the client builds from its arguments: key paths, the
compare-and-set query, values as bytes. Checked here so a bad argument fails before
anything is sent (InvalidRequest / TypeError), never as a server's 400."""

from __future__ import annotations

from urllib.parse import quote

from kvstore.client.errors import InvalidRequest

Value = bytes | bytearray | memoryview | str


def key_path(key: str) -> str:
    """The URL path of a key, percent-encoding every reserved character (including '/')."""
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"a key must be a non-empty string: {key!r}")
    return "/v1/kv/" + quote(key, safe="")


def prev_query(prev_version: int | None, prev_revision: int | None = None) -> str:
    parts = []
    for name, prev in (("prev_version", prev_version), ("prev_revision", prev_revision)):
        if prev is None:
            continue
        if isinstance(prev, bool) or not isinstance(prev, int) or prev < 0:
            raise InvalidRequest(f"{name} must be an integer >= 0: {prev!r}")
        parts.append(f"{name}={prev}")
    return "?" + "&".join(parts) if parts else ""


def as_bytes(value: Value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a value must be bytes or str, not {type(value).__name__}")
