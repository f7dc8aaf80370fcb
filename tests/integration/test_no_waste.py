"""No call wasted, every outcome told: results stream, duplicates, expiry, default overwrite."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from consumer.core.stream import read_results
from consumer.sandbox import Sandbox
from schemas.events import H_ERROR_CODE, H_ERROR_INFO, H_ERROR_SOURCE, ResultEvent
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.workers import SpawnWorker, WorkerFactory, active_replica

pytestmark = pytest.mark.integration

DEFAULT_OVERWRITE = {"Title": "Recalled", "Desc": "Default replacement text."}


async def stream_events(amqp_url: str, names: Names) -> list[ResultEvent]:
    """Everything in the test's results stream."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        return [e async for e in read_results(connection, names.results, "first")]


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_one_event_per_settled_request_readable_with_the_cli(
    amqp_url: str, broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    recalled = sandbox.create_task()
    async with run_worker() as running:
        ok_id = await broker.publish(
            {"TaskId": recalled, "OfflinePushInfo": OVERWRITE}, correlation_id="mod-1"
        )
        bad_id = await broker.publish(b"nope", correlation_id="mod-2")
        await running.wait_settled(2)
    events = await stream_events(amqp_url, names)
    assert sorted((e.message_id, e.outcome, e.error_code, e.source) for e in events) == sorted(
        [(ok_id, "recalled", 0, "api"), (bad_id, "dead_lettered", 90001, "local")]
    )
    code, out, err = await run_cli(
        "results",
        "--since",
        "1h",
        "--json",
        env={"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue},
    )
    assert code == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    assert sorted(p["correlation_id"] for p in printed) == ["mod-1", "mod-2"]
    code, out, _ = await run_cli(
        "results",
        "--correlation-id",
        "mod-1",
        env={"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue},
    )
    assert code == 0
    assert recalled in out
    assert "1 event(s)" in out


async def test_duplicate_is_suppressed_without_a_call_and_across_a_restart(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = sandbox.create_task()
    body = {"TaskId": task_id, "OfflinePushInfo": OVERWRITE}
    async with run_worker() as running:
        await broker.publish(body)
        await running.wait_settled(1)
        await broker.publish(body)
        await running.wait_settled(2)
    assert len(sandbox.revoke_calls()) == 1
    # A new worker rebuilds its memory from the results stream.
    async with run_worker() as restarted:
        await broker.publish(body)
        await restarted.wait_settled(1)
    assert len(sandbox.revoke_calls()) == 1
    letters = await broker.take(names.dead)
    assert len(letters) == 2
    for letter in letters:
        headers = letter.headers or {}
        assert (headers[H_ERROR_CODE], headers[H_ERROR_SOURCE]) == (90050, "local")
        assert "already recalled by tim-recall at" in str(headers[H_ERROR_INFO])


async def test_suppression_survives_a_failover_to_a_second_replica(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    task_id = sandbox.create_task()
    body = {"TaskId": task_id, "OfflinePushInfo": OVERWRITE}
    first = await spawn_worker()
    await first.ready()
    second = await spawn_worker()
    await second.ready()
    await broker.publish(body)
    active = await active_replica(first, second)
    standby = second if active is first else first
    active.process.kill()
    await active.exit_code()
    await broker.publish(body)
    await wait_until(
        lambda: any(e.get("event") == "request_dead_lettered" for e in standby.events()),
        15,
        "the standby to refuse the duplicate",
    )
    assert len(sandbox.revoke_calls()) == 1
    (letter,) = await broker.take(names.dead)
    assert ((letter.headers or {})[H_ERROR_CODE], (letter.headers or {})[H_ERROR_SOURCE]) == (
        90050,
        "local",
    )
    # The standby followed the results stream from its start; its takeover waited until the
    # memory held what the killed replica told (the recall above).
    taken = [e for e in standby.events() if e.get("event") == "lane_taken_over"]
    assert taken
    assert taken[0]["recalled"] >= 1


async def test_90053_then_the_same_task_with_an_overwrite_is_recalled(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = sandbox.create_task(online_only=False)
    async with run_worker() as running:
        await broker.publish({"TaskId": task_id})
        await running.wait_settled(1)
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(2)
    assert [c.code for c in sandbox.revoke_calls()] == [90053, 0]
    assert [(e.outcome, e.error_code) for e in running.settled] == [
        ("dead_lettered", 90053),
        ("recalled", 0),
    ]


async def test_expired_task_id_is_refused_without_a_call_undecodable_one_is_sent(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    started = int(time.time()) - 3 * 86400
    expired = f"{started:08x}_5f5e1000_200000cd7ee17f5_84035729_bc614e"
    sandbox.add_task(expired, started_at=started)
    undecodable = "zzzzzzzz_legacy_task"
    sandbox.add_task(undecodable)
    async with run_worker() as running:
        await broker.publish({"TaskId": expired, "OfflinePushInfo": OVERWRITE})
        await broker.publish({"TaskId": undecodable, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(2)
    assert [c.task_id for c in sandbox.revoke_calls()] == [undecodable]
    (letter,) = await broker.take(names.dead)
    headers = letter.headers or {}
    assert (headers[H_ERROR_CODE], headers[H_ERROR_SOURCE]) == (90052, "local")
    assert "recall window closed" in str(headers[H_ERROR_INFO])


async def test_expiry_heuristic_can_be_turned_off(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    started = int(time.time()) - 3 * 86400
    expired = f"{started:08x}_5f5e1000_200000cd7ee17f5_84035729_bc614e"
    sandbox.add_task(expired, started_at=started)
    async with run_worker(expiry_check=False) as running:
        await broker.publish({"TaskId": expired, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(1)
    assert [c.code for c in sandbox.revoke_calls()] == [90052]  # the API had to say it


async def test_a_task_answered_90052_is_not_called_again_even_after_a_restart(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = "opaque-task-id-without-a-time"  # nothing to decode: only the API can tell
    sandbox.add_task(task_id, started_at=time.time() - 2 * 86400)
    async with run_worker() as running:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(1)
    async with run_worker() as restarted:  # the memory comes back from the results stream
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await restarted.wait_settled(1)
    assert [c.code for c in sandbox.revoke_calls()] == [90052]
    event = restarted.settled[0]
    assert (event.error_code, event.source) == (90052, "local")
    assert "answered 90052" in event.error_info


async def test_a_plausible_amqp_timestamp_bounds_the_window(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = "opaque-task-published-long-ago"
    sandbox.add_task(task_id)
    long_ago = datetime.now(UTC) - timedelta(days=2)
    async with run_worker() as running:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE}, timestamp=long_ago)
        await running.wait_settled(1)
    assert sandbox.revoke_calls() == []
    assert (running.settled[0].error_code, running.settled[0].source) == (90052, "local")


async def test_default_overwrite_only_where_none_was_given(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    bare = sandbox.create_task(online_only=False)
    own = sandbox.create_task(online_only=False)
    async with run_worker(default_offline_push_info=DEFAULT_OVERWRITE) as running:
        await broker.publish({"TaskId": bare})
        await broker.publish({"TaskId": own, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(2)
    bodies = {c.task_id: c.body for c in sandbox.revoke_calls()}
    assert bodies[bare] == {"TaskId": bare, "OfflinePushInfo": DEFAULT_OVERWRITE}
    assert bodies[own] == {"TaskId": own, "OfflinePushInfo": OVERWRITE}
    assert [e.outcome for e in running.settled] == ["recalled", "recalled"]
