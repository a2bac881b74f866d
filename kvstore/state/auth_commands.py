"""The commands that change users, roles and the enabled flag, and what they do.

Everything a command needs is in it: the password hash and salt (computed by the node
that received the password), the signing key of `AuthEnable` (random bytes the proposing
node chose). Applying is therefore deterministic, and passwords never reach the log.
Their wire form (tags 30..40) is in kvstore.state.commands with every other command.
Who may run them (root, or the user itself) is kvstore.state.auth_check's question;
this module only knows whether the change makes sense (the user exists, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from kvstore.state.auth import ROOT, AuthState, Permission, Role, User, valid_name
from kvstore.state.types import AuthResult

MIN_KEY_BYTES = 32
AUTH_OK = AuthResult("", "")


def _check_names(*names: object) -> None:
    for name in names:
        if not valid_name(name):
            raise ValueError(f"bad user or role name {name!r}")


def _check_secret(salt: object, hashed: object) -> None:
    if type(salt) is not bytes or type(hashed) is not bytes or not salt or not hashed:
        raise ValueError("a password is stored as a non-empty salt and hash")


@dataclass(frozen=True, slots=True)
class AuthEnable:
    key: bytes
    session: None = None  # never part of a client session (as every auth command)

    def __post_init__(self) -> None:
        if type(self.key) is not bytes or len(self.key) < MIN_KEY_BYTES:
            raise ValueError(f"the signing key must be at least {MIN_KEY_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class AuthDisable:
    session: None = None


@dataclass(frozen=True, slots=True)
class UserAdd:
    name: str
    salt: bytes
    hash: bytes
    session: None = None

    def __post_init__(self) -> None:
        _check_names(self.name)
        _check_secret(self.salt, self.hash)


@dataclass(frozen=True, slots=True)
class UserPassword:
    name: str
    salt: bytes
    hash: bytes
    session: None = None

    def __post_init__(self) -> None:
        _check_names(self.name)
        _check_secret(self.salt, self.hash)


@dataclass(frozen=True, slots=True)
class UserDelete:
    name: str
    session: None = None

    def __post_init__(self) -> None:
        _check_names(self.name)


@dataclass(frozen=True, slots=True)
class UserRole:
    """Grant (`grant`) or revoke a role of a user."""

    name: str
    role: str
    grant: bool
    session: None = None

    def __post_init__(self) -> None:
        _check_names(self.name, self.role)
        if type(self.grant) is not bool:
            raise ValueError("grant must be a bool")


@dataclass(frozen=True, slots=True)
class RoleAdd:
    name: str
    session: None = None

    def __post_init__(self) -> None:
        _check_names(self.name)


@dataclass(frozen=True, slots=True)
class RoleDelete:
    name: str
    session: None = None

    def __post_init__(self) -> None:
        _check_names(self.name)


@dataclass(frozen=True, slots=True)
class RolePermission:
    """Grant `permission` to a role (`grant`), or revoke the permission on exactly that
    range (its access is then ignored)."""

    name: str
    permission: Permission
    grant: bool
    session: None = None

    def __post_init__(self) -> None:
        _check_names(self.name)
        if not isinstance(self.permission, Permission) or type(self.grant) is not bool:
            raise ValueError("a role permission change needs a Permission and a bool")


AuthCommand: TypeAlias = (
    AuthEnable
    | AuthDisable
    | UserAdd
    | UserPassword
    | UserDelete
    | UserRole
    | RoleAdd
    | RoleDelete
    | RolePermission
)
AUTH_COMMANDS = frozenset(
    {AuthEnable, AuthDisable, UserAdd, UserPassword, UserDelete, UserRole, RoleAdd}
    | {RoleDelete, RolePermission}
)


def _refused(code: str, message: str) -> AuthResult:
    return AuthResult(code, message)


def apply_auth(state: AuthState, command: AuthCommand, index: int) -> AuthResult:
    """Change `state` as `command` says (at log position `index`), or say why not."""
    if type(command) is AuthEnable:
        if not state.is_root(ROOT):
            return _refused("no_root_user", "enabling needs a user 'root' with the role 'root'")
        if not state.enabled:  # enabling twice keeps the key: issued tokens stay valid
            state.enabled, state.key = True, command.key
        return AUTH_OK
    if type(command) is AuthDisable:
        state.enabled, state.key = False, b""
        return AUTH_OK
    if type(command) in (UserAdd, UserPassword, UserDelete, UserRole):
        return _apply_user(state, command, index)  # type: ignore[arg-type]
    return _apply_role(state, command)  # type: ignore[arg-type]


def _apply_user(
    state: AuthState, command: UserAdd | UserPassword | UserDelete | UserRole, index: int
) -> AuthResult:
    users = state.users
    user = users.get(command.name)
    if type(command) is UserAdd:
        if user is not None:
            return _refused("user_exists", f"user {command.name!r} exists")
        users[command.name] = User(command.name, command.salt, command.hash, index)
        return AUTH_OK
    if user is None:
        return _refused("user_not_found", f"no user {command.name!r}")
    if type(command) is UserPassword:
        user.salt, user.hash, user.generation = command.salt, command.hash, index
    elif type(command) is UserDelete:
        if command.name == ROOT and state.enabled:
            return _refused("bad_user", "the root user cannot be deleted while auth is enabled")
        del users[command.name]
    elif type(command) is UserRole:
        return _apply_user_role(state, user, command)
    return AUTH_OK


def _apply_user_role(state: AuthState, user: User, command: UserRole) -> AuthResult:
    if command.role not in state.roles:
        return _refused("role_not_found", f"no role {command.role!r}")
    if command.grant:
        user.roles.add(command.role)
        return AUTH_OK
    if command.role not in user.roles:
        return _refused("role_not_granted", f"user {user.name!r} does not hold {command.role!r}")
    if user.name == ROOT and command.role == ROOT and state.enabled:
        return _refused("bad_role", "root cannot lose the role root while auth is enabled")
    user.roles.discard(command.role)
    return AUTH_OK


def _apply_role(state: AuthState, command: RoleAdd | RoleDelete | RolePermission) -> AuthResult:
    roles = state.roles
    if command.name == ROOT:
        return _refused("bad_role", "the role root is built in: it cannot be changed")
    role = roles.get(command.name)
    if type(command) is RoleAdd:
        if role is not None:
            return _refused("role_exists", f"role {command.name!r} exists")
        roles[command.name] = Role(command.name)
        return AUTH_OK
    if role is None:
        return _refused("role_not_found", f"no role {command.name!r}")
    if type(command) is RoleDelete:
        del roles[command.name]
        for user in state.users.values():
            user.roles.discard(command.name)
        return AUTH_OK
    assert type(command) is RolePermission
    permission = command.permission
    span = (permission.start, permission.end)
    if command.grant:
        role.permissions[span] = permission.access
    elif role.permissions.pop(span, None) is None:
        return _refused("permission_not_found", f"role {command.name!r} has no such range")
    return AUTH_OK


# ---------------------------------------------------------------------- wire form
# Tags 30..38 in the command space of kvstore.state.commands, which calls these.

_TAGS: dict[type, int] = {
    AuthEnable: 30,
    AuthDisable: 31,
    UserAdd: 32,
    UserPassword: 33,
    UserDelete: 34,
    UserRole: 35,
    RoleAdd: 36,
    RoleDelete: 37,
    RolePermission: 38,
}
AUTH_TAGS = frozenset(_TAGS.values())


def auth_fields(command: AuthCommand) -> list[object]:
    """The msgpack array of an auth command, tag first."""
    tag = _TAGS[type(command)]
    if type(command) is RolePermission:
        p = command.permission
        return [tag, command.name, p.access, p.start, p.end, command.grant]
    values = [getattr(command, name) for name in command.__slots__ if name != "session"]
    return [tag, *values]


def decode_auth(fields: tuple[object, ...]) -> AuthCommand:
    """The inverse of auth_fields; ValueError/TypeError for anything malformed."""
    tag, *rest = fields
    if tag == _TAGS[RolePermission]:
        name, access, start, end, grant = rest
        return RolePermission(name, Permission(access, start, end), grant)  # type: ignore[arg-type]
    cls = next(c for c, t in _TAGS.items() if t == tag)
    command: AuthCommand = cls(*rest)
    return command
