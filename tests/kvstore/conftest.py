"""Fixtures shared by the unit tests of the node runtime and its HTTP APIs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.kvstore.test_runtime import _LocalCluster


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[_LocalCluster]:
    """Three in-process nodes (tests.kvstore.test_runtime._LocalCluster), all started."""
    cluster = _LocalCluster(tmp_path)
    for node_id in ("n1", "n2", "n3"):
        await cluster.start(node_id)
    try:
        yield cluster
    finally:
        await cluster.close()
