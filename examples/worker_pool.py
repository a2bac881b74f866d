"""A worker pool: every instance registers itself, only the elected leader runs the job.

    python examples/worker_pool.py --endpoints http://127.0.0.1:8001 --id w1 --runs 3

Service registration: each instance puts `services/workers/<id>` attached to its own
lease, kept alive in the background; if the instance dies, its key vanishes within
TTL + election time, so `kv get --prefix services/workers/` lists the live ones.
Leader election: instances campaign in the election `workers/leader` (first come,
first served); the leader runs a periodic job whose writes carry the election's fence,
so a leader that paused past its lease and was replaced cannot overwrite its
successor's results (409 `fenced`). It does not check `lease.lost` before writing: a
pause can fall between such a check and the write; the fence, checked by the cluster
in log order, is the check that counts.
"""

from __future__ import annotations

import argparse
import asyncio

from kvstore.client import AsyncKV, Fenced


async def main(endpoints: list[str], worker: str, runs: int, period: float, ttl: int) -> None:
    async with AsyncKV(endpoints) as kv, kv.lease(ttl) as lease:
        await kv.put(f"services/workers/{worker}", worker, lease=lease.id)
        election = kv.election("workers/leader")
        token = await election.campaign(worker, ttl, lease=lease)
        print(f"{worker} leads with token {token}", flush=True)
        try:
            for run in range(1, runs + 1):
                live = [item.key async for item in kv.get_prefix("services/workers/")]
                report = f"run {run} by {worker} token {token}; workers {live}"
                try:
                    await kv.put("jobs/report", report, fence=election.fence)
                except Fenced as exc:
                    print(f"{worker} fenced: token {token} lost to {exc.holder}", flush=True)
                    break
                print(report, flush=True)
                await asyncio.sleep(period)
        finally:
            await election.resign()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", required=True, help="URL,URL,...")
    parser.add_argument("--id", required=True, help="this worker's name")
    parser.add_argument("--runs", type=int, default=3, help="job runs before resigning")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between runs")
    parser.add_argument("--ttl", type=int, default=5, help="lease TTL in seconds")
    args = parser.parse_args()
    asyncio.run(main(args.endpoints.split(","), args.id, args.runs, args.period, args.ttl))
