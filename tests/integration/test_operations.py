"""What operators see and use: metrics, probes, broker loss, and the dead-letter tools."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime

import httpx
import pytest

from consumer.core.metrics import Metrics
from consumer.sandbox import Sandbox
from schemas.events import H_ERROR_CODE
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import SpawnWorker, WorkerFactory, WorkerProcess

pytestmark = pytest.mark.integration


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def cli(amqp_url: str, names: Names, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_metrics_follow_a_recall_a_retry_a_dead_letter_and_a_halt(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory, tmp_path
) -> None:
    ok, retried = sandbox.create_task(), sandbox.create_task()
    sandbox.fail_next(1, task_id=retried, code=91000)
    key_file = tmp_path / "key"
    key_file.write_text(sandbox.config.secret_key)
    async with run_worker(secret_key_value=None, secret_key_file=key_file) as running:
        m = running.metrics
        assert sample(m, "tim_recall_api_calls_total", code="90051") == 0  # series exist at 0
        assert sample(m, "tim_recall_halted") == 0
        now = datetime.now(UTC)
        for body in (
            {"TaskId": ok, "OfflinePushInfo": OVERWRITE},
            {"TaskId": retried, "OfflinePushInfo": OVERWRITE},
            {"TaskId": ok.replace(ok.split("_")[1], "0badf00d"), "OfflinePushInfo": OVERWRITE},
        ):
            await broker.publish(body, timestamp=now)
        await running.wait_settled(3)
        assert sample(m, "tim_recall_requests_settled_total", outcome="recalled") == 2
        assert sample(m, "tim_recall_requests_settled_total", outcome="dead_lettered") == 1
        assert sample(m, "tim_recall_api_calls_total", code="0") == 2
        assert sample(m, "tim_recall_api_calls_total", code="91000") == 1
        assert sample(m, "tim_recall_api_calls_total", code="90049") == 1
        assert sample(m, "tim_recall_retries_total", reason="transient") == 1
        assert sample(m, "tim_recall_dead_letters_total", code="90049", source="api") == 1
        assert sample(m, "tim_recall_api_call_duration_seconds_count") == 4
        assert sample(m, "tim_recall_publish_to_settle_seconds_count") == 3
        assert sample(m, "tim_recall_last_recall_timestamp_seconds") >= now.timestamp()
        assert sample(m, "tim_recall_active") == 1
        key_file.write_text("a-wrong-key")
        next(
            iter(running.worker.lanes.values())
        ).client.renew_usersig()  # as the daily renewal would pick it up
        await broker.publish({"TaskId": sandbox.create_task(), "OfflinePushInfo": OVERWRITE})
        await wait_until(lambda: sample(m, "tim_recall_halted") == 1, 10, "halted gauge")
        assert sample(m, "tim_recall_api_calls_total", code="70003") >= 1
        key_file.write_text(sandbox.config.secret_key)
        await wait_until(lambda: sample(m, "tim_recall_halted") == 0, 10, "resumed")
        await running.wait_settled(4)


async def test_broker_loss_liveness_stays_readiness_drops_and_nothing_is_lost(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker, proxy: TcpProxy
) -> None:
    worker = await spawn_worker(RECALL_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
    await worker.ready()
    first = sandbox.create_task()
    await broker.publish({"TaskId": first, "OfflinePushInfo": OVERWRITE})
    await sandbox.wait_for(lambda calls: len(calls) == 1, timeout=10)
    await wait_until(lambda: _settled(worker, 1), 10, "the first request settled")
    await proxy.cut()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.port}") as http:
        await wait_until(
            lambda: _status(http, "/readyz", 503), 15, "/readyz to report the broker loss"
        )
        assert (await http.get("/healthz")).status_code == 200
        body = (await http.get("/readyz")).json()
        assert body["connected"] is False
        # Requests published during the outage wait in the broker.
        second = sandbox.create_task()
        await broker.publish({"TaskId": second, "OfflinePushInfo": OVERWRITE})
        await proxy.start()
        await wait_until(lambda: _status(http, "/readyz", 200), 30, "reconnection")
    await wait_until(lambda: _settled(worker, 2), 20, "the second request settled")
    assert sorted(sandbox.recalled_task_ids()) == sorted([first, second])
    assert [c.code for c in sandbox.revoke_calls()] == [0, 0]  # no second call for an acked one
    assert await broker.count(names.queue) == 0
    assert await broker.count(names.dead) == 0


def _settled(worker: WorkerProcess, count: int) -> bool:
    return sum(e.get("event") == "request_recalled" for e in worker.events()) >= count


async def _status(http: httpx.AsyncClient, path: str, status: int) -> bool:
    try:
        return (await http.get(path)).status_code == status
    except httpx.HTTPError:
        return False


async def _dead_letters(
    broker: Broker, sandbox: Sandbox, run_worker: WorkerFactory
) -> dict[str, int]:
    """Three dead letters: two 90053 (no overwrite) and one 90049, in that order."""
    bare_a, bare_b = sandbox.create_task(online_only=False), sandbox.create_task(online_only=False)
    unknown = bare_a.replace(bare_a.split("_")[1], "0badf00d")
    async with run_worker() as running:
        await broker.publish({"TaskId": bare_a})
        await broker.publish({"TaskId": unknown, "OfflinePushInfo": OVERWRITE})
        await broker.publish({"TaskId": bare_b})
        await running.wait_settled(3)
    return {bare_a: 90053, unknown: 90049, bare_b: 90053}


async def test_dlq_list_leaves_every_message_in_place(
    amqp_url: str, broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    expected = await _dead_letters(broker, sandbox, run_worker)
    for _ in range(2):
        code, out, err = await cli(amqp_url, names, "dlq", "list")
        assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TaskId", "code", "info", "source", "attempts", "when", "app"]
    for task_id, error in expected.items():
        assert any(task_id in line and str(error) in line for line in lines)
    code, out, _ = await cli(amqp_url, names, "dlq", "list", "--json", "--limit", "2")
    assert code == 0
    assert len(out.splitlines()) == 2
    letters = await broker.take(names.dead)
    assert [(m.headers or {})[H_ERROR_CODE] for m in letters] == list(expected.values())


async def test_dlq_list_shows_the_brokers_own_dead_letters(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    # No consumer, a 1 ms TTL: RabbitMQ dead-letters it itself, with an x-death header.
    await broker.publish({"TaskId": "expired-in-queue"}, expiration=0.001)
    await wait_until(lambda: _count_is(broker, names.dead, 1), 10, "the broker's dead letter")
    code, out, err = await cli(amqp_url, names, "dlq", "list")
    assert code == 0, err
    assert "broker:expired" in out
    assert "expired-in-queue" in out


async def _count_is(broker: Broker, queue: str, count: int) -> bool:
    return await broker.count(queue) == count


async def test_dlq_replay_moves_exactly_the_matching_ones_which_are_then_recalled(
    amqp_url: str, broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    expected = await _dead_letters(broker, sandbox, run_worker)
    code, out, err = await cli(amqp_url, names, "dlq", "replay", "--code", "90053", "--dry-run")
    assert code == 0, err
    assert "2 dead letter(s) would be replayed" in out
    assert await broker.count(names.dead) == 3
    code, out, err = await cli(amqp_url, names, "dlq", "replay", "--code", "90053")
    assert code == 0, err
    assert "2 dead letter(s) replayed; 1 left in place" in out
    assert await broker.count(names.dead) == 1
    # The operator adds a default overwrite and the replayed requests go through.
    async with run_worker(default_offline_push_info=OVERWRITE) as running:
        await running.wait_settled(2)
    replayed = [t for t, c in expected.items() if c == 90053]
    assert sorted(sandbox.recalled_task_ids()) == sorted(replayed)
    (left,) = await broker.take(names.dead)
    assert (left.headers or {})[H_ERROR_CODE] == 90049


async def test_dlq_replay_to_a_missing_queue_acks_nothing(
    amqp_url: str, broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    await _dead_letters(broker, sandbox, run_worker)
    await broker.delete(names.queue)  # the target is gone: no confirm, so no ack
    code, _, err = await cli(amqp_url, names, "dlq", "replay", "--code", "90053")
    assert code != 0
    assert "Traceback" not in err
    assert await broker.count(names.dead) == 3


async def test_dlq_purge_needs_yes_and_removes_only_that_code(
    amqp_url: str, broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    await _dead_letters(broker, sandbox, run_worker)
    code, _, err = await cli(amqp_url, names, "dlq", "purge", "--code", "90053")
    assert code == 2
    assert "--yes" in err
    assert await broker.count(names.dead) == 3
    code, out, err = await cli(amqp_url, names, "dlq", "purge", "--code", "90053", "--yes")
    assert code == 0, err
    assert "2 dead letter(s) purged" in out
    (left,) = await broker.take(names.dead)
    assert (left.headers or {})[H_ERROR_CODE] == 90049


async def test_no_call_once_the_broker_is_gone_the_delivery_is_void(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker, proxy: TcpProxy
) -> None:
    # A partition: another replica may get this request now; calling on would put two callers
    # on one quota. The worker stops calling until the broker is back.
    worker = await spawn_worker(
        RECALL_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
        RECALL_RETRY_BUDGET_S="60",
    )
    await worker.ready()
    task_id = sandbox.create_task()
    sandbox.fail_next(1000, task_id=task_id, code=91000)
    await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    await sandbox.wait_for(lambda calls: len(calls) >= 3, timeout=10)
    await proxy.cut()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.port}") as http:
        await wait_until(lambda: _status(http, "/readyz", 503), 15, "the broker loss seen")
        calls_at_loss = len(sandbox.revoke_calls())
        # Several retry intervals pass: none of them may produce a call.
        await asyncio.sleep(1.0)
        assert len(sandbox.revoke_calls()) <= calls_at_loss + 1  # at most one in flight
        sandbox.clear_faults()
        await proxy.start()
        await wait_until(lambda: _status(http, "/readyz", 200), 30, "reconnection")
    await wait_until(lambda: _settled(worker, 1), 20, "the redelivered request settled")
    assert sandbox.recalled_task_ids() == [task_id]
    assert await broker.count(names.queue) == 0
    assert await broker.count(names.dead) == 0


async def test_started_during_a_broker_outage_the_worker_waits_live_not_ready(
    broker: Broker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker, proxy: TcpProxy
) -> None:
    await proxy.cut()
    worker = await spawn_worker(RECALL_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.port}") as http:
        await wait_until(
            lambda: any(e.get("event") == "broker_unreachable" for e in worker.events()),
            15,
            "the worker to find the broker unreachable",
        )
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 503
        assert worker.process.returncode is None  # no crash loop
        await proxy.start()
        await wait_until(lambda: _status(http, "/readyz", 200), 30, "the broker found")
    task_id = sandbox.create_task()
    await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    await wait_until(lambda: _settled(worker, 1), 15, "a recall once connected")
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.exit_code() == 0


async def test_a_wrong_broker_password_exits_2_with_one_line(
    amqp_url: str, spawn_worker: SpawnWorker
) -> None:
    worker = await spawn_worker(RECALL_AMQP_URL=amqp_url.replace("guest:guest", "guest:nope"))
    assert await worker.exit_code() == 2
    assert "RabbitMQ refused the user or password" in worker.log()
    assert "nope" not in worker.log()
