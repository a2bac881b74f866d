"""A tiny lossless network for scripted unit tests of the core, in the style of
etcd-io/raft's tests: deliver everything, or isolate, cut and heal links by hand."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from consensus import (
    Config,
    Entry,
    ForwardedProposal,
    HardState,
    InstallSnapshot,
    MemoryStorage,
    Message,
    RaftNode,
    ReadState,
    Role,
)


class ScriptedCluster:
    def __init__(
        self,
        ids: Iterable[str] = ("a", "b", "c"),
        seed: int = 0,
        joining: Iterable[str] = (),
        **config: int,
    ) -> None:
        self.ids = tuple(ids)
        self.joining = set(joining)
        self.config = config
        self.snapshots_received: dict[str, bytes] = {}
        self.storages = {node_id: MemoryStorage() for node_id in self.ids}
        self.nodes = {
            node_id: RaftNode(
                self._config(node_id), self.storages[node_id], random.Random(f"{seed}-{node_id}")
            )
            for node_id in self.ids
        }
        self.applied: dict[str, list[Entry]] = {node_id: [] for node_id in self.ids}
        self.read_states: dict[str, list[ReadState]] = {node_id: [] for node_id in self.ids}
        self.forwarded: dict[str, list[ForwardedProposal]] = {node_id: [] for node_id in self.ids}
        self.cut_links: set[tuple[str, str]] = set()
        self.in_flight: list[Message] = []
        self.delivered: list[Message] = []
        self.sent: list[Message] = []
        self.drop: Callable[[Message], bool] = lambda msg: False

    def isolate(self, node_id: str) -> None:
        for other in self.ids:
            if other != node_id:
                self.cut_links.add((node_id, other))
                self.cut_links.add((other, node_id))

    def heal(self) -> None:
        self.cut_links.clear()

    def preload(self, node_id: str, terms: list[int], term: int) -> None:
        """Give a node a log (one entry per listed term) and a current term, then
        restart it from that storage, to set up the situations the paper draws."""
        entries = [Entry(t, index, b"") for index, t in enumerate(terms, start=1)]
        self.storages[node_id].save(HardState(term=term), entries)
        self.restart(node_id)

    def _config(self, node_id: str) -> Config:
        founders = tuple(i for i in self.ids if i not in self.joining)
        return Config(node_id, () if node_id in self.joining else founders, **self.config)

    def restart(self, node_id: str) -> None:
        """Rebuild a node from its storage only, as after a crash."""
        self.nodes[node_id] = RaftNode(
            self._config(node_id), self.storages[node_id], random.Random(node_id)
        )
        self.applied[node_id] = []

    def compact(self, node_id: str) -> None:
        """Snapshot what the node applied and drop that log prefix, as the driver does."""
        meta = self.nodes[node_id].snapshot_meta()
        self.storages[node_id].apply_snapshot(meta, b"state@%d" % meta.index)

    def process_ready(self, node_id: str) -> list[Message]:
        node = self.nodes[node_id]
        out: list[Message] = []
        while node.has_ready():
            ready = node.ready()
            if ready.snapshot is not None:
                data = self.snapshots_received.pop(node_id)
                self.storages[node_id].apply_snapshot(ready.snapshot, data)
                self.applied[node_id] = []
            self.storages[node_id].save(ready.hard_state, ready.entries)
            out.extend(ready.messages)
            self.applied[node_id].extend(ready.committed)
            self.read_states[node_id].extend(ready.read_states)
            self.forwarded[node_id].extend(ready.forwarded)
            node.advance(ready)
        return out

    def collect(self) -> None:
        for node_id in self.ids:
            self.in_flight.extend(self.process_ready(node_id))

    def deliver_all(self, max_rounds: int = 100) -> None:
        """Deliver messages until the network is quiet (dropping those on cut links)."""
        for _ in range(max_rounds):
            self.collect()
            if not self.in_flight:
                return
            batch, self.in_flight = self.in_flight, []
            self.sent.extend(batch)
            for msg in batch:
                if (msg.sender, msg.recipient) not in self.cut_links and not self.drop(msg):
                    self.delivered.append(msg)
                    if isinstance(msg, InstallSnapshot):
                        # the driver streams the state itself beside the message
                        data = self.storages[msg.sender].snapshot_data()
                        assert data is not None
                        self.snapshots_received[msg.recipient] = data
                    self.nodes[msg.recipient].step(msg)
        raise AssertionError("network did not go quiet")

    def tick(self, node_id: str, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[node_id].tick()

    def elect(self, node_id: str) -> None:
        """Make `node_id` campaign by running out its election timeout, then settle."""
        node = self.nodes[node_id]
        for _ in range(4 * node.config.election_tick):
            if node.role is not Role.FOLLOWER:
                break
            node.tick()
        self.deliver_all()
        assert node.role is Role.LEADER, f"{node_id} did not become leader: {node.role}"

    def leader(self) -> RaftNode | None:
        leaders = [n for n in self.nodes.values() if n.role is Role.LEADER]
        return max(leaders, key=lambda n: n.term) if leaders else None
