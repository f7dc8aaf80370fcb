"""Signals, crashes, replicas and halting: nothing lost, nothing sent twice, no call too close."""

from __future__ import annotations

import itertools
import json
import signal

import httpx
import pytest

from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.workers import SpawnWorker, WorkerFactory, active_replica

pytestmark = pytest.mark.integration


def min_gap(sandbox: Sandbox) -> float:
    arrivals = [c.arrived for c in sandbox.revoke_calls()]
    return min((b - a for a, b in itertools.pairwise(arrivals)), default=99.0)


async def test_sigterm_mid_call_finishes_settles_and_exits_0(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    task_id = sandbox.create_task()
    sandbox.set_latency(1.0)
    worker = await spawn_worker()
    await worker.ready()
    await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    await sandbox.wait_for(lambda calls: len(calls) >= 1, timeout=10)
    worker.process.send_signal(signal.SIGTERM)  # the call is in flight
    assert await worker.exit_code() == 0
    assert sandbox.is_recalled(task_id)
    assert len(sandbox.revoke_calls()) == 1
    assert await broker.count(names.queue) == 0
    assert await broker.count(names.dead) == 0
    events = [e["event"] for e in worker.events()]
    assert events.index("signal_received") < events.index("request_recalled")
    assert "worker_stopped" in events


async def test_sigkill_mid_call_loses_nothing_and_redelivery_counts_as_recalled(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    task_id = sandbox.create_task()
    sandbox.set_latency(3.0)  # the server recalls it, the answer never reaches the killed worker
    first = await spawn_worker()
    await first.ready()
    await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    await sandbox.wait_for(lambda calls: len(calls) >= 1, timeout=10)
    first.process.kill()
    await first.exit_code()
    sandbox.set_latency(0)
    second = await spawn_worker()
    await second.ready()
    await sandbox.wait_for(lambda calls: len(calls) >= 2, timeout=15)
    await wait_until(
        lambda: any(e.get("event") == "request_recalled" for e in second.events()),
        10,
        "the redelivered request to be settled",
    )
    assert [c.code for c in sandbox.revoke_calls()] == [0, 90050]
    assert await broker.count(names.queue) == 0
    assert await broker.count(names.dead) == 0
    (settled,) = [e for e in second.events() if e.get("event") == "request_recalled"]
    assert settled["task_id"] == task_id
    assert settled["attempts"] == 1  # this delivery's call; the crashed one left no count


async def test_two_replicas_one_caller_and_failover_keeps_the_interval(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    tasks = [sandbox.create_task() for _ in range(16)]
    a = await spawn_worker()
    await a.ready()
    b = await spawn_worker()
    await b.ready()
    for task_id in tasks:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    await sandbox.wait_for(lambda calls: len(calls) >= 5, timeout=15)
    active = await active_replica(a, b)
    standby = b if active is a else a
    assert not any(e.get("event") == "request_recalled" for e in standby.events())
    active.process.kill()
    await active.exit_code()
    await sandbox.wait_for(
        lambda calls: len({c.task_id for c in calls if c.code in (0, 90050)}) >= 16, timeout=30
    )
    calls = sandbox.revoke_calls()
    assert all(c.code in (0, 90050) for c in calls), [c.code for c in calls]
    assert sorted(sandbox.recalled_task_ids()) == sorted(tasks)
    assert min_gap(sandbox) >= sandbox.config.min_interval
    assert any(e.get("event") == "request_recalled" for e in standby.events())
    await wait_until(lambda: _count(broker, names.queue), 10, "the recall queue to be empty")
    assert await broker.count(names.dead) == 0


async def _count(broker: Broker, queue: str) -> bool:
    return await broker.count(queue) == 0


async def test_bad_credentials_halt_dead_letter_nothing_and_recover(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory, tmp_path
) -> None:
    key_file = tmp_path / "secret"
    key_file.write_text("not-the-right-key-at-all")
    task_id = sandbox.create_task()
    async with run_worker(secret_key_value=None, secret_key_file=key_file) as running:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await wait_until(lambda: running.worker.halted, 10, "the worker to halt")
        assert running.worker.readiness()["not_halted"] is False
        assert running.metrics.halted._value.get() == 1
        # The request waits in the queue; nothing was dead-lettered.
        await wait_until(lambda: _ready_is(broker, names.queue, 1), 10, "the request back in queue")
        assert await broker.count(names.dead) == 0
        # While halted, probes (not the request) keep asking: still 70003, nothing recalled.
        await sandbox.wait_for(lambda calls: len(calls) >= 3, timeout=10)
        assert {c.code for c in sandbox.revoke_calls()} == {70003}
        key_file.write_text(sandbox.config.secret_key)  # an operator fixes the Secret
        await running.wait_settled(1, timeout=15)
    assert running.settled[0].outcome == "recalled"
    assert sandbox.is_recalled(task_id)
    assert running.metrics.halted._value.get() == 0
    assert await broker.count(names.dead) == 0


async def _ready_is(broker: Broker, queue: str, count: int) -> bool:
    return await broker.count(queue) == count


async def test_health_endpoints_of_a_running_worker(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    worker = await spawn_worker()
    await worker.ready()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.port}") as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
        assert ready == {
            "ready": True,
            "connected": True,
            "consuming": True,
            "not_halted": True,
            "progressing": True,
            "in_hand_s": None,  # no delivery in hand
            "since_last_settle_s": None,  # none settled yet
        }
        metrics = (await http.get("/metrics")).text
    assert "tim_recall_requests_settled_total" in metrics
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.exit_code() == 0


async def test_queue_with_other_arguments_is_a_clear_error(
    broker: Broker, names: Names, spawn_worker: SpawnWorker
) -> None:
    channel = await broker.connection.channel()
    await channel.declare_queue(names.queue, durable=True)  # a classic queue already there
    await channel.close()
    worker = await spawn_worker()
    assert await worker.exit_code() == 2
    log = worker.log()
    assert "x-queue-type" in log
    assert names.queue in log
    assert "Traceback" not in log


async def test_sigterm_during_a_retry_wait_republishes_and_exits_promptly(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    task_id = sandbox.create_task()
    sandbox.fail_next(100, task_id=task_id, code=70050)  # "wait a minute" before the next try
    worker = await spawn_worker()
    await worker.ready()
    await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    await sandbox.wait_for(lambda calls: len(calls) == 1, timeout=10)
    await wait_until(
        lambda: any(e.get("event") == "retry_scheduled" for e in worker.events()), 10, "a retry"
    )
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.exit_code(timeout=10) == 0  # not after the 60 s lockout
    assert len(sandbox.revoke_calls()) == 1
    (again,) = await broker.take(names.queue)  # back at the tail, with what it learned
    assert (again.headers or {})["x-recall-attempts"] == 1
    # 70050 refused the call before it could act: a later 90050 would not be ours.
    assert (again.headers or {})["x-recall-may-have-reached"] is False
    assert (again.headers or {})["x-recall-lineage"]  # the same chain goes on
    assert await broker.count(names.dead) == 0


async def test_sigterm_while_waiting_for_a_slot_hands_the_request_back_not_attempted(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    first, second = sandbox.create_task(), sandbox.create_task()
    worker = await spawn_worker(RECALL_INTERVAL_S="3")  # a long wait to stop in
    await worker.ready()
    await broker.publish({"TaskId": first, "OfflinePushInfo": OVERWRITE})
    await broker.publish({"TaskId": second, "OfflinePushInfo": OVERWRITE})
    await sandbox.wait_for(lambda calls: len(calls) == 1, timeout=10)
    await wait_until(
        lambda: any(e.get("event") == "request_recalled" for e in worker.events()), 10, "one"
    )
    worker.process.send_signal(signal.SIGTERM)  # the second waits for its slot
    assert await worker.exit_code(timeout=5) == 0  # not after the 3 s wait
    assert [c.task_id for c in sandbox.revoke_calls()] == [first]  # no call after SIGTERM
    (again,) = await broker.take(names.queue)
    headers = again.headers or {}
    assert again.body == json.dumps({"TaskId": second, "OfflinePushInfo": OVERWRITE}).encode()
    assert headers["x-recall-releases"] == 1
    assert headers["x-recall-attempts"] == 0
    assert headers["x-recall-may-have-reached"] is False  # a later 90050 would not be ours
    assert headers["x-recall-lineage"]
    # A copy, not a nack: the broker's delivery count is untouched on every RabbitMQ version.
    assert not again.redelivered
    assert "x-delivery-count" not in headers
    released = [e for e in worker.events() if e.get("event") == "request_released"]
    assert [e["reason"] for e in released] == ["shutdown"]
