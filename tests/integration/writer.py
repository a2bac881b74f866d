"""A client that writes throughout a test and then checks that no acknowledged write was lost."""

from __future__ import annotations

import http.client
import itertools
import threading
import time

from tests.integration.harness import Cluster, Reply


class Writer(threading.Thread):
    """A client writing throughout a test: key `{prefix}{i}` = i, then `{prefix}counter` = i,
    one request at a time, to the live nodes in turn.

    It records what the contract lets it rely on: a 200 is acknowledged (must never be
    lost); 503 means never proposed (retried on another node); anything else (504, a
    dropped connection) leaves the outcome unknown and the writer moves on."""

    def __init__(self, cluster: Cluster, prefix: str = "w") -> None:
        super().__init__(daemon=True, name=f"writer-{prefix}")
        self.cluster, self.prefix = cluster, prefix
        self.acked: dict[str, bytes] = {}
        self.counter_acks: list[tuple[int, int]] = []
        """(i, version) of every acknowledged counter write, in acknowledgement order."""
        self.unknown = 0
        self._stop_event = threading.Event()
        self._turn = itertools.count()

    def _node(self) -> str:
        live = [
            n
            for n, p in list(self.cluster.nodes.items())
            if p.running and not p.paused and n not in set(self.cluster.gone)
        ]
        return live[next(self._turn) % len(live)]

    def _write(self, key: str, value: bytes) -> Reply | None:
        """Until the write is acknowledged, definitely not done (retry), or unknown (None)."""
        while not self._stop_event.is_set():
            try:
                reply = self.cluster.put(self._node(), key, value, timeout=10.0)
            except ConnectionRefusedError:
                continue  # never sent
            except (OSError, http.client.HTTPException):
                self.unknown += 1
                return None
            if reply.status == 503:
                time.sleep(0.02)
                continue
            if reply.status != 200:
                self.unknown += 1
                return None
            return reply
        return None

    def run(self) -> None:
        for i in itertools.count():
            if self._stop_event.is_set():
                return
            value = str(i).encode()
            if self._write(f"{self.prefix}{i}", value) is not None:
                self.acked[f"{self.prefix}{i}"] = value
            reply = self._write(f"{self.prefix}counter", value)
            if reply is not None:
                self.counter_acks.append((i, int(reply.json()["version"])))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def check(self, node_id: str) -> None:
        """Every acknowledged write is readable (linearizably, via `node_id`) and the
        counter's acknowledged versions only ever grew."""
        assert len(self.acked) > 10, f"the writer made little progress: {len(self.acked)}"
        versions = [version for _, version in self.counter_acks]
        assert versions == sorted(set(versions)), versions
        for key, value in self.acked.items():
            reply = self.cluster.get(node_id, key)
            assert (reply.status, reply.body) == (200, value), (key, reply.status, reply.body)
        last_i, last_version = self.counter_acks[-1]
        reply = self.cluster.get(node_id, f"{self.prefix}counter")
        assert int(reply.headers["X-KV-Version"]) >= last_version
        assert int(reply.body) >= last_i
