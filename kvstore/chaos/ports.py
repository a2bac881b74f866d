"""Loopback ports for the clusters this machine starts for itself: `kv chaos`, the
benchmarks and the tests.

Why not bind(0) and release: the OS draws bind(0) ports and every outgoing connection's
local port from its ephemeral range, so a port released there can be taken by any
process between the draw and the node's own bind (a test cluster failed twice in a
day with "address already in use": another test's node had been given the port). Ports
below that range are handed out by nobody but this function, so only another process
drawing here could take one, and none can: a drawn port is claimed with an exclusive
lock on a file named after it (in a directory of the user's own under the temporary
directory) for CLAIM_S, long enough for the node it is for to bind it, after which its
listening socket keeps it. The kernel drops the claims of a process that exits. The
files stay, empty, at most one per port of the stretch: removing one that another
process has just opened would let two processes lock different files for one port. Each
process also walks the stretch from its own starting point (from its PID), so parallel
test workers rarely even meet, and every port is checked bindable when drawn.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import socket
import stat
import tempfile
import time
from collections import deque
from pathlib import Path

HOST = "127.0.0.1"
STRETCH = 12_000
"""How many ports below the ephemeral range are drawn from."""
LOWEST = 1024
"""Never a privileged port."""
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL_LOW = 32768
"""Linux's default lower bound, when the range cannot be read."""
CLAIM_S = 120.0
"""How long a drawn port stays claimed against other processes drawing here."""


def _stretch() -> range:
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = _DEFAULT_EPHEMERAL_LOW
    return range(max(LOWEST, low - STRETCH), low)


def _walk(ports: range) -> itertools.cycle[int]:
    start = (os.getpid() * 7919) % max(len(ports), 1)
    return itertools.cycle([*ports[start:], *ports[:start]])


_STRETCH_PORTS = _stretch()
_next_port = _walk(_STRETCH_PORTS)


_claims: deque[tuple[float, int]] = deque()
"""(when claimed, the open file holding the lock), oldest first."""


def _claims_dir() -> Path:
    """The user's own directory of claims; one that someone else made (or a link put
    there) is refused rather than trusted."""
    path = Path(tempfile.gettempdir()) / f"kvstore-ports-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a directory of this user's own: remove it")
    return path


def _release_old_claims(now: float) -> None:
    while _claims and now - _claims[0][0] >= CLAIM_S:
        os.close(_claims.popleft()[1])


def _claim(claims: Path, port: int, now: float) -> bool:
    """Lock `port`'s file unless another process (or another draw) holds it."""
    fd = os.open(claims / str(port), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _claims.append((now, fd))
    return True


def port_free(port: int) -> bool:
    """Whether a server could listen on `port` of HOST now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` different ports of HOST, each free when drawn (see the module docstring)."""
    now = time.monotonic()
    _release_old_claims(now)
    claims = _claims_dir()
    drawn: list[int] = []
    for _ in range(len(_STRETCH_PORTS)):
        if len(drawn) == count:
            break
        port = next(_next_port)
        if port not in drawn and port_free(port) and _claim(claims, port, now):
            drawn.append(port)
    if len(drawn) == count:
        return drawn
    raise RuntimeError(f"no {count} free ports below the ephemeral range on {HOST}")
