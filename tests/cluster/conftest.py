"""The cluster tests' RabbitMQ: three nodes of the host's install, clustered on loopback by
scripts/cluster.sh, with their own names, ports and directory for this test run (two runs at once
never share one), up for the session and torn down after. Fails (never skips) when the cluster
cannot start: CI must not pass without it. Between tests, a node a test killed is started again."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.cluster import SCRIPT, Cluster


@pytest.fixture(scope="session")
def cluster_session() -> Iterator[Cluster]:
    """Three clustered nodes for the session; stopped and their directories removed after."""
    cluster = Cluster.on_free_ports("test")
    up = subprocess.run(
        [str(SCRIPT), "up"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    try:
        if up.returncode != 0:
            lines = up.stderr.strip().splitlines() or ["(no output)"]
            pytest.fail(f"the test cluster did not start: {lines[-1]}\n{up.stderr[-2000:]}")
        yield cluster
    finally:
        subprocess.run(
            [str(SCRIPT), "down"], env=cluster.env, capture_output=True, timeout=300, check=False
        )


@pytest.fixture
async def cluster(cluster_session: Cluster) -> AsyncIterator[Cluster]:
    """The session's cluster, with all three nodes running at the start of every test."""
    await cluster_session.heal()
    yield cluster_session
    await cluster_session.heal()
