"""What clients observed: operations with their call/return times and outcomes.

A history is the only input of the checker, so it must say exactly what is known and no
more. Above all the outcome: "ok" and "fail" are definite (the operation did / did not
take effect), while "unknown" (a 504 timeout, a connection lost after the request was
sent, a 409 session_expired) means it may take effect at any time after its call, or
never. Recording a maybe-applied write as "fail" would make the checker reject correct
clusters, so when in doubt a recorder must write "unknown".

Recording conventions, matching the HTTP contract:
- get: 200 is ok with found=True, read_value, read_version (X-KV-Version);
  404 not_found is also ok, with found=False. Any other answer is fail/unknown and
  carries no information.
- put / cas (cas = put with prev_version): 200 is ok with revision and version;
  409 version_mismatch on a cas is fail with error="version_mismatch" and `version` set
  to the current version the server reported (0 when the key was missing).
- delete: 200 is ok; 404 is fail with error="not_found"; 409 is fail with
  error="version_mismatch" (and `version` as above).
- 503 no_leader / 400 / 413 are fail (never applied); 504 timeout is unknown.

Histories are stored as JSON lines, one operation per line, so a long chaos run can be
written incrementally and inspected with ordinary tools.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

Kind = Literal["get", "put", "cas", "delete"]
Outcome = Literal["ok", "fail", "unknown"]

KINDS: tuple[str, ...] = ("get", "put", "cas", "delete")
OUTCOMES: tuple[str, ...] = ("ok", "fail", "unknown")
BYTES_FIELDS: tuple[str, ...] = ("value", "read_value")


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One client request and what the client saw of it.

    `call` and `ret` are monotonic seconds on one clock shared by all clients of a run
    (real-time order between operations is all the checker uses them for). `ret` is None
    when the outcome is unknown; an unknown operation's `ret`, even when recorded, is
    treated as +infinity because the request may still take effect later.
    """

    client: int
    kind: Kind
    key: str
    call: float
    ret: float | None
    outcome: Outcome
    value: bytes | None = None
    """put/cas: the value written."""
    prev_version: int | None = None
    """cas (required) and conditional delete: the expected version, 0 = key missing."""
    found: bool | None = None
    read_value: bytes | None = None
    read_version: int | None = None
    revision: int | None = None
    """ok writes: the cluster-wide revision returned."""
    version: int | None = None
    """ok put/cas: the key's new version; fail version_mismatch: the current version."""
    error: str | None = None

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(f"invalid operation {self!r}: {problem}")

    def _problem(self) -> str | None:
        """Reject records a recorder could only produce by mistake, before they mislead."""
        kind, outcome = self.kind, self.outcome
        if kind not in KINDS:
            return f"kind must be one of {KINDS}"
        if outcome not in OUTCOMES:
            return f"outcome must be one of {OUTCOMES}"
        if self.ret is None and outcome != "unknown":
            return "only an unknown outcome may lack a return time"
        if self.ret is not None and not self.ret >= self.call:
            return "ret is before call"
        if kind in ("put", "cas") and type(self.value) is not bytes:
            return f"a {kind} needs a bytes value"
        if kind in ("get", "delete") and self.value is not None:
            return f"a {kind} writes no value"
        if kind == "cas" and (self.prev_version is None or self.prev_version < 0):
            return "a cas needs prev_version >= 0"
        if kind in ("get", "put") and self.prev_version is not None:
            return f"a {kind} has no prev_version (a conditional put is a cas)"
        if kind == "get" and outcome == "ok":
            if self.found is None:
                return "an ok get must say whether the key was found"
            if self.found and type(self.read_value) is not bytes:
                return "a found get needs read_value"
            if not self.found and (self.read_value is not None or self.read_version is not None):
                return "a get that found nothing has no read_value/read_version"
        if kind == "get" and outcome == "fail" and self.error == "not_found":
            return "a get answered 404 is an ok read with found=False"
        if self.error == "version_mismatch" and kind in ("get", "put"):
            return f"a {kind} cannot fail with version_mismatch"
        if self.error == "version_mismatch" and self.prev_version is None:
            return "version_mismatch needs the prev_version that was sent"
        return None

    @property
    def is_write(self) -> bool:
        return self.kind != "get"

    @property
    def end(self) -> float:
        """The latest moment the operation can take effect: +inf when unknown."""
        if self.outcome == "unknown" or self.ret is None:
            return math.inf
        return self.ret

    def describe(self) -> str:
        """One line in plain words, for violation reports."""
        args = ""
        if self.kind in ("put", "cas"):
            args = f", {show_bytes(self.value)}"
        if self.prev_version is not None:
            args += f", prev_version={self.prev_version}"
        when = f"{self.call:.6f}.." + ("?" if self.end == math.inf else f"{self.ret:.6f}")
        return f"[{when}] client {self.client} {self.kind}({self.key!r}{args}) → {self._result()}"

    def _result(self) -> str:
        if self.outcome == "unknown":
            return "unknown outcome"
        if self.outcome == "fail":
            extra = f" (current version {self.version})" if self.version is not None else ""
            return f"failed {self.error or 'without a code'}{extra}"
        if self.kind == "get":
            if not self.found:
                return "not found"
            version = "" if self.read_version is None else f" (version {self.read_version})"
            return f"{show_bytes(self.read_value)}{version}"
        parts = [
            f"{name} {v}"
            for name in ("version", "revision")
            if (v := getattr(self, name)) is not None
        ]
        return "ok" + (f" ({', '.join(parts)})" if parts else "")


def show_bytes(value: bytes | None, limit: int = 40) -> str:
    """A short, unambiguous rendering of a value for messages."""
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------- JSON lines


def operation_to_json(op: Operation) -> dict[str, Any]:
    """Fields that are set (and ret); bytes as text when valid UTF-8, else base64."""
    record: dict[str, Any] = {}
    for f in fields(op):
        value = getattr(op, f.name)
        if value is None and f.name != "ret":  # ret is required: null means unknown
            continue
        if f.name in BYTES_FIELDS:
            try:
                record[f.name] = value.decode("utf-8")
            except UnicodeDecodeError:
                record[f.name + "_b64"] = base64.b64encode(value).decode("ascii")
        else:
            record[f.name] = value
    return record


def operation_from_json(record: dict[str, Any]) -> Operation:
    """Inverse of operation_to_json; unknown fields are an error so typos cannot hide."""
    data = dict(record)
    for name in BYTES_FIELDS:
        if name + "_b64" in data:
            if name in data:
                raise ValueError(f"both {name} and {name}_b64 given")
            data[name] = base64.b64decode(data.pop(name + "_b64"), validate=True)
        elif isinstance(data.get(name), str):
            data[name] = data[name].encode("utf-8")
    known = {f.name for f in fields(Operation)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown fields {unknown}")
    for name in ("call", "ret"):
        if isinstance(data.get(name), int):
            data[name] = float(data[name])
    try:
        return Operation(**data)
    except TypeError as exc:  # a required field is missing
        raise ValueError(str(exc)) from None


def write_history(path: str | Path, ops: Iterable[Operation]) -> None:
    """Write one JSON object per line (UTF-8), in the order given."""
    with Path(path).open("w", encoding="utf-8") as out:
        for op in ops:
            out.write(json.dumps(operation_to_json(op), separators=(",", ":")) + "\n")


def read_history(path: str | Path) -> list[Operation]:
    """Read a history written by write_history; errors name the line."""
    ops: list[Operation] = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                ops.append(operation_from_json(record))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    return ops
