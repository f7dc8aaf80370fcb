"""A minute of Tencent outage (HTTP 502, then calls that hang past the read timeout), then
recovery: budgets are spent and requests go round the queue's tail instead of being held; once
the API is back every request is recalled and nothing is dead-lettered."""

from __future__ import annotations

import asyncio
import time

import pytest

from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Names
from tests.support.faults import (
    FaultBroker,
    events_named,
    ledger,
    min_gap,
    publish_all,
    report,
    request_for,
    stop,
    wait_until,
)
from tests.support.workers import SpawnWorker

pytestmark = [pytest.mark.faults, pytest.mark.integration]

REQUESTS = 10
BAD_GATEWAY_S = 30.0
HANG_S = 30.0
BUDGET_S = 5.0


async def test_tencent_outage_then_recovery(
    broker: FaultBroker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    tasks = [sandbox.create_task() for _ in range(REQUESTS)]
    requests = [request_for(t, {"TaskId": t, "OfflinePushInfo": OVERWRITE}) for t in tasks]
    worker = await spawn_worker(
        TIM_READ_TIMEOUT_S="1", RECALL_RETRY_BUDGET_S=str(BUDGET_S), RECALL_RETRY_MAX_S="1"
    )
    await worker.ready()

    outage_start = time.monotonic()
    sandbox.outage(BAD_GATEWAY_S, http_status=502)

    async def then_hang() -> float:
        # Deliberately timed: the second half of the outage replaces the first just before it
        # ends (outage() replaces the window), so there is no gap where a call could succeed.
        await asyncio.sleep(BAD_GATEWAY_S - 0.5)
        end = time.monotonic() + HANG_S  # no later than the sandbox's own end of the window
        sandbox.outage(HANG_S, hang=2.0)
        return end

    hang = asyncio.create_task(then_hang())
    try:
        await publish_all(broker, requests)
        await wait_until(hang.done, BAD_GATEWAY_S + 5, "the hanging half of the outage")
        outage_end = hang.result()
        # Into the hangs, and nothing dead-lettered so far.
        await sandbox.wait_for(
            lambda calls: bool(calls) and calls[-1].http_status == 504, timeout=10
        )
        assert await broker.count(names.dead) == 0
        await wait_until(
            lambda: len(sandbox.recalled_task_ids()) == REQUESTS,
            HANG_S + 30,
            "every recall after the outage",
        )
    finally:
        hang.cancel()
    recovered = time.monotonic()
    await wait_until(lambda: _queue_empty(broker, names), 20, "an empty recall queue")
    await stop(worker)

    figures = await ledger(broker, sandbox, requests)
    assert len(figures.recalled) == REQUESTS
    assert figures.dead == {}
    calls = sandbox.revoke_calls()
    during = [c for c in calls if c.arrived < outage_end]
    assert {c.code for c in during} == {None}, "a call got through during the outage"
    assert {c.http_status for c in during} == {502, 504}
    assert figures.codes[0] == REQUESTS
    # Budgets were spent and requests went to the tail: no delivery was held much past its
    # budget (one last call, a hang cut at the 1 s read timeout, may overrun it), and the
    # deliveries rotated through the queue.
    republished = events_named(worker, "request_republished")
    held = max(e["duration_s"] for e in republished)
    assert held <= BUDGET_S + 2.0, held
    assert len(republished) >= (BAD_GATEWAY_S + HANG_S) / (BUDGET_S + 2.0)
    assert len({c.task_id for c in during}) >= min(REQUESTS, len(republished) - 1)
    assert min_gap(sandbox) >= sandbox.config.min_interval
    report(
        "tencent_outage",
        outage_s=round(outage_end - outage_start, 1),
        calls_during_outage=len(during),
        http_502=sum(c.http_status == 502 for c in during),
        hung_504=sum(c.http_status == 504 for c in during),
        republishes=len(republished),
        longest_delivery_s=held,
        retries_logged=len(events_named(worker, "retry_scheduled")),
        all_recalled_after_outage_s=round(recovered - outage_end, 2),
        ledger=figures.figures(),
    )


async def _queue_empty(broker: FaultBroker, names: Names) -> bool:
    return await broker.count(names.queue) == 0
