"""May this user run this command? One answer for the request-time check (a fast refusal
on the node that admits the request) and the apply-time check (the state machine, at the
command's log position, whose answer is the one that counts).

What each command needs (kvstore.state.auth for the model):
- put, delete: write on the key (a put with a lease or a fence too: the key is written);
- transaction: read on every compared key, read on every range it reads, write on every
  key it puts and on the whole of every range it deletes, in both branches (which
  branch runs is not known before it runs, and the check must not depend on it);
- lease grant: any user; lease revoke: write on every key attached to the lease
  (revoking deletes them); lock, election: write on the lock's name as a key;
- auth commands: root, except a user setting its own password.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kvstore.state.auth import READ, WRITE, AuthState, KeyAccess
from kvstore.state.auth_commands import AUTH_COMMANDS, UserPassword
from kvstore.state.commands import (
    Command,
    Delete,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Proclaim,
    Put,
    Txn,
    TxnDeleteRange,
    TxnPut,
    TxnRange,
)
from kvstore.state.types import AuthResult

PERMISSION_DENIED = "permission_denied"


def denied(message: str) -> AuthResult:
    return AuthResult(PERMISSION_DENIED, message)


def refuse(
    auth: AuthState, user: str, command: Command, lease_keys: Callable[[int], Iterable[str]]
) -> AuthResult | None:
    """Why `user` may not run `command` under `auth` (None: it may). `lease_keys(id)`
    gives the keys attached to a lease (none for an unknown one)."""
    kind = type(command)
    if kind is Put or kind is Delete:
        key = command.key  # type: ignore[union-attr]
        if not auth.access(user, WRITE).key(key):
            return denied(f"user {user!r} may not write {key!r}")
        return None
    if kind is Txn:
        return _refuse_txn(auth, user, command)  # type: ignore[arg-type]
    if kind in (LockAcquire, LockRelease, Proclaim):
        name = command.name  # type: ignore[union-attr]
        if not auth.access(user, WRITE).key(name):
            return denied(f"user {user!r} may not use the lock or election {name!r}")
        return None
    if kind is LeaseRevoke:
        writable = auth.access(user, WRITE)
        for key in lease_keys(command.lease):  # type: ignore[union-attr]
            if not writable.key(key):
                return denied(f"user {user!r} may not delete {key!r}, a key of the lease")
        return None
    if kind in AUTH_COMMANDS and not auth.is_root(user):
        if kind is UserPassword and command.name == user:  # type: ignore[union-attr]
            return None
        return denied(f"user {user!r} is not root: {kind.__name__} needs the role root")
    return None


def _refuse_txn(auth: AuthState, user: str, txn: Txn) -> AuthResult | None:
    readable: KeyAccess = auth.access(user, READ)
    for compare in txn.compares:
        if not readable.key(compare.key):
            return denied(f"user {user!r} may not read {compare.key!r} (compare)")
    writable: KeyAccess | None = None
    for op in (*txn.success, *txn.failure):
        if type(op) is TxnRange:
            keys = op.query.keys
            if not readable.covers(keys.start, keys.end):
                return denied(f"user {user!r} may not read all of {_span(keys.start, keys.end)}")
            continue
        writable = writable or auth.access(user, WRITE)
        if type(op) is TxnPut:
            if not writable.key(op.key):
                return denied(f"user {user!r} may not write {op.key!r}")
        elif type(op) is TxnDeleteRange:
            keys = op.keys
            if not writable.covers(keys.start, keys.end):
                return denied(f"user {user!r} may not delete all of {_span(keys.start, keys.end)}")
    return None


def _span(start: str, end: str | None) -> str:
    if end == start + "\0":
        return repr(start)
    return f"[{start!r}, {'end' if end is None else repr(end)})"
