"""Passwords and tokens: scrypt hashes, and signed, expiring bearer tokens.

A token is `<payload>.<signature>`, both base64url without padding: the payload is the
JSON `{"u": user, "g": generation, "e": expiry (unix seconds)}`, the signature its
HMAC-SHA256 under the signing key in the replicated auth state. Every node holds that
key, so every node verifies a token by itself, with no round trip. A token is refused
when the signature does not match (tampered, or signed before auth was disabled and
enabled again: a new key), when it expired, and when its user is gone or its generation
is not the user's (the password changed, or the user was deleted and made again).
Clocks of the nodes should agree within a few seconds: the expiry is checked on the
clock of the node that receives the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os

from kvstore.state.auth import AuthState

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
SIGNING_KEY_BYTES = 32


class TokenError(Exception):
    """A token that does not let its bearer in; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def new_signing_key() -> bytes:
    return os.urandom(SIGNING_KEY_BYTES)


def hash_password(password: str, salt: bytes) -> bytes:
    """scrypt (memory-hard: about 16 MiB and 50 ms a try), so a stolen snapshot costs an
    attacker that much per guess. Blocking: run it in a worker thread."""
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES
    )


def password_matches(auth: AuthState, user: str, password: str) -> bool:
    """Whether `password` is `user`'s (False for an unknown user, after the same work,
    so the answer time does not tell which names exist). Blocking, like hash_password."""
    found = auth.users.get(user)
    salt, expected = (found.salt, found.hash) if found is not None else (b"\0" * SALT_BYTES, b"")
    return hmac.compare_digest(hash_password(password, salt), expected) and found is not None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def issue_token(auth: AuthState, user: str, now: float, ttl: int) -> str:
    """A token for `user` (who must exist) valid `ttl` seconds from `now`."""
    claims = {"u": user, "g": auth.users[user].generation, "e": int(now) + ttl}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    return f"{payload}.{_sign(auth.key, payload)}"


def verify_token(auth: AuthState, token: str, now: float) -> str:
    """The user a token names, if it is valid now; TokenError otherwise."""
    payload, _, signature = token.partition(".")
    if not payload or not signature or not auth.key:
        raise TokenError("bad_token", "the token is malformed")
    if not hmac.compare_digest(_sign(auth.key, payload), signature):
        raise TokenError("bad_token", "the token's signature does not match")
    try:
        claims = json.loads(_unb64(payload))
        user, generation, expiry = claims["u"], claims["g"], claims["e"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise TokenError("bad_token", "the token is malformed") from None
    if type(expiry) is not int or expiry <= now:
        raise TokenError("token_expired", "the token expired: get a new one")
    found = auth.users.get(user) if type(user) is str else None
    if found is None or found.generation != generation:
        raise TokenError("bad_token", "the token's user was deleted or changed its password")
    return str(user)
