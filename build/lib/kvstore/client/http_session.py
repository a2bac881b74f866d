"""One way to make an aiohttp client session for requests that must not be repeated."""

from __future__ import annotations

from typing import Any

import aiohttp


def single_send_session(**kwargs: Any) -> aiohttp.ClientSession:
    """A ClientSession that sends each request at most once.

    aiohttp (3.9+) silently sends an "idempotent" request (PUT, DELETE) a second time
    when the pooled connection it used turns out to be closed; if that second attempt
    cannot connect, the caller sees a connection error although the first attempt may
    have reached the server and been applied. Our writes are not idempotent (versions
    and revisions move), and a 'not sent' verdict for a write that was sent would break
    the contract, so retries are left to our own code, which knows what is safe.
    """
    session = aiohttp.ClientSession(**kwargs)
    session._retry_connection = False  # private, but the only switch aiohttp offers
    return session
