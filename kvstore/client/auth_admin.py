"""Administration of users, roles and the auth switch (`/v1/auth/...`), for `kv auth`,
`kv user` and `kv role` and for programs that manage access.

Each function takes a connected `AsyncKV` (whose user needs the root role for every
change, see the README's Security section) and raises its typed errors. Changes are
sent at most once once they may have reached a node (`once`): a user added twice
would be a 409 on the retry, a grant repeated harmless but a revoke repeated a 404,
so an uncertain change is `OutcomeUnknown` (look with `get_user`/`get_role`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlencode

from kvstore.client.errors import InvalidRequest

if TYPE_CHECKING:
    from kvstore.client.async_client import AsyncKV

AUTH = "/v1/auth"
Access = Literal["read", "write", "readwrite"]
ACCESS = ("read", "write", "readwrite")


@dataclass(frozen=True, slots=True)
class Permission:
    """Access to the keys in [start, end); end "" means every key from start on."""

    access: str
    start: str
    end: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Permission:
        return cls(str(data["access"]), str(data["start"]), str(data["end"]))


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    permissions: tuple[Permission, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Role:
        perms = tuple(Permission.from_json(p) for p in data.get("permissions", []))
        return cls(str(data["name"]), perms)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    roles: tuple[str, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> User:
        return cls(str(data["name"]), tuple(str(r) for r in data.get("roles", [])))


def _name(name: str) -> str:
    if not name:
        raise InvalidRequest("a user or role name must not be empty")
    return quote(name, safe="")


def _password(password: str) -> bytes:
    if not password:
        raise InvalidRequest("the password must not be empty")
    return json.dumps({"password": password}).encode()


async def _change(kv: AsyncKV, method: str, path: str, body: bytes | None = None) -> None:
    await kv.request(method, AUTH + path, body, once=True)


# ---------------------------------------------------------------------- the switch


async def status(kv: AsyncKV) -> bool:
    """Whether authentication is enabled (anyone may ask)."""
    return bool((await kv.request("GET", f"{AUTH}/status")).json().get("enabled"))


async def enable(kv: AsyncKV) -> None:
    """Turn authentication on; needs a user "root" holding the role "root" (409
    `no_root_user` otherwise). From then on every request needs a token."""
    await _change(kv, "POST", "/enable")


async def disable(kv: AsyncKV) -> None:
    """Turn authentication off (root only): every request is open again."""
    await _change(kv, "POST", "/disable")


# ---------------------------------------------------------------------- users


async def add_user(kv: AsyncKV, name: str, password: str) -> None:
    await _change(kv, "PUT", f"/users/{_name(name)}", _password(password))


async def delete_user(kv: AsyncKV, name: str) -> None:
    await _change(kv, "DELETE", f"/users/{_name(name)}")


async def set_password(kv: AsyncKV, name: str, password: str) -> None:
    """Root for anyone, or a user for itself; the user's existing tokens stop working."""
    await _change(kv, "POST", f"/users/{_name(name)}/password", _password(password))


async def grant_role(kv: AsyncKV, user: str, role: str) -> None:
    await _change(kv, "PUT", f"/users/{_name(user)}/roles/{_name(role)}")


async def revoke_role(kv: AsyncKV, user: str, role: str) -> None:
    await _change(kv, "DELETE", f"/users/{_name(user)}/roles/{_name(role)}")


async def list_users(kv: AsyncKV) -> list[User]:
    answer = await kv.request("GET", f"{AUTH}/users")
    return [User.from_json(u) for u in answer.json().get("users", [])]


async def get_user(kv: AsyncKV, name: str) -> User:
    return User.from_json((await kv.request("GET", f"{AUTH}/users/{_name(name)}")).json())


# ---------------------------------------------------------------------- roles


async def add_role(kv: AsyncKV, name: str) -> None:
    await _change(kv, "PUT", f"/roles/{_name(name)}")


async def delete_role(kv: AsyncKV, name: str) -> None:
    await _change(kv, "DELETE", f"/roles/{_name(name)}")


def key_range(
    *, prefix: str | None = None, key: str | None = None, start: str | None = None, end: str = ""
) -> dict[str, str]:
    """The query naming one range: a prefix, a single key, or [start, end)."""
    given = [
        (n, v) for n, v in (("prefix", prefix), ("key", key), ("start", start)) if v is not None
    ]
    if len(given) != 1 or (end and start is None):
        raise InvalidRequest("give one of prefix, key or start (end only with start)")
    query = dict(given)
    if start is not None and end:
        query["end"] = end
    return query


async def grant_permission(kv: AsyncKV, role: str, access: Access, **range_: Any) -> None:
    """`grant_permission(kv, "app", "readwrite", prefix="app/")` (or key=, start=/end=)."""
    if access not in ACCESS:
        raise InvalidRequest(f"access must be one of {', '.join(ACCESS)}: {access!r}")
    query = urlencode({"access": access, **key_range(**range_)}, quote_via=quote)
    await _change(kv, "POST", f"/roles/{_name(role)}/permissions?{query}")


async def revoke_permission(kv: AsyncKV, role: str, **range_: Any) -> None:
    """Remove the permission granted on exactly this range (404 if there is none)."""
    query = urlencode(key_range(**range_), quote_via=quote)
    await _change(kv, "DELETE", f"/roles/{_name(role)}/permissions?{query}")


async def list_roles(kv: AsyncKV) -> list[Role]:
    answer = await kv.request("GET", f"{AUTH}/roles")
    return [Role.from_json(r) for r in answer.json().get("roles", [])]


async def get_role(kv: AsyncKV, name: str) -> Role:
    return Role.from_json((await kv.request("GET", f"{AUTH}/roles/{_name(name)}")).json())
