"""A replay after a restart is a new request; halted replicas never cost the fleet a call; a
request that halts twice is dead-lettered instead of going round."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import aio_pika
import httpx
import pytest

from consumer.ops.dlq import matcher, move_dead_letters
from consumer.sandbox import Sandbox
from schemas.events import H_ERROR_CODE, H_ERROR_INFO, H_ERROR_SOURCE
from tests.support.broker import OVERWRITE, Names
from tests.support.faults import (
    FaultBroker,
    events_named,
    kill,
    min_gap,
    publish_all,
    read_all_results,
    report,
    request_for,
    stop,
    wait_until,
)
from tests.support.workers import SpawnWorker, WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FAST_HALT = {"RECALL_HALT_PROBE_INITIAL_S": "0.2", "RECALL_HALT_PROBE_MAX_S": "0.5"}


async def test_replayed_90053_dead_letters_survive_a_sigkill_and_are_all_recalled(
    broker: FaultBroker,
    names: Names,
    sandbox: Sandbox,
    spawn_worker: SpawnWorker,
    amqp_url: str,
) -> None:
    tasks = [sandbox.create_task() for _ in range(8)]  # each kept roaming messages: 90053
    requests = [request_for(t, {"TaskId": t}) for t in tasks]
    await broker.declare()
    await publish_all(broker, requests)
    first = await spawn_worker()
    await wait_until(lambda: len(events_named(first, "request_dead_lettered")) == 8, 20, "90053s")
    await stop(first)
    assert await broker.count(names.dead) == 8

    # The README's advice: set the default overwrite, then replay the 90053 dead letters.
    summary = await move_dead_letters(amqp_url, names.dead, names.queue, matcher(90053, None))
    assert summary.matched == 8
    env = {"RECALL_DEFAULT_OFFLINE_PUSH_INFO": json.dumps(OVERWRITE), "RECALL_INTERVAL_S": "0.3"}
    second = await spawn_worker(**env)
    calls_before = len(sandbox.revoke_calls())
    await sandbox.wait_for(lambda c: len(c) >= calls_before + 3, timeout=20)
    await kill(second)  # while the replayed copies wait for their slots
    third = await spawn_worker(**env)
    await wait_until(lambda: len(sandbox.recalled_task_ids()) == 8, 30, "every task recalled")
    await wait_until(lambda: _empty(broker, names.queue), 20, "the recall queue to drain")
    await stop(third)

    assert sorted(sandbox.recalled_task_ids()) == sorted(tasks)
    assert await broker.count(names.dead) == 0
    codes = [c.code for c in sandbox.revoke_calls()]
    assert 90051 not in codes
    told: dict[str | None, list[tuple[str, int, str | None]]] = defaultdict(list)
    for event in await read_all_results(broker):
        told[event.message_id].append((event.outcome, event.error_code, event.lineage))
    for request in requests:
        outcomes = told[request.message_id]
        # One event per chain: the first dead-lettered 90053, the replay recalled (a 90050
        # after the kill counts as recalled: that chain's call may have reached the server).
        assert [o[0] for o in outcomes] == ["dead_lettered", "recalled"], outcomes
        assert outcomes[0][1] == 90053
        assert outcomes[0][2] != outcomes[1][2], "a replay must start a new lineage"
    # A replay is never taken for its dead-lettered chain. (The kill may land between a replayed
    # chain's results event and its ack: the third worker then only acks that one, rightly.)
    dead_chains = {outcomes[0][2] for outcomes in told.values()}
    acked_only = {e.get("lineage") for e in events_named(third, "request_already_settled")}
    assert not acked_only & dead_chains
    recalled_chains = {outcomes[1][2] for outcomes in told.values()}
    assert acked_only <= recalled_chains
    report("replay_then_sigkill", calls=len(codes), codes=codes, min_gap_s=min_gap(sandbox))


async def _empty(broker: FaultBroker, queue: str) -> bool:
    return await broker.count(queue) == 0


async def _ready(worker: WorkerProcess) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=2) as http:
        answer = await http.get(f"http://127.0.0.1:{worker.port}/readyz")
    return {"status": answer.status_code, **answer.json()}


async def test_a_halted_replica_never_costs_the_fleet_a_call(
    broker: FaultBroker,
    names: Names,
    sandbox: Sandbox,
    spawn_worker: SpawnWorker,
    tmp_path: Path,
) -> None:
    wrong_key = tmp_path / "wrong-key"
    wrong_key.write_text("not-the-apps-secret-key")
    tasks = [sandbox.create_task() for _ in range(30)]
    requests = [request_for(t, {"TaskId": t, "OfflinePushInfo": OVERWRITE}) for t in tasks]
    wrong = await spawn_worker(TIM_SECRET_KEY_FILE=str(wrong_key), **FAST_HALT)
    await wrong.ready()
    await broker.declare()
    await publish_all(broker, requests)  # the wrong replica is the active one
    await wait_until(lambda: bool(events_named(wrong, "worker_halted")), 15, "the halt")
    right = await spawn_worker(**FAST_HALT)
    await wait_until(lambda: len(sandbox.recalled_task_ids()) == 30, 40, "the backlog drained")
    await wait_until(lambda: _empty(broker, names.queue), 20, "an empty queue")
    state = await _ready(wrong)
    await stop(right)
    await stop(wrong)

    codes = [c.code for c in sandbox.revoke_calls()]
    assert 90051 not in codes, codes
    assert state["status"] == 503
    assert state["not_halted"] is False
    halted = events_named(wrong, "worker_halted")[0]
    assert halted["code"] == 70003  # it says why
    assert len(events_named(wrong, "halt_probe_failed")) >= 2  # it kept probing, refused
    assert not events_named(wrong, "request_recalled")
    # The server counts only calls past its identity checks: the refused probes are not arrivals.
    counted = [c.arrived for c in sandbox.revoke_calls() if c.code != 70003]
    gap = min(b - a for a, b in itertools.pairwise(counted))
    assert gap >= sandbox.config.min_interval
    report("halted_replica", calls=len(codes), probes=len(events_named(wrong, "halt_probe_failed")))


async def test_every_replica_resumes_after_a_shared_fault_is_fixed(
    broker: FaultBroker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    sandbox.fail_next(10_000, code=60020)  # the package expired: every call, every replica
    a, b = await spawn_worker(**FAST_HALT), await spawn_worker(**FAST_HALT)
    await a.ready()
    await b.ready()
    tasks = [sandbox.create_task() for _ in range(12)]
    await broker.declare()
    requests = [request_for(t, {"TaskId": t, "OfflinePushInfo": OVERWRITE}) for t in tasks]
    await publish_all(broker, requests)
    await wait_until(
        lambda: bool(events_named(a, "worker_halted")) and bool(events_named(b, "worker_halted")),
        20,
        "both replicas to halt",
    )
    sandbox.clear_faults()  # someone renews the package
    for worker in (a, b):
        await worker.ready(timeout=15)
    await wait_until(lambda: len(sandbox.recalled_task_ids()) == 12, 30, "the backlog drained")
    await stop(a)
    await stop(b)
    assert events_named(a, "worker_resumed")
    assert events_named(b, "worker_resumed")
    assert await broker.count(names.dead) == 0


async def test_a_request_that_halts_again_after_a_passing_probe_is_dead_lettered(
    broker: FaultBroker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    poison = sandbox.create_task()
    sandbox.fail_next(100, task_id=poison, http_status=403)  # a gateway refuses this one body
    others = [sandbox.create_task() for _ in range(3)]
    requests = [
        request_for(t, {"TaskId": t, "OfflinePushInfo": OVERWRITE}) for t in [poison, *others]
    ]
    await broker.declare()
    await publish_all(broker, requests)
    worker = await spawn_worker(**FAST_HALT)
    await wait_until(lambda: _count_dead(broker, names, 1), 30, "the poison dead-lettered")
    await wait_until(lambda: len(sandbox.recalled_task_ids()) == 3, 30, "the others recalled")
    await stop(worker)
    (letter,) = await broker.take(names.dead)
    headers = letter.headers or {}
    assert (headers[H_ERROR_CODE], headers[H_ERROR_SOURCE]) == (403, "api")
    assert "403" in str(headers[H_ERROR_INFO])
    poison_calls = [c for c in sandbox.revoke_calls() if c.task_id == poison]
    assert len(poison_calls) == 2  # once to halt, once more after the probe passed; no loop
    assert len(events_named(worker, "worker_halted")) == 1


async def _count_dead(broker: FaultBroker, names: Names, n: int) -> bool:
    return await broker.count(names.dead) == n


async def _move_verbatim(amqp_url: str, source: str, target: str, count: int) -> None:
    """What the management UI's "Move messages", a shovel or a script re-publishing what it
    reads does: every message published again with its body, properties and every header
    (ours included), then acked."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=count)
        queue = await channel.get_queue(source, ensure=False)
        moved = 0
        async with queue.iterator() as letters:
            async for letter in letters:
                copy = aio_pika.Message(
                    letter.body,
                    headers=dict(letter.headers or {}),
                    content_type=letter.content_type,
                    message_id=letter.message_id,
                    correlation_id=letter.correlation_id,
                    timestamp=letter.timestamp,
                    app_id=letter.app_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                await channel.default_exchange.publish(copy, target)
                await letter.ack()
                moved += 1
                if moved == count:
                    break
    finally:
        await connection.close()


async def test_dead_letters_moved_back_verbatim_survive_a_sigkill_and_are_all_recalled(
    broker: FaultBroker,
    names: Names,
    sandbox: Sandbox,
    spawn_worker: SpawnWorker,
    amqp_url: str,
) -> None:
    """Not `dlq replay`: RabbitMQ's own tools keep every header of the dead letter. Each moved
    letter is a new try (before this, a moved letter kept its told chain and was only acked:
    no call, no event, gone)."""
    tasks = [sandbox.create_task() for _ in range(6)]  # each kept roaming messages: 90053
    requests = [request_for(t, {"TaskId": t}) for t in tasks]
    await broker.declare()
    await publish_all(broker, requests)
    first = await spawn_worker()
    await wait_until(lambda: len(events_named(first, "request_dead_lettered")) == 6, 20, "90053s")
    await stop(first)
    # The operator fixes the cause (the default overwrite), then moves the letters back.
    await _move_verbatim(amqp_url, names.dead, names.queue, 6)
    env = {"RECALL_DEFAULT_OFFLINE_PUSH_INFO": json.dumps(OVERWRITE), "RECALL_INTERVAL_S": "0.3"}
    second = await spawn_worker(**env)
    calls_before = len(sandbox.revoke_calls())
    await sandbox.wait_for(lambda c: len(c) >= calls_before + 2, timeout=20)
    await kill(second)  # while the moved letters wait for their slots
    third = await spawn_worker(**env)
    await wait_until(lambda: len(sandbox.recalled_task_ids()) == 6, 30, "every task recalled")
    await wait_until(lambda: _empty(broker, names.queue), 20, "the recall queue to drain")
    await stop(third)

    assert sorted(sandbox.recalled_task_ids()) == sorted(tasks)
    assert await broker.count(names.dead) == 0
    assert 90051 not in [c.code for c in sandbox.revoke_calls()]
    told: dict[str | None, list[tuple[str, int, str | None]]] = defaultdict(list)
    for event in await read_all_results(broker):
        told[event.message_id].append((event.outcome, event.error_code, event.lineage))
    for request in requests:
        outcomes = told[request.message_id]
        assert [o[0] for o in outcomes] == ["dead_lettered", "recalled"], outcomes
        assert outcomes[0][2] != outcomes[1][2], "a moved letter must start a new chain"
    dead_chains = {outcomes[0][2] for outcomes in told.values()}
    for worker in (second, third):
        acked_only = {e.get("lineage") for e in events_named(worker, "request_already_settled")}
        assert not acked_only & dead_chains


async def test_halted_again_is_judged_on_the_request_across_replicas_and_key_rotations(
    broker: FaultBroker,
    names: Names,
    sandbox: Sandbox,
    spawn_worker: SpawnWorker,
    tmp_path: Path,
) -> None:
    """A key rotated under both replicas, twice. After the first rotation both replicas have
    resumed by a passing probe; after the second, the request released by one replica's halt
    reaches the other, which halts on it too: it is not dead-lettered as "halted again" (that
    replica's probe passed before the request's own halt)."""
    await broker.declare()
    a = await spawn_worker(**FAST_HALT)
    await a.ready()
    b = await spawn_worker(**FAST_HALT)
    await b.ready()
    key_files = [tmp_path / "secret-0", tmp_path / "secret-1"]
    for rotation, key in enumerate(
        ("rotated-key-one-0123456789abcdef", "rotated-key-two-0123456789")
    ):
        sandbox.config = replace(sandbox.config, secret_key=key)  # rotated at Tencent first
        task_id = sandbox.create_task()
        await publish_all(
            broker, [request_for(task_id, {"TaskId": task_id, "OfflinePushInfo": OVERWRITE})]
        )
        await wait_until(
            lambda n=rotation + 1: all(len(events_named(w, "worker_halted")) >= n for w in (a, b)),
            20,
            "both replicas halted on the request",
        )
        for path in key_files:  # then in the replicas' Secret
            path.write_text(key + "\n")
        await wait_until(lambda t=task_id: sandbox.is_recalled(t), 20, "the request recalled")
        for worker in (a, b):
            await worker.ready(timeout=15)
    await stop(a)
    await stop(b)
    assert await broker.count(names.dead) == 0
    assert len(sandbox.recalled_task_ids()) == 2
    events = await read_all_results(broker)
    assert [e.outcome for e in events] == ["recalled", "recalled"]
