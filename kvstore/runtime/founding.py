"""Whether a node on pristine storage may found a cluster (issue 10, item 4).

Pristine storage (no log, no snapshot, term 0) is what a brand-new founder has, and
also what a wiped or replaced disk looks like; founding from the second forgets the
votes the node cast and the entries it acknowledged. `kv serve --initial-cluster`
founds without asking. Otherwise the node asks every other node of its file
(kvstore.peers.seen, all at once, each with a short timeout, retrying the silent ones
for a short window so that founders started together hear each other) and refuses
when any peer
- has seen an incarnation of this node id that is not this directory's: the id had a
  life, with promises, that this disk no longer holds; or
- was seeded by `kv snapshot restore` while this node was not: an unseeded majority
  would start a history that the seeded nodes later erase.
Peers that never answer are no evidence either way: a wiped node started while every
peer that knew it is unreachable founds as before (README: Replacing a disk).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from consensus.types import NodeId
from kvstore.config import ClusterConfig, NodeConfig
from kvstore.peers.seen import SeenAnswer
from kvstore.runtime.leveldb_storage import LevelDBStorage

REPLACE_DISK = (
    "this node cannot rejoin with this data: remove it from the cluster "
    "(`kv member remove <id>` on a healthy node), wipe its data directory, start it "
    "with --join and `kv member add` it again (README: Replacing a disk)"
)
PROBE_WINDOW_S = 2.0
"""How long a pristine founder keeps asking peers that have not answered yet."""
RETRY_S = 0.25

Ask = Callable[[NodeId, str, NodeId], Awaitable[SeenAnswer | None]]
"""(peer id, peer URL, node asked about) -> the peer's answer, or None if none came."""


class FoundingRefused(Exception):
    """This pristine node must not found a cluster; the message says what to do."""


def pristine(storage: LevelDBStorage) -> bool:
    return (
        storage.last_index() == 0
        and storage.snapshot_meta() is None
        and storage.initial_state().term == 0
    )


async def check_founding(
    cluster: ClusterConfig,
    me: NodeConfig,
    incarnation: str | None,
    ask: Ask,
    window_s: float = PROBE_WINDOW_S,
) -> list[NodeId]:
    """Raise FoundingRefused when a peer proves that founding would be unsafe; else the
    peers that answered (the rest were unreachable for the whole window)."""
    pending = {n.id: n.peer_url for n in cluster.nodes if n.id != me.id}
    answered: list[NodeId] = []
    deadline = time.monotonic() + window_s
    while pending:
        started = time.monotonic()
        answers = await asyncio.gather(*(ask(p, url, me.id) for p, url in pending.items()))
        for answer in answers:
            if answer is None:
                continue
            _judge(answer, me, incarnation)
            answered.append(answer.peer)
            del pending[answer.peer]
        if not pending or time.monotonic() >= deadline:
            break
        await asyncio.sleep(max(0.0, RETRY_S - (time.monotonic() - started)))
    return answered


def _judge(answer: SeenAnswer, me: NodeConfig, incarnation: str | None) -> None:
    if answer.incarnation is not None and answer.incarnation != incarnation:
        raise FoundingRefused(
            f"{me.id}'s data directory {me.data_dir} holds no log, but {answer.peer} has "
            f"seen an earlier incarnation of {me.id}: its disk was wiped or replaced and "
            f"founding again would forget its votes and acknowledged entries; {REPLACE_DISK}"
        )
    if answer.restored:
        raise FoundingRefused(
            f"{me.id}'s data directory {me.data_dir} holds no log, but {answer.peer} was "
            "seeded by `kv snapshot restore`: seed this node too (`kv snapshot restore "
            f"FILE --config ... --node {me.id}`) before starting it, so that no unseeded "
            "majority starts a history the seeded nodes would later erase"
        )
