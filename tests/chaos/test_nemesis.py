"""The fault machinery on its own: link proxies against an echo server, schedules, healing.

Everything here is loopback-only and bounded by deadlines; no kv node is started.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest

from kvstore.chaos.nemesis import (
    END_MARGIN_S,
    KINDS,
    FaultWindow,
    Nemesis,
    PlannedFault,
    faulted_time,
    named_schedule,
    parse_kinds,
    random_schedule,
)
from kvstore.chaos.proxy import PASS, LinkProxy, LinkState, ProxyNet

DEADLINE = 5.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_proxy() -> AsyncIterator[LinkProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = LinkProxy("a", "b", ("127.0.0.1", port))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


async def _connect(proxy: LinkProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(proxy.host, proxy.port), DEADLINE)


async def _roundtrip(proxy: LinkProxy, payload: bytes = b"ping") -> bytes:
    reader, writer = await _connect(proxy)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), DEADLINE)
    finally:
        writer.close()


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the connection ends (EOF or reset) within the deadline."""
    try:
        return await asyncio.wait_for(reader.read(1), DEADLINE) == b""
    except (ConnectionError, OSError):
        return True


# ---------------------------------------------------------------------- proxy


async def test_pass_forwards_both_ways(echo_proxy: LinkProxy) -> None:
    assert await _roundtrip(echo_proxy, b"hello") == b"hello"
    assert echo_proxy.url == f"http://127.0.0.1:{echo_proxy.port}"


async def test_drop_cuts_live_connections_and_blackholes_new_ones(echo_proxy: LinkProxy) -> None:
    reader, writer = await _connect(echo_proxy)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), DEADLINE) == b"x"

    echo_proxy.drop()
    assert await _closed_by_peer(reader)
    writer.close()

    # A new connection is accepted but nothing comes back: a partition, not a refusal.
    reader, writer = await _connect(echo_proxy)
    writer.write(b"lost")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)

    echo_proxy.heal()  # the blackholed connection is released, new ones pass
    assert await _closed_by_peer(reader)
    writer.close()
    assert await _roundtrip(echo_proxy, b"back") == b"back"


async def test_delay_adds_latency_and_keeps_order(echo_proxy: LinkProxy) -> None:
    echo_proxy.delay(0.2, jitter=0.05)
    reader, writer = await _connect(echo_proxy)
    started = time.monotonic()
    for i in range(5):
        writer.write(f"<{i}>".encode())
        await writer.drain()
    data = await asyncio.wait_for(reader.readexactly(15), DEADLINE)
    assert data == b"<0><1><2><3><4>"
    assert time.monotonic() - started >= 0.2
    writer.close()

    echo_proxy.heal()
    started = time.monotonic()
    assert await _roundtrip(echo_proxy) == b"ping"
    assert time.monotonic() - started < 0.2


async def test_total_loss_cuts_the_connection(echo_proxy: LinkProxy) -> None:
    echo_proxy.lossy(1.0)
    reader, writer = await _connect(echo_proxy)
    writer.write(b"doomed")
    await writer.drain()
    assert await _closed_by_peer(reader)
    writer.close()
    assert echo_proxy.state.describe() == "loss 100%"


async def test_proxy_to_a_dead_upstream_refuses() -> None:
    proxy = LinkProxy("a", "b", ("127.0.0.1", 1))  # nothing listens on port 1
    await proxy.start()
    try:
        reader, writer = await _connect(proxy)
        writer.write(b"?")
        assert await _closed_by_peer(reader)
        writer.close()
    finally:
        await proxy.close()


def _net(ids: list[str]) -> ProxyNet:
    net = ProxyNet()
    for a in ids:
        for b in ids:
            if a != b:
                net.add(LinkProxy(a, b, ("127.0.0.1", 1)))
    return net


def test_proxynet_partition_and_one_way_cut() -> None:
    net = _net(["n1", "n2", "n3"])
    net.partition([["n1"], ["n2", "n3"]])
    assert set(net.describe()) == {"n1->n2", "n1->n3", "n2->n1", "n3->n1"}
    net.heal()
    assert net.describe() == {}
    net.cut("n1", "n2", both_ways=False)
    assert net.state("n1", "n2").blocked and not net.state("n2", "n1").blocked


# ---------------------------------------------------------------------- schedules


def test_schedule_is_deterministic_from_the_seed() -> None:
    assert random_schedule(42, 60.0) == random_schedule(42, 60.0)
    assert random_schedule(42, 60.0) != random_schedule(43, 60.0)
    assert named_schedule("partitions", 5, 30.0) == named_schedule("partitions", 5, 30.0)


@pytest.mark.parametrize("seed", range(20))
def test_every_planned_fault_heals_before_the_end(seed: int) -> None:
    duration = 35.0
    plan = random_schedule(seed, duration, KINDS)
    assert plan
    for fault in plan:
        assert fault.duration > 0
        assert fault.at >= 0 and fault.end <= duration - END_MARGIN_S + 1e-9
        assert fault.kind in KINDS
    main = sorted((f for f in plan if f.track == "main"), key=lambda f: f.at)
    for before, after in itertools.pairwise(main):
        assert before.end <= after.at, "main-track faults must not overlap"
    assert faulted_time([(f.at, f.end) for f in plan]) >= 25.0


def test_kinds_are_respected_and_validated() -> None:
    plan = random_schedule(3, 30.0, ("kill",))
    assert {f.kind for f in plan} == {"kill"}
    assert parse_kinds("kill, delay") == ("kill", "delay")
    with pytest.raises(ValueError):
        parse_kinds("kill,flood")
    with pytest.raises(ValueError):
        named_schedule("nope", 1, 10.0)


def test_faulted_time_counts_overlaps_once() -> None:
    assert faulted_time([(0, 2), (1, 3), (5, 6)]) == pytest.approx(4.0)


# ---------------------------------------------------------------------- nemesis


class FakeCluster:
    """What the nemesis needs of LocalCluster, without processes."""

    def __init__(self) -> None:
        self.ids = ["n1", "n2", "n3"]
        self.net = _net(self.ids)
        self.paused: set[str] = set()
        self.down: set[str] = set()

    async def leader(self) -> str | None:
        return next((n for n in self.ids if n not in self.down | self.paused), None)

    def running(self, node_id: str) -> bool:
        return node_id not in self.down

    async def kill9(self, node_id: str) -> None:
        self.down.add(node_id)
        self.paused.discard(node_id)

    def start_node(self, node_id: str) -> None:
        self.down.discard(node_id)

    def pause(self, node_id: str) -> None:
        self.paused.add(node_id)

    def resume(self, node_id: str) -> None:
        self.paused.discard(node_id)


def _assert_healthy(cluster: FakeCluster) -> None:
    assert not cluster.paused and not cluster.down
    assert all(cluster.net.state(*pair) == PASS for pair in cluster.net.links)


def _clock() -> Callable[[], float]:
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0


async def test_nemesis_plays_a_fast_schedule_and_heals_everything() -> None:
    cluster = FakeCluster()
    plan = random_schedule(11, 2.0, KINDS, lengths=(0.05, 0.15), gaps=(0.01, 0.05), start=0.05)
    nemesis = Nemesis(cluster, plan, _clock())  # type: ignore[arg-type]
    await asyncio.wait_for(nemesis.run(), DEADLINE)
    assert len(nemesis.windows) == len(plan)
    assert not nemesis.active
    for window in nemesis.windows:
        assert window.end is not None and window.start <= window.end <= 2.0
        assert window.targets
    _assert_healthy(cluster)


async def test_heal_all_after_cancellation_restores_everything() -> None:
    cluster = FakeCluster()
    plan = [
        PlannedFault(0.0, 30.0, "kill", "leader", 1),
        PlannedFault(0.0, 30.0, "partition", "split", 2, track="net"),
        PlannedFault(0.0, 30.0, "pause", "random", 3, track="third"),
    ]
    nemesis = Nemesis(cluster, plan, _clock())  # type: ignore[arg-type]
    task = asyncio.create_task(nemesis.run())
    deadline = time.monotonic() + DEADLINE
    while len(nemesis.active) < 3:
        assert time.monotonic() < deadline, "faults were not applied in time"
        await asyncio.sleep(0.01)
    assert cluster.down and cluster.paused and cluster.net.describe()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await nemesis.heal_all()
    _assert_healthy(cluster)
    assert all(w.end is not None for w in nemesis.windows)


async def test_network_faults_compose_and_heal_separately() -> None:
    cluster = FakeCluster()
    nemesis = Nemesis(cluster, [], _clock())  # type: ignore[arg-type]
    slow = await nemesis.begin(PlannedFault(0, 1, "delay", "slow", 7))
    delayed = {pair for pair in cluster.net.links if cluster.net.state(*pair).delay_s > 0}
    assert delayed
    cut = await nemesis.begin(PlannedFault(0, 1, "partition", "isolate-leader", 8))
    assert nemesis.windows[cut].targets == ["n1"]
    assert cluster.net.state("n1", "n2").blocked
    await nemesis.heal(cut)
    assert not any(cluster.net.state(*pair).blocked for pair in cluster.net.links)
    assert {p for p in cluster.net.links if cluster.net.state(*p).delay_s > 0} == delayed
    await nemesis.heal(slow)
    _assert_healthy(cluster)


def test_link_state_description() -> None:
    assert PASS.describe() == "pass"
    assert LinkState(blocked=True).describe() == "drop"
    assert LinkState(delay_s=0.05, jitter_s=0.01).describe() == "delay 50±10ms"


# ---------------------------------------------------------------------- workload recording


async def _serve_once_then_vanish(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answered: list[int]
) -> None:
    """Answer the first request on a connection (keep-alive), hang up on the next one."""
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            if answered:
                break  # took the second request, then "crashed" before answering
            answered.append(1)
            body = b'{"revision": 1, "version": 1}'
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, OSError):
        pass
    writer.transport.abort()


async def test_a_request_that_reached_the_server_is_never_recorded_as_failed() -> None:
    """The server takes a put on a pooled connection and dies: that is unknown, not fail
    (aiohttp would retry it on a new connection, be refused, and hide the first attempt)."""
    from kvstore.chaos.workload import Workload, WorkloadConfig, make_session

    answered: list[int] = []
    server = await asyncio.start_server(
        lambda r, w: _serve_once_then_vanish(r, w, answered), "127.0.0.1", 0
    )
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    workload = Workload([base], _clock(), WorkloadConfig(keys=("k",), op_timeout_s=2.0))
    rng = _AlwaysPut()
    try:
        async with make_session() as session:
            first = await workload.one_op(session, base, 0, 1, rng)  # type: ignore[arg-type]
            assert first.outcome == "ok" and first.version == 1
            server.close()  # nobody listens any more: a retry would be refused
            second = await workload.one_op(session, base, 0, 2, rng)  # type: ignore[arg-type]
    finally:
        server.close()
        await server.wait_closed()
    assert second.kind == "put"
    assert second.outcome == "unknown", second


class _AlwaysPut:
    """A stand-in for the client's Random that always picks a put on the first key."""

    def choice(self, seq: list[str]) -> str:
        return seq[0]

    def choices(self, population: list[str], weights: list[int]) -> list[str]:
        return ["put"]

    def random(self) -> float:
        return 0.99


async def test_a_client_fault_is_applied_by_its_handler_and_undone_on_heal() -> None:
    """A workload's own fault kind (e.g. pause-holder): the handler applies it and names
    its targets; heal (or heal_all) calls the undo it returned; None means nothing done."""
    cluster = FakeCluster()
    stopped: list[str] = []

    async def pause_client(fault: PlannedFault, window: FaultWindow) -> Callable[[], None] | None:
        if fault.pick == 0:
            window.detail = "nothing to pause"
            return None
        stopped.append("c1")
        window.targets = ["c1"]
        return lambda: stopped.remove("c1")

    nemesis = Nemesis(cluster, [], _clock(), {"pause-client": pause_client})  # type: ignore[arg-type]
    first = await nemesis.begin(PlannedFault(0, 1, "pause-client", "past-ttl", 5))
    assert stopped == ["c1"] and nemesis.windows[first].targets == ["c1"]
    await nemesis.heal(first)
    assert stopped == [] and nemesis.windows[first].end is not None
    idle = await nemesis.begin(PlannedFault(0, 1, "pause-client", "past-ttl", 0))
    assert nemesis.windows[idle].detail == "nothing to pause"
    await nemesis.begin(PlannedFault(0, 1, "pause-client", "past-ttl", 6))
    await nemesis.heal_all()
    assert stopped == [] and not nemesis.active
    _assert_healthy(cluster)
