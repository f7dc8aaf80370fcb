"""Pacing over a link: the worker behind a delaying, jittering link, judged by the sandbox."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from consumer.sandbox import Sandbox, SandboxConfig, serve_sandbox
from consumer.sandbox.link import LinkConfig, sandbox_link
from tests.support.broker import OVERWRITE, Broker
from tests.support.workers import WorkerFactory

INTERVAL_S = 0.25  # short, so that a backlog is quick; the link is long relative to it
LINK = LinkConfig(one_way_s=0.04, jitter_s=0.01, seed=14)
BACKLOG = 16


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(min_interval=INTERVAL_S))


@pytest.fixture
async def sandbox_url(sandbox_url_direct: str) -> AsyncIterator[str]:
    """The sandbox as the worker reaches it: through an 80 ms ±20 ms round-trip link."""
    async with sandbox_link(sandbox_url_direct, LINK) as url:
        yield url


@pytest.fixture
async def sandbox_url_direct(sandbox: Sandbox) -> AsyncIterator[str]:
    async with serve_sandbox(sandbox) as url:
        yield url


@pytest.mark.parametrize("rule", ["send", "finish"])
async def test_a_backlog_over_a_link_never_arrives_closer_than_the_interval(
    run_worker: WorkerFactory, broker: Broker, sandbox: Sandbox, rule: str
) -> None:
    await broker.declare()
    for _ in range(BACKLOG):
        task_id = sandbox.create_task()
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    async with run_worker(pacing=rule, interval_s=INTERVAL_S, retry_budget_s=30.0) as running:
        await running.wait_settled(BACKLOG, timeout=BACKLOG * INTERVAL_S * 4 + 15)
    calls = sandbox.revoke_calls()
    assert [c.code for c in calls].count(90051) == 0
    assert len(calls) == BACKLOG
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(calls)]
    assert all(gap >= INTERVAL_S for gap in gaps), min(gaps)
    assert sorted(sandbox.recalled_task_ids()) == sorted(c.task_id for c in calls)
