"""A client process for the lease and lock tests, killed (-9) or paused (SIGSTOP) by them.

python -m tests.integration.lease_client ENDPOINTS ephemeral KEY TTL
    holds a lease with KEY attached, prints "ready LEASE", then sleeps until killed.
python -m tests.integration.lease_client ENDPOINTS holder LOCK TTL KEY
    takes LOCK, prints "token T", waits for a line on stdin, then writes KEY fenced
    with its token and prints "written" or "fenced HOLDER".
"""

from __future__ import annotations

import sys
import threading

from kvstore.client import KV, Fenced


def main(endpoints: str, mode: str, name: str, ttl: str, key: str = "") -> None:
    with KV(endpoints.split(","), timeout=10.0) as kv:
        if mode == "ephemeral":
            with kv.lease(int(ttl)) as lease:
                kv.put(name, b"alive", lease=lease.id)
                print(f"ready {lease.id}", flush=True)
                threading.Event().wait()  # until killed
        with kv.lock(name, int(ttl)) as lock:
            print(f"token {lock.token}", flush=True)
            sys.stdin.readline()  # the test pauses us here, then lets us go on
            try:
                lock.put(key, f"holder {lock.token}".encode())
                print("written", flush=True)
            except Fenced as exc:
                print(f"fenced {exc.holder}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
