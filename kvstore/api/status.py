"""The body of `GET /v1/status`: the contract's fields plus what an operator needs next."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from kvstore.api.common import RUNTIME_KEY
from kvstore.runtime.node import NodeRuntime


def status_json(runtime: NodeRuntime) -> dict[str, Any]:
    """`GET /v1/status`: the contract's fields, `members` as the client expects them, and
    what an operator needs next (log bounds, peer links, waiting requests)."""
    st = runtime.node.status()
    members = runtime.membership.view.members
    return {
        "id": st.id,
        "role": st.role.value,
        "term": st.term,
        "leader": st.leader,
        "commit_index": st.commit_index,
        "applied_index": runtime.sm.applied_index,
        "last_index": st.last_index,
        "first_index": st.first_index,
        "snapshot_index": st.first_index - 1,
        "log_size": st.last_index - st.first_index + 1,
        "last_snapshot": runtime.snapshots.compactor.last,
        "loop_lag_max_ms": round(runtime.stats.loop_lag.max_s * 1000, 1),
        "loop_lag_max_busy_ms": round(runtime.stats.loop_lag.max_busy_s * 1000, 1),
        "loop_lag_max_loop_cpu_ms": round(runtime.stats.loop_lag.max_loop_cpu_s * 1000, 1),
        "gc_pause_max_ms": [round(s * 1000, 1) for s in runtime.stats.gc_pauses.max_s],
        "gc_collections": list(runtime.stats.gc_pauses.counts),
        "revision": runtime.sm.revision,
        "keys": len(runtime.sm),
        "members": [
            {
                "id": node_id,
                "client_url": members[node_id].client_url,
                "peer_url": members[node_id].peer_url,
                "role": "voter" if node_id in st.voters else "learner",
            }
            for node_id in (*st.voters, *st.learners)
            if node_id in members
        ],
        "voters": list(st.voters),
        "learners": list(st.learners),
        "peers": _peers(runtime),
        **runtime.pending.counts(),
    }


def _peers(runtime: NodeRuntime) -> dict[str, dict[str, Any]]:
    """The outgoing link's health plus when the peer was last heard from: a paused peer
    can keep accepting bytes into its socket buffer for a while, but it stops talking."""
    now = time.monotonic()
    peers = runtime.transport.peer_status()
    for peer_id, info in peers.items():
        heard = runtime.last_heard.get(peer_id)
        info["last_heard_s_ago"] = None if heard is None else round(now - heard, 3)
    return peers


async def handle_status(request: web.Request) -> web.Response:
    return web.json_response(status_json(request.app[RUNTIME_KEY]))
