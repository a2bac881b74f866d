"""A leader killed with SIGKILL is replaced long before the election timeout.

The kernel resets a dead process's connections at once; the survivors' peer links see
it (kvstore.peers.link) and their cores campaign after a few ticks instead of a whole
randomized election timeout (consensus.election_timer). The cluster here runs with an
election timeout of 1-2 s, so a new leader (and an acknowledged write) within 0.9 s
can only come from that early path.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.harness import Cluster, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]

ELECTION_TICKS = 100
"""1-2 s at the default 10 ms tick: the usual path could not elect before that."""
FAST_S = 0.9


def test_killed_leader_is_replaced_before_the_election_timeout(
    cluster_factory: type[Cluster],
) -> None:
    cluster = cluster_factory(election_ticks=ELECTION_TICKS)  # type: ignore[call-arg]
    cluster.start()
    leader = cluster.wait_healthy(timeout=20.0)
    old_term = cluster.status(leader)["term"]
    survivors = [n for n in cluster.nodes if n != leader]
    assert cluster.put(survivors[0], "before", b"1").status == 200

    killed_at = time.monotonic()
    cluster.kill9(leader)
    new_leader = wait_until(
        lambda: cluster.leader(among=survivors), FAST_S, "a new leader among the survivors"
    )
    elected_after = time.monotonic() - killed_at
    reply = cluster.put(survivors[1], "after", b"2", timeout=FAST_S)
    written_after = time.monotonic() - killed_at

    assert new_leader in survivors
    assert cluster.status(new_leader)["term"] > old_term
    assert reply.status == 200, reply.body
    assert written_after < FAST_S, (elected_after, written_after, cluster.logs())
