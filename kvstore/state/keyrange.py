"""Key ranges and range queries: plain values, checked when built.

A range is `[start, end)` in key order (code point order, the same as UTF-8 byte
order); `end=None` means no upper bound. One key is the range `[key, key + "\\0")`
and a prefix `p` is `[p, prefix_end(p))`, so every read and delete is a range and the
executors need no special cases.
"""

from __future__ import annotations

from dataclasses import dataclass

_MAX_CHAR = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def _is_int(value: object) -> bool:
    return type(value) is int


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix` (None:
    there is none, every key from `prefix` on qualifies). Surrogates are skipped: they
    cannot be in a key, and a bound must be encodable as UTF-8 like a key."""
    chars = list(prefix)
    while chars and ord(chars[-1]) == _MAX_CHAR:
        chars.pop()
    if not chars:
        return None
    nxt = ord(chars[-1]) + 1
    chars[-1] = chr(_SURROGATES.stop if nxt in _SURROGATES else nxt)
    return "".join(chars)


@dataclass(frozen=True, slots=True)
class KeyRange:
    start: str
    end: str | None = None
    """Exclusive; None: no upper bound."""

    def __post_init__(self) -> None:
        if not isinstance(self.start, str):
            raise ValueError(f"range start must be a string, got {type(self.start).__name__}")
        if self.end is not None and not isinstance(self.end, str):
            raise ValueError(f"range end must be a string or None, got {type(self.end).__name__}")

    @classmethod
    def single(cls, key: str) -> KeyRange:
        return cls(key, key + "\0")

    @classmethod
    def prefix(cls, prefix: str) -> KeyRange:
        return cls(prefix, prefix_end(prefix))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key >= self.start and (self.end is None or key < self.end)

    def is_single(self) -> bool:
        return self.end == self.start + "\0"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last key returned and its mod_revision (the position in
    newest-first order needs both). The next page starts strictly after it."""

    mod_revision: int
    key: str

    def __post_init__(self) -> None:
        if not _is_int(self.mod_revision) or self.mod_revision < 0:
            raise ValueError("cursor mod_revision must be an integer >= 0")
        if not isinstance(self.key, str):
            raise ValueError("cursor key must be a string")


@dataclass(frozen=True, slots=True)
class RangeQuery:
    """A read of the keys in `keys` as of `revision` (0: the current one).

    `limit` (0: none) caps the keys returned; `after` resumes after a previous page;
    `newest_first` orders by mod_revision descending (ties by key) instead of by key;
    `keys_only` leaves values empty; `count_only` returns no keys, only the count."""

    keys: KeyRange
    revision: int = 0
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False
    newest_first: bool = False
    after: Cursor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.keys, KeyRange):
            raise ValueError("a range query needs a KeyRange")
        for name in ("revision", "limit"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("keys_only", "count_only", "newest_first"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be a boolean")
        if self.after is not None and not isinstance(self.after, Cursor):
            raise ValueError("after must be a Cursor or None")
