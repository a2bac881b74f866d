"""TCP proxies that stand for the network between nodes, one per directed link a -> b.

Node code stays untouched: the chaos harness gives node a a config file in which the
URLs of every other node b point at the proxy of link (a -> b), so everything a sends
to b crosses that proxy and can be passed, dropped, delayed or made lossy at run time.
Links are directed on purpose: Raft replies travel as messages of their own over the
reverse link, so cutting (a -> b) alone is a one-way partition (a cannot reach b, b
still reaches a), a fault symmetric partitions never produce.

A TCP stream cannot lose single chunks without corrupting what follows, so "loss"
here is what a broken path looks like to the ends: the connection is cut (a random
chunk aborts it with probability `loss`) and the sender reconnects. A dropped link
blackholes: it accepts new connections and swallows their bytes without answering,
which is what a partition looks like from inside (timeouts, not quick refusals).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class LinkState:
    """What a link does to the bytes that cross it; the default passes them untouched."""

    blocked: bool = False
    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    """Probability that a chunk a -> b cuts the connection (see the module docstring)."""

    def describe(self) -> str:
        if self.blocked:
            return "drop"
        parts = []
        if self.delay_s or self.jitter_s:
            parts.append(f"delay {self.delay_s * 1000:.0f}±{self.jitter_s * 1000:.0f}ms")
        if self.loss:
            parts.append(f"loss {self.loss:.0%}")
        return ", ".join(parts) or "pass"


PASS = LinkState()


class LinkProxy:
    """Forwards connections to `upstream` for the directed link `src -> dst`.

    Bytes from src to dst get the link's delay and loss; the answers on the same
    connection (HTTP status lines, a few bytes) flow back undelayed, so the reverse
    link alone decides how fast dst's own messages reach src.
    """

    def __init__(
        self,
        src: str,
        dst: str,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.src, self.dst = src, dst
        self.upstream = upstream
        self.host, self.port = host, port
        self.state = PASS
        self.rng = rng or random.Random(0)
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._blackholed: set[asyncio.StreamWriter] = set()
        self.stats = {"accepted": 0, "cut": 0, "blackholed": 0, "bytes": 0}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, avoid: Collection[int] = ()) -> None:
        """Listen; with port 0 the OS picks a free port, read back into `self.port`, and
        never one of `avoid` (ports the nodes were given but have not bound yet: the OS
        may hand them out again, and the node could then not start)."""
        held: list[asyncio.Server] = []
        try:
            while True:
                server = await asyncio.start_server(self._accept, self.host, self.port)
                port = server.sockets[0].getsockname()[1]
                if self.port or port not in avoid:
                    break
                held.append(server)  # kept open until a good port is found, so not drawn again
        finally:
            for other in held:
                other.close()
        self._server, self.port = server, port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut_all()
        self._release_blackholed()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    # -------------------------------------------------------------- control

    def set(self, state: LinkState) -> None:
        """Change the link at once: blocking cuts live connections, unblocking releases
        the blackholed ones (closed, so their owners reconnect through a live path)."""
        was_blocked = self.state.blocked
        self.state = state
        if state.blocked and not was_blocked:
            self._cut_all()
        elif was_blocked and not state.blocked:
            self._release_blackholed()

    def heal(self) -> None:
        self.set(PASS)

    def drop(self) -> None:
        self.set(LinkState(blocked=True))

    def delay(self, seconds: float, jitter: float = 0.0) -> None:
        self.set(LinkState(delay_s=seconds, jitter_s=jitter, loss=self.state.loss))

    def lossy(self, probability: float) -> None:
        self.set(
            LinkState(delay_s=self.state.delay_s, jitter_s=self.state.jitter_s, loss=probability)
        )

    # -------------------------------------------------------------- internals

    def _cut_all(self) -> None:
        for conn in list(self._conns):
            conn.abort()
        self.stats["cut"] += len(self._conns)
        self._conns.clear()

    def _release_blackholed(self) -> None:
        for writer in list(self._blackholed):
            writer.transport.abort()
        self._blackholed.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["accepted"] += 1
        if self.state.blocked:
            await self._blackhole(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            writer.transport.abort()  # the peer is down: refuse as it would
            return
        if self.state.blocked:  # dropped while connecting
            up_writer.transport.abort()
            await self._blackhole(reader, writer)
            return
        conn = _Connection(self, reader, writer, up_reader, up_writer)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)

    async def _blackhole(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Swallow everything until the sender gives up or the link heals."""
        self.stats["blackholed"] += 1
        self._blackholed.add(writer)
        try:
            while await reader.read(CHUNK):
                pass
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._blackholed.discard(writer)
            writer.transport.abort()


class _Connection:
    """One proxied connection: a delayed pump src -> dst and a direct pump dst -> src."""

    def __init__(
        self,
        link: LinkProxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        self.link = link
        self.reader, self.writer = reader, writer
        self.up_reader, self.up_writer = up_reader, up_writer
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Reset both sides now, as a broken path would (no FIN, no flush)."""
        self.writer.transport.abort()
        self.up_writer.transport.abort()
        for task in self.tasks:
            task.cancel()

    async def run(self) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.tasks = [
            asyncio.create_task(self._read_forward(queue)),
            asyncio.create_task(self._write_forward(queue)),
            asyncio.create_task(self._pump_back()),
        ]
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.abort()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _read_forward(self, queue: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        """Read src's bytes and stamp each chunk with its delivery time (kept in order)."""
        loop = asyncio.get_running_loop()
        last = 0.0
        try:
            while data := await self.reader.read(CHUNK):
                state = self.link.state
                if state.loss and self.link.rng.random() < state.loss:
                    self.link.stats["cut"] += 1
                    return
                jitter = self.link.rng.uniform(0, state.jitter_s) if state.jitter_s else 0.0
                last = max(last, loop.time() + state.delay_s + jitter)
                queue.put_nowait((last, data))
        except OSError:
            return
        finally:
            queue.put_nowait(None)
        await asyncio.Event().wait()  # half-closed: stay until the other pumps finish

    async def _write_forward(self, queue: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            at, data = item
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.up_writer.write(data)
            self.link.stats["bytes"] += len(data)
            try:
                await self.up_writer.drain()
            except OSError:
                return
        with contextlib.suppress(OSError):
            self.up_writer.write_eof()
        await asyncio.Event().wait()

    async def _pump_back(self) -> None:
        try:
            while data := await self.up_reader.read(CHUNK):
                self.writer.write(data)
                await self.writer.drain()
        except OSError:
            return


class ProxyNet:
    """Every directed link of a cluster, with the vocabulary the nemesis speaks.

    A link (a -> b) may have several proxies (one for b's peer_url, one for its
    client_url, which a uses to forward client requests to a leader b): a partition
    that let forwarded requests through would not be a partition. They share a state.
    """

    def __init__(self) -> None:
        self.links: dict[tuple[str, str], list[LinkProxy]] = {}

    def add(self, link: LinkProxy) -> None:
        self.links.setdefault((link.src, link.dst), []).append(link)

    @property
    def proxies(self) -> list[LinkProxy]:
        return [proxy for group in self.links.values() for proxy in group]

    async def start(self, avoid: Collection[int] = ()) -> None:
        for proxy in self.proxies:
            await proxy.start(avoid)

    async def close(self) -> None:
        for proxy in self.proxies:
            await proxy.close()

    def state(self, src: str, dst: str) -> LinkState:
        return self.links[(src, dst)][0].state

    def set(self, src: str, dst: str, state: LinkState) -> None:
        for proxy in self.links.get((src, dst), []):
            proxy.set(state)

    def heal(self) -> None:
        for src, dst in self.links:
            self.set(src, dst, PASS)

    def cut(self, src: str, dst: str, *, both_ways: bool = True) -> None:
        blocked = LinkState(blocked=True)
        for pair in [(src, dst), (dst, src)] if both_ways else [(src, dst)]:
            self.set(*pair, blocked)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut every link between different groups (a node in no group keeps its links)."""
        group_of = {node: i for i, group in enumerate(groups) for node in group}
        for src, dst in self.links:
            if src in group_of and dst in group_of and group_of[src] != group_of[dst]:
                self.cut(src, dst, both_ways=False)

    def describe(self) -> dict[str, str]:
        """The links that are not passing ("a->b" -> state), to show what is in force."""
        return {
            f"{src}->{dst}": self.state(src, dst).describe()
            for src, dst in sorted(self.links)
            if self.state(src, dst) != PASS
        }
