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
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import consumer.core.settle as settle_module
from consumer.core.client import RevokeClient
from consumer.core.memory import RecallMemory
from consumer.core.metrics import Metrics
from consumer.core.pacing import Pacer
from consumer.core.settings import load_settings
from consumer.core.stream import RESULT_TYPE, result_message
from consumer.core.topology import Topology
from consumer.core.usersig import UserSigCache
from consumer.core.worker import Worker
from consumer.ops.app import worker_config
from consumer.sandbox import Sandbox, SandboxConfig
from schemas.events import (
    H_ATTEMPTS,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_LINEAGE,
    ResultEvent,
)
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

    async def wait_settled(self, count: int) -> None:
        await until(lambda: len(self.settled) >= count, f"{count} settled requests")


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
        worker = Worker(
            worker_config(settings),
            RevokeClient(http, settings.api_base_url, sdkappid, settings.identifier, usersigs),
            Pacer(settings.interval_s),
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


def stamped(held: Held) -> bool:
    return H_LINEAGE in held.headers


def republished(held: Held) -> bool:
    return int(held.headers.get(H_ATTEMPTS, 0)) > 0


def is_event(held: Held) -> bool:
    return held.message_type == RESULT_TYPE


def drained(broker: AmqpDouble) -> bool:
    return not broker.held(Q) and not broker.unacked(Q)


# ---- the paths (tests/integration/test_worker_paths.py) ------------------------------------------


async def test_recall_is_stamped_then_told_then_acked_with_one_call(
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
        ("publish", Q),  # the request
        ("publish", Q),  # its stamped copy at the tail ...
        ("ack", Q),  # ... confirmed before the original is acked
        ("publish", RESULTS),  # the event confirmed ...
        ("ack", Q),  # ... before the copy is acked
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
        ("publish", Q),
        ("ack", Q),
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
    assert trail(broker, message_id)[3:] == [("publish", DLQ), ("publish", RESULTS), ("ack", Q)]
    assert len(broker.held(DLQ)) == 1


# ---- a lost connection mid-settlement (tests/integration/test_settle_resume.py) -----------------


@pytest.mark.parametrize(
    ("fault", "op", "queue", "where"),
    [
        (Fault.CUT_AFTER, "publish", Q, stamped),
        (Fault.CUT_AFTER, "publish", RESULTS, is_event),
        (Fault.CUT_BEFORE, "ack", Q, stamped),  # the ack never arrived: redelivered
        (Fault.CUT_AFTER, "ack", Q, stamped),  # the ack arrived, then the link died
    ],
    ids=["stamp-copy-confirmed", "result-event-confirmed", "ack-lost", "ack-arrived"],
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
    assert len(broker.connections) == 2  # the cut happened, and the worker came back
    assert [c.code for c in sandbox.revoke_calls()] == [0]
    assert [(e.message_id, e.outcome) for e in events(broker)] == [(message_id, "recalled")]
    assert broker.ops(Q).count(("publish", Q)) == 2  # the request and one stamped copy
    assert broker.held(DLQ) == []
    assert run.settled[0] == events(broker)[0]  # told with the event the stream holds


async def test_a_lost_ack_is_told_once(broker: AmqpDouble, sandbox: Sandbox) -> None:
    broker.fail_next("ack", Q, Fault.CUT_BEFORE, where=stamped)
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
    # The request, its stamped copy, the released copy: each acked once its successor was held.
    assert trail(broker, message_id) == [
        ("publish", Q),
        ("publish", Q),
        ("ack", Q),
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
