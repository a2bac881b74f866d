"""Every Python block of the README's guide "Synchronising data between microservices"
runs, as a program of its own, against a real three-node cluster (found through
KV_ENDPOINTS, as the guide says), and exits 0: the blocks assert their own outcomes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import REPO_ROOT, Cluster, child_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HEADING = "## Synchronising data between microservices"


def guide_blocks() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index(HEADING) :]
    section = section[: section.index("\n## ", len(HEADING))]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_guide_has_an_example_for_each_pattern() -> None:
    assert len(guide_blocks()) == 7


def test_every_guide_example_runs(cluster: Cluster, tmp_path: Path) -> None:
    env = {**child_env(), "KV_ENDPOINTS": cluster.endpoints()}
    for number, block in enumerate(guide_blocks(), 1):
        script = tmp_path / f"guide_{number}.py"
        script.write_text(block)
        done = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"block {number}:\n{block}\n{done.stdout}{done.stderr}"
