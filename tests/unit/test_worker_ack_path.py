"""consumer/core/worker.py against the in-memory broker (tests/support/amqp_double.py, through
the worker's `connect` seam) and the API sandbox in process (an httpx ASGI transport, no
socket): the cases the integration tier runs against RabbitMQ, checked by what the broker holds
and in which order it did it, and by what the API received."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import consumer.core.settle as settle_module
import consumer.core.verdict as verdict_module
from consumer.core.client import RevokeClient
from consumer.core.envelope import message_generation, read_envelope, republish_message
from consumer.core.identity import lineage_of
from consumer.core.memory import RecallMemory
from consumer.core.metrics import Metrics
from consumer.core.pacing import Pacer
from consumer.core.settings import load_settings
from consumer.core.stream import RESULT_TYPE, result_message
from consumer.core.topology import Topology
from consumer.core.usersig import UserSigCache
from consumer.core.worker import AppLane, Worker
from consumer.ops.app import worker_config
from consumer.sandbox import Sandbox, SandboxConfig
from schemas.events import (
    H_ATTEMPTS,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_HALTED_AT,
    H_HALTS,
    H_LINEAGE,
    ResultEvent,
)
from schemas.recall import parse_request
from tests.support.amqp_double import AmqpDouble, Fault, Held
from tests.support.events import crashed_recall
from tests.support.workers import raising_for

INTERVAL_S = 0.05
QUEUE = "recall"
TOPOLOGY = Topology(QUEUE, f"{QUEUE}.dead", f"{QUEUE}.results")
Q, DLQ, RESULTS = TOPOLOGY.queue, TOPOLOGY.dead_letter_queue, TOPOLOGY.results_stream
REPLIES = "caller.replies"
OVERWRITE = {"Title": "Recalled", "Desc": "This message was recalled."}


@pytest.fixture(autouse=True)
def short_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A settle step tried twice, a hang cut short: the retry path in a fraction of a second."""
    monkeypatch.setattr(settle_module, "STEP_TRIES", 2)
    monkeypatch.setattr(settle_module, "STEP_TIMEOUT_S", 0.1)


@pytest.fixture
def broker() -> AmqpDouble:
    """The in-memory broker, with the worker's queues declared as the worker declares them."""
    double = AmqpDouble()
    double.declare(Q, TOPOLOGY.queue_arguments())
    double.declare(DLQ, TOPOLOGY.dead_letter_arguments())
    double.declare(RESULTS, TOPOLOGY.results_arguments())
    return double


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(min_interval=INTERVAL_S))


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll `predicate` every 5 ms; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class Running:
    """A worker running in this test's event loop, and what it settled and told."""

    worker: Worker
    settled: list[ResultEvent]

    async def wait_settled(self, count: int, timeout: float = 5.0) -> None:
        await until(lambda: len(self.settled) >= count, f"{count} settled requests", timeout)


@contextlib.asynccontextmanager
async def running(broker: AmqpDouble, sandbox: Sandbox, **overrides: Any) -> AsyncIterator[Running]:
    """A worker wired as `build_worker` wires it, on the double and the in-process sandbox."""
    values: dict[str, Any] = {
        "sdkappid": sandbox.config.sdkappid,
        "secret_key_value": sandbox.config.secret_key,
        "base_url": "http://sandbox.test",
        "amqp_url": "amqp://guest:guest@double.test:5672/",
        "queue": QUEUE,
        "interval_s": INTERVAL_S,
        "retry_initial_s": 0.02,
        "retry_max_s": 0.1,
        "retry_budget_s": 10.0,
        "http_port": 0,
    }
    values.update(overrides)
    settings = load_settings(**values)
    sdkappid = settings.require_sdkappid()
    usersigs = UserSigCache(sdkappid, settings.identifier, settings.secret_key_source())
    settled: list[ResultEvent] = []
    transport = httpx.ASGITransport(app=sandbox.app())
    async with httpx.AsyncClient(transport=transport) as http:
        client = RevokeClient(http, settings.api_base_url, sdkappid, settings.identifier, usersigs)
        worker = Worker(
            worker_config(settings),
            [AppLane(sdkappid, client, Pacer(settings.interval_s))],
            Metrics(),
            memory=RecallMemory(),
            on_settled=settled.append,
            connect=broker.connect,
        )
        started = asyncio.Event()
        task = asyncio.create_task(worker.run(started))
        await until(lambda: started.is_set() or task.done(), "the worker to start")
        if task.done():
            task.result()  # raises why it could not start
        try:
            yield Running(worker, settled)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
    assert broker.callback_errors == []  # no consumer callback of the worker's ever raised


def body(task_id: str, **more: Any) -> bytes:
    return json.dumps({"TaskId": task_id, "OfflinePushInfo": OVERWRITE, **more}).encode()


def events(broker: AmqpDouble) -> list[ResultEvent]:
    """The results events in the stream (not the markers a rebuild writes)."""
    return [
        ResultEvent.model_validate_json(held.body)
        for held in broker.held(RESULTS)
        if held.message_type == RESULT_TYPE
    ]


def trail(broker: AmqpDouble, message_id: str) -> list[tuple[str, str]]:
    """What the broker did with the request's queue, its dead-letter queue, and its event."""
    return [
        (e.op, e.queue)
        for e in broker.history
        if e.queue in (Q, DLQ) or (e.queue == RESULTS and e.message_id == message_id)
    ]


def anything(held: Held) -> bool:
    return True


def republished(held: Held) -> bool:
    return int(held.headers.get(H_ATTEMPTS, 0)) > 0


def is_event(held: Held) -> bool:
    return held.message_type == RESULT_TYPE


def drained(broker: AmqpDouble) -> bool:
    return not broker.held(Q) and not broker.unacked(Q)


# ---- the paths (tests/integration/test_worker_paths.py) ------------------------------------------


async def test_recall_is_told_then_acked_in_one_trip_with_one_call(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # test_recall_is_acked_told_and_sent_once
    task_id = sandbox.create_task()
    message_id = broker.put(Q, body(task_id), message_id="m-1", correlation_id="cms-42")
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert [(c.task_id, c.code) for c in sandbox.revoke_calls()] == [(task_id, 0)]
    assert trail(broker, message_id) == [
        ("publish", Q),  # the request: delivered once, no copy of it published
        ("publish", RESULTS),  # the event confirmed ...
        ("ack", Q),  # ... before the request is acked
    ]
    (event,) = events(broker)
    assert (event.message_id, event.outcome, event.attempts, event.correlation_id) == (
        message_id,
        "recalled",
        1,
        "cms-42",
    )
    assert run.settled == [event]
    assert broker.held(DLQ) == []


@pytest.mark.parametrize(
    ("raw", "code", "source", "calls"),
    [
        (None, 90049, "api", 1),  # a TaskId the API does not know
        (b"not json at all", 90001, "local", 0),  # refused here, without a call
    ],
    ids=["permanent-code", "invalid-body"],
)
async def test_dead_letter_is_confirmed_before_the_event_and_the_ack(
    broker: AmqpDouble,
    sandbox: Sandbox,
    raw: bytes | None,
    code: int,
    source: str,
    calls: int,
) -> None:
    # test_permanent_codes_are_dead_lettered_with_body_and_headers and
    # test_invalid_bodies_are_dead_lettered_locally_without_a_call
    task_id = sandbox.create_task()
    if raw is None:
        unknown = task_id.replace(task_id.split("_")[1], "0badf00d")
        raw = json.dumps({"TaskId": unknown, "OfflinePushInfo": OVERWRITE}, indent=1).encode()
    message_id = broker.put(Q, raw, correlation_id="c-1", headers={"upstream": "cms"})
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert len(sandbox.revoke_calls()) == calls
    assert trail(broker, message_id) == [
        ("publish", Q),
        ("publish", DLQ),
        ("publish", RESULTS),
        ("ack", Q),
    ]
    (letter,) = broker.held(DLQ)
    assert letter.body == raw
    assert (letter.message_id, letter.properties.correlation_id) == (message_id, "c-1")
    headers = letter.headers
    assert (headers["upstream"], headers[H_ERROR_CODE], headers[H_ERROR_SOURCE]) == (
        "cms",
        code,
        source,
    )
    assert headers[H_ATTEMPTS] == calls
    assert [(e.message_id, e.outcome, e.error_code) for e in events(broker)] == [
        (message_id, "dead_lettered", code)
    ]


async def test_a_nacked_dead_letter_is_retried_and_nothing_is_acked_before_it_confirms(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # The settle step retry on a live channel (no integration test makes RabbitMQ nack).
    broker.fail_next("publish", DLQ, Fault.NACK)  # the first try; the second is confirmed
    message_id = broker.put(Q, body("660cc447_no_such_task"))
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert [c.code for c in sandbox.revoke_calls()] == [90049]
    assert trail(broker, message_id)[1:] == [("publish", DLQ), ("publish", RESULTS), ("ack", Q)]
    assert len(broker.held(DLQ)) == 1


# ---- a lost connection mid-settlement (tests/integration/test_settle_resume.py) -----------------


@pytest.mark.parametrize(
    ("fault", "op", "queue", "where"),
    [
        (Fault.CUT_BEFORE, "publish", RESULTS, is_event),  # the event never confirmed
        (Fault.CUT_AFTER, "publish", RESULTS, is_event),
        (Fault.CUT_BEFORE, "ack", Q, anything),  # the ack never arrived: redelivered
        (Fault.CUT_AFTER, "ack", Q, anything),  # the ack arrived, then the link died
    ],
    ids=["result-event-unconfirmed", "result-event-confirmed", "ack-lost", "ack-arrived"],
)
async def test_cut_while_recalling(
    broker: AmqpDouble,
    sandbox: Sandbox,
    fault: Fault,
    op: Any,
    queue: str,
    where: Callable[[Held], bool],
) -> None:
    # test_cut_while_recalling: one call, one event, one live copy, whatever step the cut follows
    task_id = sandbox.create_task()
    broker.fail_next(op, queue, fault, where=where)
    message_id = broker.put(Q, body(task_id))
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
        # the cut happened, and the worker came back (after an ack that arrived, the queue
        # can be drained before the worker has noticed the cut)
        await until(lambda: len(broker.connections) == 2, "the worker to reconnect")
    assert len(broker.connections) == 2
    assert [c.code for c in sandbox.revoke_calls()] == [0]
    assert [(e.message_id, e.outcome) for e in events(broker)] == [(message_id, "recalled")]
    assert broker.ops(Q).count(("publish", Q)) == 1  # the request: no copy of it
    assert broker.held(DLQ) == []
    assert run.settled[0] == events(broker)[0]  # told with the event the stream holds


async def test_a_lost_ack_is_told_once(broker: AmqpDouble, sandbox: Sandbox) -> None:
    broker.fail_next("ack", Q, Fault.CUT_BEFORE)
    broker.put(Q, body(sandbox.create_task()))
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert len(events(broker)) == 1
    assert len(run.settled) == 1


async def test_cut_after_the_dead_letter_is_confirmed(broker: AmqpDouble, sandbox: Sandbox) -> None:
    # test_cut_after_the_dead_letter_is_confirmed
    broker.fail_next("publish", DLQ, Fault.CUT_AFTER)
    message_id = broker.put(Q, body("660cc447_no_such_task"))
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert len(broker.connections) == 2
    assert [c.code for c in sandbox.revoke_calls()] == [90049]
    assert len(broker.held(DLQ)) == 1
    assert [(e.message_id, e.error_code) for e in events(broker)] == [(message_id, 90049)]
    # After the cut: the redelivery finished the settlement, it did not start another.
    assert trail(broker, message_id)[-4:] == [
        ("publish", DLQ),
        ("return", Q),
        ("publish", RESULTS),
        ("ack", Q),
    ]


async def test_cut_after_a_re_publish_is_confirmed_leaves_one_live_copy(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # test_cut_after_a_re_publish_is_confirmed_leaves_one_live_copy
    task_id = sandbox.create_task()
    sandbox.fail_next(1000, task_id=task_id, code=91000)  # the budget runs out: re-published
    broker.fail_next("publish", Q, Fault.CUT_AFTER, where=republished)
    message_id = broker.put(Q, body(task_id))
    async with running(broker, sandbox, retry_budget_s=0.15) as run:
        await until(lambda: len(broker.connections) == 2, "the cut after the re-publish")
        sandbox.clear_faults()
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    codes = [c.code for c in sandbox.revoke_calls()]
    assert codes.count(0) == 1, codes
    assert 90050 not in codes, codes  # no second live copy called after the recall
    assert [(e.message_id, e.outcome) for e in events(broker)] == [(message_id, "recalled")]
    assert broker.held(DLQ) == []


async def test_cut_mid_call_the_answer_is_kept_and_not_asked_again(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # test_cut_mid_call_the_answer_is_kept_and_not_asked_again
    task_id = sandbox.create_task()
    sandbox.set_latency(0.2)
    message_id = broker.put(Q, body(task_id))
    async with running(broker, sandbox) as run:
        await until(lambda: len(sandbox.revoke_calls()) == 1, "the call to arrive")
        broker.cut()  # while the answer is on its way
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert [c.code for c in sandbox.revoke_calls()] == [0]  # the answer came after the cut
    assert [(e.message_id, e.outcome) for e in events(broker)] == [(message_id, "recalled")]
    assert ("return", Q) in broker.ops(Q)


# ---- a told chain (test_reply_and_trace.py, tests/faults/test_kills.py) ------------------------


async def test_a_told_chain_delivered_again_is_only_acked_and_not_replied_twice(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # tests/integration/test_reply_and_trace.py::test_a_redelivery_that_is_only_acked_does_not_...
    broker.declare(REPLIES)
    task_id = sandbox.create_task()
    headers = {H_LINEAGE: "told-chain"}
    broker.put(Q, body(task_id), reply_to=REPLIES, headers=headers)
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
    assert len(broker.held(REPLIES)) == 1  # the settling delivery replied
    broker.put(Q, body(task_id), reply_to=REPLIES, headers=headers)
    before = len(broker.history)
    async with running(broker, sandbox) as again:  # its memory comes back from the stream
        await until(lambda: drained(broker), "the ack")
    assert [(e.op, e.queue) for e in broker.history[before:] if e.queue != RESULTS] == [("ack", Q)]
    assert len(broker.held(REPLIES)) == 1  # no second reply
    assert len(sandbox.revoke_calls()) == 1
    assert len(events(broker)) == 1
    assert again.settled == []


async def test_crash_between_results_event_and_ack_counts_as_recalled(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # tests/faults/test_kills.py::test_crash_between_results_event_and_ack_counts_as_recalled:
    # the event is in the stream, the delivery went back to the queue unacked (redelivered).
    task_id = sandbox.create_task()
    sandbox.mark_recalled(task_id)  # the crashed worker's call
    message_id = broker.put(Q, body(task_id), headers={H_LINEAGE: "lineage-1"})
    event = crashed_recall(task_id, message_id, "lineage-1")
    broker.put(RESULTS, result_message(event))
    crashed = await broker.connect()  # it took the delivery and died holding it
    channel = await crashed.channel()
    queue = await channel.declare_queue(Q, durable=True, arguments=TOPOLOGY.queue_arguments())
    await queue.consume(lambda _: asyncio.sleep(0))
    broker.cut()
    assert broker.held(Q)[0].redelivered
    before = len(broker.history)
    async with running(broker, sandbox) as run:
        await until(lambda: drained(broker), "the redelivery to be acked")
    assert sandbox.revoke_calls() == []
    assert [(e.op, e.queue) for e in broker.history[before:] if e.queue != RESULTS] == [("ack", Q)]
    assert events(broker) == [event]
    assert broker.held(DLQ) == []
    assert run.settled == []


# ---- a delivery whose handling raises (tests/integration/test_raising_delivery.py) --------------


async def test_raising_once_is_released_then_recalled(
    broker: AmqpDouble, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # test_raising_once_is_released_then_recalled
    task_id = sandbox.create_task()
    raised = raising_for(monkeypatch, task_id, times=1)
    message_id = broker.put(Q, body(task_id))
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert raised == [1]
    assert [c.code for c in sandbox.revoke_calls()] == [0]
    assert [(e.message_id, e.outcome) for e in events(broker)] == [(message_id, "recalled")]
    # The request and the released copy: each acked once its successor was held.
    assert trail(broker, message_id) == [
        ("publish", Q),
        ("publish", Q),
        ("ack", Q),
        ("publish", RESULTS),
        ("ack", Q),
    ]


async def test_raising_again_on_redelivery_is_dead_lettered_locally(
    broker: AmqpDouble, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # test_raising_again_on_redelivery_is_dead_lettered_locally
    task_id = sandbox.create_task()
    raising_for(monkeypatch, task_id, times=100)
    message_id = broker.put(Q, body(task_id))
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert sandbox.revoke_calls() == []
    (letter,) = broker.held(DLQ)
    assert letter.message_id == message_id
    headers = letter.headers
    assert (headers[H_ERROR_CODE], headers[H_ERROR_SOURCE]) == (99999, "local")
    assert "RuntimeError" in headers[H_ERROR_INFO]
    assert [e.error_code for e in run.settled] == [99999]


# ---- one trip, and every replay a new try (issue 19) -------------------------------------------


async def hand_back(broker: AmqpDouble) -> AbstractIncomingMessage:
    """A worker that took the head of the queue and died holding it: the broker redelivers it.
    Returns the delivery that worker got."""
    crashed = await broker.connect()
    channel = await crashed.channel()
    await channel.set_qos(prefetch_count=1)
    queue = await channel.declare_queue(Q, durable=True, arguments=TOPOLOGY.queue_arguments())
    got: list[AbstractIncomingMessage] = []

    async def take(message: AbstractIncomingMessage) -> None:
        got.append(message)

    await queue.consume(take)
    await until(lambda: bool(got), "the crashed worker's delivery")
    broker.cut(crashed)  # type: ignore[arg-type]
    assert broker.held(Q)[0].redelivered
    return got[0]


def as_message(held: Held) -> aio_pika.Message:
    """What a tool that re-publishes a message verbatim publishes: body, properties, headers."""
    p = held.properties
    return aio_pika.Message(
        held.body,
        headers=held.headers,
        content_type=p.content_type,
        correlation_id=p.correlation_id,
        message_id=p.message_id,
        timestamp=p.timestamp,
        delivery_mode=p.delivery_mode,
        app_id=p.app_id,
    )


async def test_a_told_request_redelivered_to_another_replica_is_only_acked(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # No header of ours on it: the redelivery is recognised by its bytes and the told chain.
    task_id = sandbox.create_task()
    sandbox.mark_recalled(task_id)  # the crashed worker's call
    message_id = broker.put(Q, body(task_id))
    taken = await hand_back(broker)
    lineage = lineage_of(message_generation(taken), 0)
    event = crashed_recall(task_id, message_id, lineage)
    broker.put(RESULTS, result_message(event))  # ... told just before it died
    before = len(broker.history)
    async with running(broker, sandbox) as run:
        await until(lambda: drained(broker), "the redelivery to be acked")
    assert sandbox.revoke_calls() == []
    assert [(e.op, e.queue) for e in broker.history[before:] if e.queue != RESULTS] == [("ack", Q)]
    assert events(broker) == [event]
    assert run.settled == []


async def test_a_redelivery_whose_outcome_was_not_told_is_called_as_maybe_called(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    task_id = sandbox.create_task()
    sandbox.mark_recalled(task_id)  # the crashed worker's call reached the server
    message_id = broker.put(Q, body(task_id))
    await hand_back(broker)
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
    assert [c.code for c in sandbox.revoke_calls()] == [90050]
    # Its own earlier call may have done it: recalled, not a dead letter.
    assert [(e.message_id, e.outcome) for e in events(broker)] == [(message_id, "recalled")]
    assert broker.held(DLQ) == []


@pytest.mark.parametrize("interrupted", [False, True], ids=["moved", "moved-then-cut"])
async def test_a_dead_letter_moved_back_verbatim_is_a_new_try(
    broker: AmqpDouble, sandbox: Sandbox, interrupted: bool
) -> None:
    # The management UI's "Move messages", a shovel, or a script re-publishing what it reads
    # with every header: not `dlq replay`, so nothing of ours is removed.
    unknown = "660cc447_0badf00d_200000cd7ee17f5_84035729_bc614e"
    message_id = broker.put(Q, body(unknown), headers={"upstream": "cms"})
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the dead letter")
    (letter,) = broker.held(DLQ)
    broker.put(Q, as_message(letter))  # moved back, every header kept
    if interrupted:
        await hand_back(broker)  # its first delivery cut before anything was told
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert [c.code for c in sandbox.revoke_calls()] == [90049, 90049]  # called again
    first, second = events(broker)
    assert (first.message_id, second.message_id) == (message_id, message_id)
    assert first.lineage != second.lineage  # a chain of its own
    assert len(broker.held(DLQ)) == 2


async def test_a_producers_verbatim_second_publish_is_a_request_of_its_own(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    task_id = sandbox.create_task()
    raw = body(task_id)
    broker.put(Q, raw, message_id="same")
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        broker.put(Q, raw, message_id="same")  # byte for byte again
        await run.wait_settled(2)
        await until(lambda: drained(broker), "the queue to drain")
    assert [c.code for c in sandbox.revoke_calls()] == [0]
    outcomes = [(e.outcome, e.error_code, e.source) for e in events(broker)]
    assert outcomes == [("recalled", 0, "api"), ("dead_lettered", 90050, "local")]
    assert len({e.lineage for e in events(broker)}) == 2


async def test_a_release_copy_behind_its_redelivered_original_is_only_acked(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # A replica released the request (its copy confirmed at the tail), then died before its ack
    # arrived: the original comes back first, the copy after it. One chain, one call, one event.
    task_id = sandbox.create_task()
    broker.put(Q, body(task_id))
    taken = await hand_back(broker)
    lineage = lineage_of(message_generation(taken), 0)
    copy = republish_message(
        taken,
        replace(read_envelope(taken, time.time()), lineage=lineage, releases=1),
        attempts=0,
        now=time.time(),
    )
    broker.put(Q, copy)
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert [c.code for c in sandbox.revoke_calls()] == [0]
    assert [(e.outcome, e.lineage) for e in events(broker)] == [("recalled", lineage)]
    assert broker.held(DLQ) == []
    assert run.settled == events(broker)


async def test_a_delivery_about_to_reach_the_delivery_limit_is_dead_lettered_and_told(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # The broker would dead-letter it at its next return without a results event: a poison
    # message that kills the worker every time ends in our dead-letter queue, told.
    task_id = sandbox.create_task()
    limit = TOPOLOGY.delivery_limit
    message_id = broker.put(Q, body(task_id), headers={"x-delivery-count": limit - 1})
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert sandbox.revoke_calls() == []
    (letter,) = broker.held(DLQ)
    assert (letter.headers[H_ERROR_CODE], letter.headers[H_ERROR_SOURCE]) == (99997, "local")
    assert [(e.message_id, e.error_code) for e in events(broker)] == [(message_id, 99997)]


async def test_a_release_after_the_producers_expiration_is_told_as_expired(
    broker: AmqpDouble, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = sandbox.create_task()
    raising_for(monkeypatch, task_id, times=1)  # released once: by then its TTL ran out
    sent = datetime.fromtimestamp(time.time() - 120, UTC)
    message_id = broker.put(Q, body(task_id), timestamp=sent, expiration=60)
    async with running(broker, sandbox) as run:
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert sandbox.revoke_calls() == []
    assert broker.ops(Q).count(("publish", Q)) == 1  # no copy that would expire unseen
    assert [(e.message_id, e.error_code) for e in events(broker)] == [(message_id, 99998)]
    assert len(broker.held(DLQ)) == 1


@pytest.mark.parametrize(
    ("halted_s_ago", "probe_passed_s_ago", "dead_lettered"),
    [
        # Released by another replica's halt after this one's last probe passed (an earlier
        # key rotation): this replica halts on it too, it is not dead-lettered.
        (5, 60, False),
        (None, 60, False),  # never halted before
        # It halted, a probe passed since, and it halts again: its own fault.
        (60, 5, True),
    ],
    ids=["halted-after-our-probe", "first-halt", "halted-before-our-probe"],
)
async def test_halted_again_is_judged_on_the_request(
    broker: AmqpDouble,
    sandbox: Sandbox,
    halted_s_ago: float | None,
    probe_passed_s_ago: float,
    dead_lettered: bool,
) -> None:
    task_id = sandbox.create_task()
    sandbox.fail_next(1, task_id=task_id, code=70003)  # the key is wrong here too
    now = time.time()
    headers: dict[str, Any] = {H_LINEAGE: "chain#0", H_HALTS: 0 if halted_s_ago is None else 1}
    if halted_s_ago is not None:
        headers[H_HALTED_AT] = round((now - halted_s_ago) * 1000)
    async with running(broker, sandbox, halt_probe_initial_s=30) as run:
        (lane,) = run.worker.lanes.values()
        lane._probe_passed_at = now - probe_passed_s_ago  # an earlier resume of ours
        broker.put(Q, body(task_id), headers=headers)
        if dead_lettered:
            await run.wait_settled(1)
        else:
            await until(lambda: run.worker.halted and bool(broker.held(Q)), "the halt")
    assert [c.code for c in sandbox.revoke_calls()] == [70003]
    if dead_lettered:
        assert [e.error_code for e in events(broker)] == [70003]
        assert len(broker.held(DLQ)) == 1
    else:
        assert events(broker) == []
        (released,) = broker.held(Q)
        assert released.headers[H_HALTS] == (1 if halted_s_ago is None else 2)
        assert released.headers[H_HALTED_AT] >= now * 1000


# ---- consumption is watched, not assumed ---------------------------------------------------------


async def test_a_consumer_the_broker_cancels_is_noticed_and_subscribed_again(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    async with running(broker, sandbox) as run:
        with capture_logs() as logs:
            broker.delete_queue(Q)  # an operator deletes the queue under the worker
            await until(
                lambda: Q in broker._queues and bool(broker._queues[Q].consumers), "a new consumer"
            )
        events_seen = [entry["event"] for entry in logs]
        assert "consumer_cancelled_by_broker" in events_seen
        assert run.worker.readiness()["consuming"]
        task_id = sandbox.create_task()
        broker.put(Q, body(task_id))
        await run.wait_settled(1)
    assert [c.code for c in sandbox.revoke_calls()] == [0]


async def test_a_consumer_channel_the_broker_closes_starts_the_connection_over(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    task_id = sandbox.create_task()
    sandbox.set_latency(0.3)
    broker.put(Q, body(task_id))
    async with running(broker, sandbox) as run:
        await until(lambda: len(sandbox.revoke_calls()) == 1, "the call")
        with capture_logs() as logs:
            broker.close_channel_of(Q)  # a consumer timeout, the connection alive
            await until(lambda: len(broker.connections) == 2, "a new connection")
        sandbox.clear_faults()
        await run.wait_settled(1)
        await until(lambda: drained(broker), "the queue to drain")
    assert [
        entry.get("channel") for entry in logs if entry["event"] == "broker_channel_closed"
    ] == ["consumer"]
    # The call's answer was kept for the redelivery: one call, one event.
    assert [c.code for c in sandbox.revoke_calls()] == [0]
    assert [e.outcome for e in events(broker)] == ["recalled"]


async def test_readiness_reports_a_delivery_held_too_long(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    task_id = sandbox.create_task()
    sandbox.fail_next(1, task_id=task_id, hang=2.0)
    broker.put(Q, body(task_id))
    async with running(broker, sandbox, read_timeout_s=5.0) as run:
        await until(lambda: len(sandbox.revoke_calls()) == 1, "the call")
        assert run.worker.readiness()["progressing"]
        assert (run.worker.progress()["in_hand_s"] or 0) > 0
        (lane,) = run.worker.lanes.values()
        lane._stuck_after_s = 0.0  # as if the delivery had been held past its budget
        assert not run.worker.readiness()["progressing"]
        lane._stuck_after_s = 600.0
        await run.wait_settled(1)
        assert run.worker.progress()["in_hand_s"] is None
        assert run.worker.progress()["since_last_settle_s"] is not None


# ---- no input stalls the queue -------------------------------------------------------------------

OUR_HEADERS = (
    H_ATTEMPTS,
    H_LINEAGE,
    H_HALTS,
    H_HALTED_AT,
    H_ERROR_CODE,
    "x-recall-first-seen",
    "x-recall-may-have-reached",
    "x-recall-releases",
    "x-recall-failures",
    "x-recall-expires-at-ms",
    "x-delivery-count",
    "x-death",
    "traceparent",
)
amqp_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-(2**31), 2**31)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(-1e6, 1e6)
    | st.decimals(-(10**6), 10**6, places=3)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(UTC),
    )
    | st.sampled_from(["19", "-1", "1e3", "0x10", "", "chain#0", "00-" + "0" * 32]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
headers_strategy = st.dictionaries(
    st.sampled_from(OUR_HEADERS) | st.text(min_size=1, max_size=12), amqp_value, max_size=6
)
# What another client's encoding can bring that aio-pika's cannot send again: 64-bit doubles
# (NaN and infinities among them), 64-bit unsigned integers, bytes, decimals of any scale.
foreign_value = st.recursive(
    st.floats()
    | st.integers(-(2**64), 2**64)
    | st.binary(max_size=20)
    | st.decimals()
    | st.sampled_from([float("nan"), float("inf"), 1e308, 2**64 - 1]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
foreign_strategy = st.dictionaries(
    st.sampled_from(OUR_HEADERS) | st.text(min_size=1, max_size=12), foreign_value, max_size=3
)
properties_strategy = st.fixed_dictionaries(
    {},
    optional={
        "content_type": st.sampled_from(
            ["application/json", "text/plain; charset=utf-8", "application/octet-stream", ""]
        ),
        "content_encoding": st.sampled_from(["utf-8", "gzip", ""]),
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(0, 9),
        "expiration": st.integers(1_000, 10**7).map(lambda ms: ms / 1000),
        "correlation_id": st.text(max_size=20),
        "type": st.text(max_size=20),
        "app_id": st.text(max_size=20),
    },
)


def encodable(headers: dict[str, Any], properties: dict[str, Any]) -> bool:
    """Whether an AMQP client can send it at all (pamqp encodes what aio-pika publishes)."""
    try:
        aio_pika.Message(b"{}", headers=headers, **properties).properties.marshal()
    except Exception:
        return False
    return True


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(headers_strategy, foreign_strategy, properties_strategy, st.booleans()),
        min_size=1,
        max_size=5,
    )
)
async def test_no_header_or_property_stalls_the_queue(
    drafts: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], bool]],
) -> None:
    """Any value of any AMQP type in any header, ours or foreign, and any property shape: each
    request is recalled or dead-lettered with a stated reason, and the next one is served. Some
    are released once (their handling raises) so that a copy of each must be published too."""
    messages = [(h, f, p, r) for h, f, p, r in drafts if encodable(h, p)]
    assume(messages)
    broker = AmqpDouble()
    broker.declare(Q, TOPOLOGY.queue_arguments())
    broker.declare(DLQ, TOPOLOGY.dead_letter_arguments())
    broker.declare(RESULTS, TOPOLOGY.results_arguments())
    sandbox = Sandbox(SandboxConfig(min_interval=0.01))
    ids, raising = [], []
    for headers, foreign, properties, raises in messages:
        task_id = sandbox.create_task()
        raising += [task_id] if raises else []
        ids.append(
            broker.put(Q, body(task_id), headers=headers, foreign_headers=foreign, **properties)
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verdict_module, "parse_request", raising_once(raising))
        await _drain_all(broker, sandbox, ids)


def raising_once(task_ids: list[str]) -> Callable[[bytes, int], Any]:
    """A parse that raises the first time it sees each of `task_ids`."""
    left = set(task_ids)

    def parse(raw: bytes, max_bytes: int) -> Any:
        for task_id in list(left):
            if task_id.encode() in raw:
                left.discard(task_id)
                raise RuntimeError("a bug for this body")
        return parse_request(raw, max_bytes)

    return parse


async def _drain_all(broker: AmqpDouble, sandbox: Sandbox, ids: list[str]) -> None:
    async with running(broker, sandbox, interval_s=0.01) as run:
        await until(lambda: drained(broker) and len(events(broker)) >= len(ids), "every request")
        told = events(broker)
        assert sorted(e.message_id or "" for e in told) == sorted(ids)  # one event each
        for event in told:
            assert event.outcome == "recalled" or event.error_info, event
        assert not run.worker.halted
    assert broker.held(Q) == []


async def test_a_settle_step_that_keeps_failing_is_told_before_the_delivery_limit(
    sandbox: Sandbox,
) -> None:
    # The results stream refuses every event for a while (no leader): each try is given back,
    # which the broker counts; one return from the limit the settlement is never given back,
    # so the request is told once the stream takes events again, never dropped unseen.
    limit = 4
    topology = Topology(Q, DLQ, RESULTS, delivery_limit=limit)
    broker = AmqpDouble()
    broker.declare(Q, topology.queue_arguments())
    broker.declare(DLQ, topology.dead_letter_arguments())
    broker.declare(RESULTS, topology.results_arguments())
    refusals = 2 * (limit - 1) + 5  # every try until the last chance, and some of that too
    broker.fail_next("publish", RESULTS, *[Fault.NACK] * refusals, where=is_event)
    task_id = sandbox.create_task()
    message_id = broker.put(Q, body(task_id))
    async with running(broker, sandbox, delivery_limit=limit) as run:
        await run.wait_settled(1, timeout=20)
        await until(lambda: drained(broker), "the queue to drain")
    assert [c.code for c in sandbox.revoke_calls()] == [0]  # the journal kept the answer
    assert [(e.message_id, e.outcome) for e in events(broker)] == [(message_id, "recalled")]
    returns = broker.ops(Q).count(("reject", Q))
    assert returns == limit - 1  # given back until x-delivery-count reached limit - 1, no more


async def test_a_call_answered_while_the_broker_is_down_is_not_asked_again(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # The broker restarts while a call is on its way: the answer comes with no connection to
    # settle on. The journal keeps it; the redelivery after the reconnect only tells and acks.
    task_id = sandbox.create_task()
    sandbox.set_latency(0.3)
    message_id = broker.put(Q, body(task_id))
    async with running(broker, sandbox) as run:
        await until(lambda: len(sandbox.revoke_calls()) == 1, "the call to arrive")
        broker.down = True
        broker.cut()
        await asyncio.sleep(0.5)  # the answer arrives meanwhile: nothing to settle it on
        broker.down = False
        await run.wait_settled(1, timeout=10)
        await until(lambda: drained(broker), "the queue to drain")
    assert [c.code for c in sandbox.revoke_calls()] == [0]
    assert [(e.message_id, e.outcome) for e in events(broker)] == [(message_id, "recalled")]
    assert broker.held(DLQ) == []


# ---- where a takeover places its first call ---------------------------------------------------


@pytest.mark.parametrize(
    ("told_s_ago", "next_slot_in_s", "redelivered", "wait_s"),
    [
        (None, None, False, (0.0, 0.3)),  # an idle app: called for at once
        (10.0, None, False, (0.0, 0.3)),  # its last settle long ago
        (0.1, None, False, (0.55, 0.9)),  # told just now: one interval (and margin) after it
        (None, None, True, (0.6, 0.9)),  # the replica before us held it, may have just called
        # ... and told its next slot, still a second away: it had not called; after the told one
        (0.5, 1.0, True, (0.15, 0.55)),
        # ... its next slot was already past: it may have called just now
        (0.8, -0.2, True, (0.6, 0.9)),
    ],
    ids=[
        "idle",
        "settled-long-ago",
        "settled-just-now",
        "redelivered",
        "redelivered-before-its-next-slot",
        "redelivered-after-its-next-slot",
    ],
)
async def test_a_takeover_places_its_first_call_after_the_last_one_that_may_have_been_made(
    broker: AmqpDouble,
    sandbox: Sandbox,
    told_s_ago: float | None,
    next_slot_in_s: float | None,
    redelivered: bool,
    wait_s: tuple[float, float],
) -> None:
    interval = 0.6
    sandbox.config = replace(sandbox.config, min_interval=interval)
    if told_s_ago is not None:
        other = crashed_recall(sandbox.create_task(), "m-other", "other#0")
        at = datetime.fromtimestamp(time.time() - told_s_ago, UTC)
        slot = None if next_slot_in_s is None else time.time() + next_slot_in_s
        told = other.model_copy(update={"settled_at": at})
        broker.put(RESULTS, result_message(told, "another-replica", slot))
    broker.put(Q, body(sandbox.create_task()))
    if redelivered:
        await hand_back(broker)
    started = time.monotonic()
    async with running(broker, sandbox, interval_s=interval) as run:
        await run.wait_settled(1)
    (call,) = sandbox.revoke_calls()
    low, high = wait_s
    assert low - 0.05 <= call.arrived - started < high


async def test_a_call_no_event_tells_is_recorded_for_the_next_replica(
    broker: AmqpDouble, sandbox: Sandbox
) -> None:
    # A replica spends its retry budget on 91000s and re-publishes the request: its last call
    # counted against the limit and no results event tells it. The call's time goes to the
    # results stream first; the replica that takes over calls one interval after it.
    interval = 0.5
    sandbox.config = replace(sandbox.config, min_interval=interval)
    task_id = sandbox.create_task()
    sandbox.fail_next(2, task_id=task_id, code=91000)
    broker.put(Q, body(task_id))
    async with running(broker, sandbox, interval_s=interval, retry_budget_s=0.3) as first:
        await until(lambda: broker.ops(Q).count(("publish", Q)) == 2, "the re-publish")
        first.worker.stop()
    records = [h for h in broker.held(RESULTS) if h.message_type == "tim-recall.lane"]
    assert [json.loads(h.body)["state"] for h in records] == ["active", "called"]
    async with running(broker, sandbox, interval_s=interval) as second:
        await second.wait_settled(1)
    calls = sandbox.revoke_calls()
    assert [c.code for c in calls] == [91000, 91000, 0]
    assert calls[2].arrived - calls[1].arrived >= interval  # as the server saw them
