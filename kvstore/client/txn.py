"""Transactions and range pages for the client: building the request, reading the answer.

A transaction is built with `kv.txn()`::

    from kvstore.client import Cmp, Op

    answer = await (
        kv.txn()
        .if_(Cmp.value("stock/apple") == b"3", Cmp.missing("orders/7"))
        .then(Op.put("stock/apple", b"2"), Op.put("orders/7", b"apple"))
        .else_(Op.get("stock/apple"))
        .commit()
    )
    if not answer.succeeded: ...

`Cmp.version(key)`, `Cmp.create_revision(key)`, `Cmp.mod_revision(key)` and
`Cmp.value(key)` compare with `==`, `!=`, `<`, `>`; `Cmp.exists(key)` and
`Cmp.missing(key)` stand alone. The whole transaction is one request and one log
entry on the server (POST /v1/txn), so it applies entirely or not at all.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kvstore.client.types import KeyValue, PutResult

R = TypeVar("R")
Document = dict[str, Any]


def _value_field(value: bytes | str) -> dict[str, str]:
    if isinstance(value, str):
        return {"text": value}
    return {"value": base64.b64encode(bytes(value)).decode("ascii")}


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction, as sent: `{"key", "target", "op", ...}`."""

    key: str
    target: str
    op: str
    operand: int | bytes | str | bool

    def to_json(self) -> Document:
        doc: Document = {"key": self.key, "target": self.target, "op": self.op}
        if self.target == "value":
            assert isinstance(self.operand, bytes | str)
            doc.update(_value_field(self.operand))
        else:
            doc["value"] = self.operand
        return doc


class _Target:
    """`Cmp.version("k") > 3` builds a Compare; nothing else is meant to be done with it."""

    __slots__ = ("key", "target")

    def __init__(self, key: str, target: str) -> None:
        self.key, self.target = key, target

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return Compare(self.key, self.target, "=", other)  # type: ignore[arg-type]

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return Compare(self.key, self.target, "!=", other)  # type: ignore[arg-type]

    def __lt__(self, other: int | bytes) -> Compare:
        return Compare(self.key, self.target, "<", other)

    def __gt__(self, other: int | bytes) -> Compare:
        return Compare(self.key, self.target, ">", other)

    __hash__ = None  # type: ignore[assignment]


class Cmp:
    """Compare builders (see the module docstring)."""

    @staticmethod
    def version(key: str) -> _Target:
        return _Target(key, "version")

    @staticmethod
    def create_revision(key: str) -> _Target:
        return _Target(key, "create_revision")

    @staticmethod
    def mod_revision(key: str) -> _Target:
        """The key's last-change revision: the compare that is safe against ABA."""
        return _Target(key, "mod_revision")

    @staticmethod
    def value(key: str) -> _Target:
        return _Target(key, "value")

    @staticmethod
    def exists(key: str) -> Compare:
        return Compare(key, "exists", "=", True)

    @staticmethod
    def missing(key: str) -> Compare:
        return Compare(key, "exists", "=", False)


def _range_spec(prefix: str | None, start: str | None, end: str | None) -> Document:
    if (prefix is None) == (start is None):
        raise ValueError("give either prefix or start (and optionally end)")
    if prefix is not None:
        if end is not None:
            raise ValueError("end goes with start, not with prefix")
        return {"prefix": prefix}
    return {"start": start} if end is None else {"start": start, "end": end}


class Op:
    """Operation builders for `then` / `else_`; each is the JSON object sent."""

    @staticmethod
    def put(key: str, value: bytes | str, *, lease: int | None = None) -> Document:
        """With `lease` the key belongs to that lease (deleted when it ends); the whole
        transaction fails with `LeaseNotFound` if the lease does not exist."""
        spec: Document = {"key": key, **_value_field(value)}
        if lease is not None:
            if isinstance(lease, bool) or not isinstance(lease, int) or lease < 1:
                raise ValueError(f"lease must be an integer >= 1: {lease!r}")
            spec["lease"] = lease
        return {"put": spec}

    @staticmethod
    def delete(key: str) -> Document:
        return {"delete": {"key": key}}

    @staticmethod
    def delete_range(
        *, prefix: str | None = None, start: str | None = None, end: str | None = None
    ) -> Document:
        return {"delete_range": _range_spec(prefix, start, end)}

    @staticmethod
    def get(key: str) -> Document:
        return {"get": {"key": key}}

    @staticmethod
    def range(
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        keys_only: bool = False,
        count_only: bool = False,
        newest_first: bool = False,
    ) -> Document:
        spec = _range_spec(prefix, start, end)
        if limit is not None:
            spec["limit"] = limit
        if keys_only:
            spec["keys_only"] = True
        if count_only:
            spec["count_only"] = True
        if newest_first:
            spec["sort"] = "newest"
        return {"range": spec}


WRITE_OPS = ("put", "delete", "delete_range")


def writes(document: Document) -> bool:
    """Whether a transaction document may change the store (then it needs a session seq)."""
    ops = [*document.get("success", []), *document.get("failure", [])]
    return any(isinstance(op, dict) and set(op) & set(WRITE_OPS) for op in ops)


class TxnBuilder(Generic[R]):
    """`kv.txn().if_(...).then(...).else_(...).commit()`; each step returns the builder."""

    def __init__(self, submit: Callable[[Document, float | None], R]) -> None:
        self._submit = submit
        self._compares: list[Compare] = []
        self._success: list[Document] = []
        self._failure: list[Document] = []

    def if_(self, *compares: Compare) -> TxnBuilder[R]:
        for c in compares:
            if not isinstance(c, Compare):
                raise TypeError(f"not a compare: {c!r} (build one with Cmp)")
        self._compares += compares
        return self

    def then(self, *ops: Document) -> TxnBuilder[R]:
        self._success += ops
        return self

    def else_(self, *ops: Document) -> TxnBuilder[R]:
        self._failure += ops
        return self

    def to_json(self) -> Document:
        return {
            "compare": [c.to_json() for c in self._compares],
            "success": list(self._success),
            "failure": list(self._failure),
        }

    def commit(self, *, timeout: float | None = None) -> R:
        """Send it: a coroutine for `AsyncKV`, the answer itself for `KV`."""
        return self._submit(self.to_json(), timeout)


@dataclass(frozen=True, slots=True)
class Deleted:
    revision: int
    deleted: int


@dataclass(frozen=True, slots=True)
class RangePage:
    """One answer of a range read: the keys, the revision they reflect, how many the
    whole range holds, and the token of the next page (None on the last)."""

    revision: int
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool
    next: str | None

    @classmethod
    def from_json(cls, doc: Document) -> RangePage:
        kvs = tuple(
            KeyValue(
                key=kv["key"],
                value=base64.b64decode(kv["value"]) if "value" in kv else b"",
                version=int(kv["version"]),
                mod_revision=int(kv["mod_revision"]),
                create_revision=int(kv["create_revision"]),
            )
            for kv in doc["kvs"]
        )
        return cls(int(doc["revision"]), kvs, int(doc["count"]), bool(doc["more"]), doc["next"])


@dataclass(frozen=True, slots=True)
class TxnResponse:
    """Which branch ran and each of its operations' results (PutResult, Deleted or
    RangePage, in order); `revision` is the store's revision after it."""

    succeeded: bool
    revision: int
    results: tuple[PutResult | Deleted | RangePage, ...]

    @classmethod
    def from_json(cls, doc: Document) -> TxnResponse:
        results: list[PutResult | Deleted | RangePage] = []
        for item in doc["results"]:
            if "put" in item:
                results.append(PutResult(int(item["put"]["revision"]), int(item["put"]["version"])))
            elif "delete_range" in item:
                d = item["delete_range"]
                results.append(Deleted(int(d["revision"]), int(d["deleted"])))
            else:
                results.append(RangePage.from_json(item["range"]))
        return cls(bool(doc["succeeded"]), int(doc["revision"]), tuple(results))
