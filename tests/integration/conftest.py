"""Fixtures that start real clusters; every process is stopped by PID at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, PortTaken


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[type[Cluster]]:
    """Make clusters (not started) under the test's temp dir; all are stopped afterwards."""
    made: list[Cluster] = []

    def make(size: int = 3, **tuning: int) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", size=size, tuning=tuning)
        made.append(c)
        return c

    yield make  # type: ignore[misc]
    for c in made:
        c.stop_all()


@pytest.fixture
def cluster(cluster_factory: type[Cluster], request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A started three-node cluster with an elected leader. The election timeout is
    doubled from the default so that a CPU-starved test machine (xdist, other suites)
    does not depose healthy leaders mid-test; failover still takes well under a second."""
    for attempt in range(3):
        c: Cluster = cluster_factory(election_ticks=30)  # type: ignore[call-arg]
        c.start()
        try:
            c.wait_healthy(timeout=20.0)
            break
        except PortTaken:
            c.stop_all()  # a port drawn for it was taken meanwhile: a new cluster, new ports
            if attempt == 2:
                raise
        except TimeoutError:
            pytest.fail(f"cluster did not come up:\n{c.logs()}")
    yield c
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(c.logs())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's report so the `cluster` fixture can print logs on failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
