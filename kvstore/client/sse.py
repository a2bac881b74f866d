"""A Server-Sent Events parser: bytes in, messages out (the HTML standard's rules).

Written here instead of using aiohttp's line reader because one `data:` line holds a
whole revision of changes, which may be far longer than aiohttp's line limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Message:
    """One dispatched event: `event` is "message" when the server named none; `id` is
    the last id seen on the stream (what EventSource sends back as Last-Event-ID)."""

    event: str
    data: str
    id: str | None


class SSEParser:
    """Feed it chunks as they arrive; it yields each message once its blank line came."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> Iterator[Message]:
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return
            raw, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            line = raw.removesuffix(b"\r").decode("utf-8", "replace")
            message = self._line(line)
            if message is not None:
                yield message

    def _line(self, line: str) -> Message | None:
        if not line:  # a blank line dispatches what came before it
            if not self._data and not self._event:
                return None
            message = Message(self._event or "message", "\n".join(self._data), self.last_id)
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None  # a comment: the server keeping the connection alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None  # "retry" and unknown fields are ignored here
