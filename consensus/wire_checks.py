"""What every value the codec decodes passes before it is trusted (consensus.codec):
field kinds as the exact Python types msgpack yields, and errors that say what is wrong.
Kept apart from the codec's layouts so each module stays one job (and short)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from consensus.errors import ConsensusError


class CodecError(ConsensusError):
    """Bytes that do not decode to a well-formed value, or a value that cannot be encoded."""


# A field kind is the exact Python type msgpack yields for it (so a bool never passes
# for an int); `None` in a kind tuple means the field may also be nil.
Kind = tuple[type, ...]
UINT: Kind = (int,)
STR: Kind = (str,)
BOOL: Kind = (bool,)
OPT_STR: Kind = (str, type(None))


def unpack(data: bytes, what: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"cannot decode {what} from {type(data).__name__}, expected bytes")
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack reports garbage with several unrelated types
        raise CodecError(f"cannot decode {what}: {type(exc).__name__}: {exc}") from exc


def describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_fields(what: str, names: Sequence[str], kinds: Sequence[Kind], values: Any) -> None:
    """Reject anything but a list of exactly the expected field kinds."""
    if type(values) is not list:
        raise CodecError(f"{what} must be an array, got {type(values).__name__}")
    if len(values) != len(kinds):
        raise CodecError(f"{what} must have {len(kinds)} fields, got {len(values)}")
    for name, kind, value in zip(names, kinds, values, strict=True):
        if type(value) not in kind:
            raise CodecError(
                f"{what} field {name!r} must be {' or '.join(k.__name__ for k in kind)}, "
                f"got {type(value).__name__} {describe(value)}"
            )
        if kind is UINT and value < 0:
            raise CodecError(f"{what} field {name!r} must not be negative, got {value}")
