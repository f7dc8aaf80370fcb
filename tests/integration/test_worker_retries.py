"""Retries, the budget, the window and pacing, as the broker and the sandbox see them."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from consumer.sandbox import Sandbox, SandboxConfig
from schemas.events import H_ATTEMPTS, H_ERROR_CODE, H_ERROR_SOURCE, H_FIRST_SEEN
from tests.support.broker import OVERWRITE, Broker, Names
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.integration


def gaps(sandbox: Sandbox) -> list[float]:
    """Seconds between consecutive revoke arrivals, as the server saw them."""
    arrivals = [c.arrived for c in sandbox.revoke_calls()]
    return [b - a for a, b in itertools.pairwise(arrivals)]


@pytest.mark.parametrize(
    "fault",
    [{"code": 91000}, {"code": 90051}, {"http_status": 502}, {"code": 70169}],
    ids=["91000", "90051", "502", "70169"],
)
async def test_transient_failures_are_retried_to_success(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    fault: dict[str, int],
) -> None:
    task_id = sandbox.create_task()
    sandbox.fail_next(2, task_id=task_id, **fault)
    async with run_worker() as running:
        message_id = await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(1)
    assert running.outcomes() == {message_id: ("recalled", 0)}
    assert running.settled[0].attempts == 3
    assert len(sandbox.revoke_calls()) == 3
    assert sandbox.is_recalled(task_id)
    assert await broker.count(names.dead) == 0
    assert all(gap >= sandbox.config.min_interval for gap in gaps(sandbox))


async def test_timeout_then_90050_counts_as_recalled(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    # The first call reaches the server and recalls the task, but its answer comes too late.
    task_id = sandbox.create_task()
    sandbox.set_latency(1.5)
    async with run_worker(read_timeout_s=0.5) as running:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await sandbox.wait_for(lambda calls: len(calls) >= 1, timeout=10)
        sandbox.set_latency(0)
        await running.wait_settled(1)
    codes = [c.code for c in sandbox.revoke_calls()]
    assert codes == [0, 90050]
    # Told truthfully: recalled, and the API's last word was 90050.
    assert (running.settled[0].outcome, running.settled[0].error_code) == ("recalled", 90050)
    assert await broker.count(names.dead) == 0


async def test_90050_without_an_earlier_attempt_is_dead_lettered(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = sandbox.create_task()
    sandbox.mark_recalled(task_id)
    async with run_worker() as running:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(1)
    (letter,) = await broker.take(names.dead)
    assert (letter.headers or {})[H_ERROR_CODE] == 90050


async def test_spent_budget_republishes_and_never_dead_letters(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = sandbox.create_task()
    sandbox.fail_next(1000, task_id=task_id, code=91000)
    async with run_worker(retry_budget_s=0.4) as running:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        # Wait until the request went round the queue's tail at least twice.
        await sandbox.wait_for(lambda calls: len(calls) >= 6, timeout=15)
        assert running.metrics.republished._value.get() >= 1
        assert await broker.count(names.dead) == 0
        sandbox.clear_faults()
        await running.wait_settled(1)
    event = running.settled[0]
    assert (event.outcome, event.error_code) == ("recalled", 0)
    # The attempt count travelled with the re-published message.
    assert event.attempts == len(sandbox.revoke_calls())
    assert await broker.count(names.dead) == 0


async def test_window_surely_closed_is_dead_lettered_locally(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    # An undecodable TaskId: only the first-seen time (carried by a re-publish) says it is late.
    task_id = "legacy-task-without-a-time"
    sandbox.add_task(task_id)
    first_seen = int(time.time()) - 25 * 3600
    async with run_worker() as running:
        await broker.publish(
            {"TaskId": task_id, "OfflinePushInfo": OVERWRITE},
            headers={H_FIRST_SEEN: first_seen, H_ATTEMPTS: 40},
        )
        await running.wait_settled(1)
    (letter,) = await broker.take(names.dead)
    headers = letter.headers or {}
    assert (headers[H_ERROR_CODE], headers[H_ERROR_SOURCE]) == (90052, "local")
    assert headers[H_ATTEMPTS] == 40
    assert sandbox.revoke_calls() == []


async def test_backlog_is_paced_as_the_server_sees_it(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    tasks = [sandbox.create_task() for _ in range(20)]
    await broker.declare()
    for task_id in tasks:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    async with run_worker() as running:
        await running.wait_settled(20)
    calls = sandbox.revoke_calls()
    assert [c.code for c in calls] == [0] * 20
    assert min(gaps(sandbox)) >= sandbox.config.min_interval
    assert sorted(c.task_id for c in calls) == sorted(tasks)


@pytest.mark.slow
async def test_real_one_second_limit(
    broker: Broker, names: Names, run_worker: WorkerFactory, sandbox: Sandbox
) -> None:
    sandbox.config = SandboxConfig(min_interval=1.0)
    tasks = [sandbox.create_task() for _ in range(4)]
    await broker.declare()
    for task_id in tasks:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    async with run_worker(interval_s=1.0) as running:
        await running.wait_settled(4, timeout=15)
    assert [c.code for c in sandbox.revoke_calls()] == [0] * 4
    assert min(gaps(sandbox)) >= 1.0


async def test_idle_request_is_sent_at_once(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    first, second = sandbox.create_task(), sandbox.create_task()
    async with run_worker() as running:
        await broker.publish({"TaskId": first, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(1)
        # Being idle for longer than the interval is the point of this test, not a wait for a
        # condition: the next request must then go out without waiting for a slot.
        await asyncio.sleep(3 * sandbox.config.min_interval)
        published = time.monotonic()
        await broker.publish({"TaskId": second, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(2)
    arrival = sandbox.revoke_calls()[-1].arrived
    assert arrival - published < sandbox.config.min_interval
