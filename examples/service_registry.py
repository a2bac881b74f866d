"""Service registration: each instance announces itself; every instance sees who is up.

    python examples/service_registry.py --endpoints http://127.0.0.1:8001 \\
        --service api --id api-1 --address 127.0.0.1:9001

Registering: the instance puts `services/<service>/<id>` (its address as the value)
attached to a lease of `--ttl` seconds that the client keeps alive in the background.
Nobody has to deregister a crashed instance: when the process dies the keep-alives
stop, the leader ends the lease after its TTL and deletes the key in the same log
entry. A lease lives at least TTL after its last keep-alive and at most TTL plus one
election time (a new leader restarts every lease's full TTL when it takes office), so
that is how long a dead instance stays listed.

Discovering: a `Mirror` of `services/` lists every instance at one revision, then
watches from the next revision, so no arrival or departure is missed or seen twice,
across reconnects and node failures. Each change is printed as a line:
`up KEY ADDRESS` or `down KEY`; `--exit-after N` stops after N changes (for tests).
"""

from __future__ import annotations

import argparse
import asyncio

from kvstore.client import AsyncKV, Change, Mirror

PREFIX = "services/"


def show(change: Change) -> None:
    if change.new is None:
        print(f"down {change.key}", flush=True)
    else:
        print(f"up {change.key} {change.new.decode()}", flush=True)


async def main(args: argparse.Namespace) -> None:
    endpoints = args.endpoints.split(",") if args.endpoints else None
    changes = 0
    done = asyncio.Event()

    def on_change(change: Change) -> None:
        nonlocal changes
        show(change)
        changes += 1
        if args.exit_after and changes >= args.exit_after:
            done.set()

    async with AsyncKV(endpoints) as kv, kv.lease(args.ttl) as lease:
        key = f"{PREFIX}{args.service}/{args.id}"
        await kv.put(key, args.address, lease=lease.id)
        print(f"registered {key} lease {lease.id}", flush=True)
        async with Mirror(kv, PREFIX, on_change=on_change):
            lost = asyncio.create_task(lease.lost.wait())
            finished = asyncio.create_task(done.wait())
            await asyncio.wait((lost, finished), return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            finished.cancel()
            if lease.lost.is_set():
                print(f"lease {lease.id} lost: {key} is no longer registered", flush=True)
    # Leaving `kv.lease` revoked the lease: the key is gone at once, not a TTL later.


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", help="URL,URL,... (else KV_ENDPOINTS or ./cluster.toml)")
    parser.add_argument("--service", required=True, help="service name, e.g. api")
    parser.add_argument("--id", required=True, help="this instance's name, e.g. api-1")
    parser.add_argument("--address", default="", help="what others need to reach it")
    parser.add_argument("--ttl", type=int, default=5, help="lease TTL in seconds")
    parser.add_argument("--exit-after", type=int, default=0, help="stop after N changes")
    asyncio.run(main(parser.parse_args()))
