"""consumer/core/settle.py against the in-memory broker (tests/support/amqp_double.py): what the
broker holds after each settlement, and in which order it was done. The same cases the
integration tier runs against RabbitMQ (tests/integration/test_worker_paths.py,
test_settle_resume.py, test_reply_and_trace.py), here for the Settler alone."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from structlog import get_logger
from structlog.testing import capture_logs

import consumer.core.settle as settle_module
from consumer.core.envelope import Envelope, read_envelope
from consumer.core.policy import Outcome
from consumer.core.settle import Progress, Settled, Settler, Step, Verdict
from consumer.core.stream import RESULT_TYPE
from consumer.core.topology import Topology, declare
from schemas.events import (
    H_ATTEMPTS,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_LINEAGE,
    H_RELEASES,
    ResultEvent,
)
from tests.support.amqp_double import DELIVERY_COUNT, AmqpDouble, Fault

NOW = 1_780_000_000.0
TASK = "6a0b7c80_5f5e1000_200000cd7ee17f5_84035729_bc614e"
TOPOLOGY = Topology("recall", "recall.dead", "recall.results")
Q, DLQ, RESULTS = TOPOLOGY.queue, TOPOLOGY.dead_letter_queue, TOPOLOGY.results_stream
REPLIES = "caller.replies"
LOG = get_logger()


@pytest.fixture(autouse=True)
def short_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tries a step and a short hang: the retry path in a fraction of a second."""
    monkeypatch.setattr(settle_module, "STEP_TRIES", 2)
    monkeypatch.setattr(settle_module, "STEP_TIMEOUT_S", 0.1)


@dataclass
class Setup:
    """The broker, one connection's Settler, and what it told."""

    broker: AmqpDouble
    connection: AbstractConnection
    settler: Settler
    told: list[ResultEvent] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)


async def settler_on(broker: AmqpDouble) -> Setup:
    """A Settler on a new connection, as the worker makes one (topology declared first)."""
    connection = await broker.connect()
    await declare(connection, TOPOLOGY)
    publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
    told: list[ResultEvent] = []
    replies: list[str] = []
    settler = Settler(
        connection, publisher, TOPOLOGY, lambda: NOW, on_told=told.append, on_reply=replies.append
    )
    return Setup(broker, connection, settler, told, replies)


async def take(connection: AbstractConnection) -> AbstractIncomingMessage:
    """The next delivery of the recall queue, held unacked (prefetch 1, then the consumer goes)."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1)
    queue = await channel.declare_queue(Q, durable=True, arguments=TOPOLOGY.queue_arguments())
    got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    tag = await queue.consume(got.put)
    message = await asyncio.wait_for(got.get(), 1.0)
    await queue.cancel(tag)
    return message


def request(broker: AmqpDouble, *, lineage: str | None = "chain-1", **properties: Any) -> str:
    """A recall request in the queue; its message_id."""
    headers = dict(properties.pop("headers", {}))
    if lineage is not None:
        headers[H_LINEAGE] = lineage
    body = properties.pop("body", json.dumps({"TaskId": TASK}).encode())
    return broker.put(Q, body, headers=headers, **properties)


def verdict(outcome: Outcome, code: int | None = 0, **fields: Any) -> Verdict:
    """A verdict as the worker reaches one (an API answer unless `source` says otherwise)."""
    values: dict[str, Any] = {
        "outcome": outcome,
        "code": code,
        "info": "" if code in (0, None) else "no such task",
        "source": "api",
        "attempts": 1,
        "reason": outcome.value,
        "may_have_reached": outcome is Outcome.RECALLED,
        "task_id": TASK,
    }
    values.update(fields)
    return Verdict(**values)


def envelope_of(message: AbstractIncomingMessage, **changes: Any) -> Envelope:
    return replace(read_envelope(message, NOW), **changes)


def events(broker: AmqpDouble, queue: str = RESULTS) -> list[ResultEvent]:
    """The results events `queue` holds (a stream also holds readers' markers)."""
    return [
        ResultEvent.model_validate_json(held.body)
        for held in broker.held(queue)
        if held.message_type == RESULT_TYPE
    ]


async def test_recalled_is_told_then_acked() -> None:
    # tests/integration/test_worker_paths.py::test_recall_is_acked_told_and_sent_once
    broker = AmqpDouble()
    setup = await settler_on(broker)
    message_id = request(broker, correlation_id="cms-42")
    message = await take(setup.connection)

    settled = await setup.settler.settle(
        message, envelope_of(message), verdict(Outcome.RECALLED), LOG
    )

    assert settled.done
    (event,) = events(broker)
    assert (event.message_id, event.outcome, event.correlation_id) == (
        message_id,
        "recalled",
        "cms-42",
    )
    assert settled.event == event
    assert setup.told == [event]
    assert broker.ops(Q, RESULTS, DLQ)[1:] == [("publish", RESULTS), ("ack", Q)]
    assert broker.held(Q) == []
    assert broker.unacked(Q) == []
    assert broker.held(DLQ) == []


async def test_dead_letter_is_confirmed_before_the_event_and_the_ack() -> None:
    # tests/integration/test_worker_paths.py::test_permanent_codes_are_dead_lettered_with_body_...
    broker = AmqpDouble()
    setup = await settler_on(broker)
    raw = json.dumps({"TaskId": TASK}, indent=1).encode()  # odd spacing, kept byte for byte
    message_id = request(
        broker,
        body=raw,
        correlation_id="c-1",
        app_id="cms",
        type="recall",
        headers={"upstream": "cms"},
    )
    message = await take(setup.connection)

    settled = await setup.settler.settle(
        message, envelope_of(message), verdict(Outcome.DEAD_LETTER, 90049), LOG
    )

    assert settled.done
    assert broker.ops(Q, RESULTS, DLQ)[1:] == [
        ("publish", DLQ),
        ("publish", RESULTS),
        ("ack", Q),
    ]
    (letter,) = broker.held(DLQ)
    assert letter.body == raw
    props = letter.properties
    assert (props.message_id, props.correlation_id, props.app_id, props.message_type) == (
        message_id,
        "c-1",
        "cms",
        "recall",
    )
    headers = letter.headers
    assert headers["upstream"] == "cms"
    assert (headers[H_ERROR_CODE], headers[H_ERROR_SOURCE], headers[H_ATTEMPTS]) == (
        90049,
        "api",
        1,
    )
    assert headers[H_ERROR_INFO] == "no such task"
    assert [(e.outcome, e.error_code) for e in events(broker)] == [("dead_lettered", 90049)]
    assert broker.held(Q) == []
    assert broker.unacked(Q) == []


@pytest.mark.parametrize(
    ("outcome", "changes"),
    [
        (Outcome.RELEASED, {"releases": 1}),  # handed back with no call (shutdown, halt)
        (Outcome.RETRY, {}),  # the retry budget spent: to the tail with its attempts
    ],
    ids=["release", "republish"],
)
async def test_a_copy_goes_to_the_tail_before_the_ack(
    outcome: Outcome, changes: dict[str, Any]
) -> None:
    # tests/integration/test_worker_lifecycle.py::test_sigterm_while_waiting_for_a_slot_... (a
    # copy, not a nack: redelivered False, no x-delivery-count) and test_worker_retries.py::
    # test_spent_budget_republishes_and_never_dead_letters (the attempts travel with the copy)
    broker = AmqpDouble()
    setup = await settler_on(broker)
    request(broker, lineage="chain-1")
    first = await take(setup.connection)
    await setup.connection.close()  # handed back once: the broker now counts its deliveries
    setup = await settler_on(broker)
    message = await take(setup.connection)
    assert message.redelivered
    assert (message.headers or {})[DELIVERY_COUNT] == 1
    assert first.message_id == message.message_id

    settled = await setup.settler.settle(
        message, envelope_of(message, **changes), verdict(outcome, None, attempts=3), LOG
    )

    assert settled == Settled(done=True, event=None)
    assert broker.ops(Q, RESULTS, DLQ)[-2:] == [("publish", Q), ("ack", Q)]
    (copy,) = broker.held(Q)
    assert copy.body == message.body
    assert not copy.redelivered
    assert DELIVERY_COUNT not in copy.headers
    assert copy.headers[H_ATTEMPTS] == 3
    assert copy.headers[H_LINEAGE] == changes.get("lineage", "chain-1")
    assert copy.headers[H_RELEASES] == changes.get("releases", 0)
    assert events(broker) == []
    assert broker.held(DLQ) == []


@pytest.mark.parametrize(
    "faults",
    [
        # A nack fails the try (only a returned publish redeclares the topology): the next
        # try is confirmed.
        (Fault.NACK,),
        (Fault.HANG,),  # no confirm at all: the step times out and is tried again
    ],
    ids=["nacked", "unconfirmed"],
)
async def test_a_failed_publish_is_retried_and_nothing_is_acked_before_it_confirms(
    faults: tuple[Fault, ...],
) -> None:
    # The settle step retry on a live channel (tests/faults/test_partition.py stalls a real
    # link; the integration tier has no nacking broker).
    broker = AmqpDouble()
    setup = await settler_on(broker)
    request(broker)
    message = await take(setup.connection)
    broker.fail_next("publish", DLQ, *faults)

    settled = await setup.settler.settle(
        message, envelope_of(message), verdict(Outcome.DEAD_LETTER, 90049), LOG
    )

    assert settled.done
    assert len(broker.held(DLQ)) == 1  # nacked and unconfirmed publishes stored nothing
    assert broker.ops(Q, RESULTS, DLQ)[1:] == [
        ("publish", DLQ),
        ("publish", RESULTS),
        ("ack", Q),
    ]


async def test_a_dead_letter_queue_deleted_underneath_is_declared_again() -> None:
    # settle._publish: an unroutable publish (PublishError) declares the topology, then retries.
    broker = AmqpDouble()
    setup = await settler_on(broker)
    request(broker)
    message = await take(setup.connection)
    broker.delete_queue(DLQ)

    settled = await setup.settler.settle(
        message, envelope_of(message), verdict(Outcome.DEAD_LETTER, 90049), LOG
    )

    assert settled.done
    assert len(broker.held(DLQ)) == 1
    assert broker.ops(Q)[-1] == ("ack", Q)


@pytest.mark.parametrize(
    ("cut", "outcome", "done_before"),
    [
        ("dead_letter_confirmed", Outcome.DEAD_LETTER, {Step.DEAD_LETTER}),
        ("result_event_confirmed", Outcome.RECALLED, {Step.RESULT_EVENT}),
        ("ack_lost", Outcome.RECALLED, {Step.RESULT_EVENT, Step.ACK}),
    ],
    ids=["dead-letter-confirmed", "result-event-confirmed", "ack-lost"],
)
async def test_a_lost_connection_mid_settlement_is_resumed_from_the_progress(
    cut: str, outcome: Outcome, done_before: set[Step]
) -> None:
    # tests/integration/test_settle_resume.py: the cut after a confirmed step; the redelivery
    # goes on from the progress (the worker's journal), so nothing is published twice.
    broker = AmqpDouble()
    setup = await settler_on(broker)
    message_id = request(broker)
    message = await take(setup.connection)
    if cut == "dead_letter_confirmed":
        broker.fail_next("publish", DLQ, Fault.CUT_AFTER)
    elif cut == "result_event_confirmed":
        broker.fail_next("publish", RESULTS, Fault.CUT_AFTER)
    else:  # the ack is written to a link that is already dead: no error, and it never arrives
        broker.fail_next("ack", Q, Fault.CUT_BEFORE)
    progress = Progress()
    code = 90049 if outcome is Outcome.DEAD_LETTER else 0

    with capture_logs() as logs:
        first = await setup.settler.settle(
            message, envelope_of(message), verdict(outcome, code), LOG, progress
        )

    assert progress.done == done_before
    # A delivery whose channel is gone is given up at once, not retried (the redelivery waits).
    assert "settle_step_retry" not in [e["event"] for e in logs]
    assert first.done is (cut == "ack_lost")  # a lost ack is not known to be lost
    assert broker.ops(Q)[-1] == ("return", Q)  # back in the queue, unacked
    (back,) = broker.held(Q)
    assert back.redelivered

    # The redelivery, on the next connection, as the worker resumes it from its journal.
    progress.done.discard(Step.ACK)
    again = await settler_on(broker)
    redelivered = await take(again.connection)
    assert redelivered.redelivered
    second = await again.settler.settle(
        redelivered, envelope_of(redelivered), verdict(outcome, code), LOG, progress
    )

    assert second.done
    assert len(broker.held(DLQ)) == (1 if outcome is Outcome.DEAD_LETTER else 0)
    assert [e.message_id for e in events(broker)] == [message_id]
    assert len(setup.told + again.told) == 1  # told once, by whichever got that far
    assert broker.held(Q) == []
    assert broker.unacked(Q) == []
    assert broker.ops(Q)[-1] == ("ack", Q)


async def test_a_told_chain_redelivered_is_only_acked_without_a_second_reply() -> None:
    # tests/integration/test_reply_and_trace.py::test_a_redelivery_that_is_only_acked_does_not_...
    broker = AmqpDouble()
    broker.declare(REPLIES)
    setup = await settler_on(broker)
    request(broker, reply_to=REPLIES)
    message = await take(setup.connection)
    envelope = envelope_of(message)
    assert envelope.reply_to == REPLIES
    before = list(broker.history)

    settled = await setup.settler.settle(
        message, envelope, verdict(Outcome.ALREADY_SETTLED, None, source="local"), LOG
    )

    assert settled == Settled(done=True, event=None)
    assert [(e.op, e.queue) for e in broker.history[len(before) :]] == [("ack", Q)]
    assert broker.held(REPLIES) == []
    assert events(broker) == []
    assert setup.replies == []


async def test_the_reply_follows_the_event_and_precedes_the_ack() -> None:
    # tests/integration/test_reply_and_trace.py::test_reply_to_gets_the_results_event_with_...
    broker = AmqpDouble()
    broker.declare(REPLIES)
    setup = await settler_on(broker)
    request(broker, reply_to=REPLIES, correlation_id="cms-7")
    message = await take(setup.connection)

    settled = await setup.settler.settle(
        message, envelope_of(message), verdict(Outcome.RECALLED), LOG
    )

    assert settled.done
    assert broker.ops(Q, RESULTS, REPLIES)[1:] == [
        ("publish", RESULTS),
        ("publish", REPLIES),
        ("ack", Q),
    ]
    (reply,) = broker.held(REPLIES)
    assert ResultEvent.model_validate_json(reply.body) == events(broker)[0]
    assert reply.properties.correlation_id == "cms-7"
    assert setup.replies == ["sent"]


async def test_a_reply_nobody_can_receive_changes_nothing() -> None:
    # tests/integration/test_reply_and_trace.py::test_a_reply_nobody_can_receive_changes_nothing
    broker = AmqpDouble()
    setup = await settler_on(broker)
    request(broker, reply_to="caller.gone")
    message = await take(setup.connection)

    settled = await setup.settler.settle(
        message, envelope_of(message), verdict(Outcome.RECALLED), LOG
    )

    assert settled.done
    assert setup.replies == ["unroutable"]
    assert len(events(broker)) == 1
    assert broker.ops(Q)[-1] == ("ack", Q)


async def test_give_back_is_the_last_resort_on_a_live_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No integration test reaches it (RabbitMQ would have to nack every try): every try of the
    # dead letter fails, so the delivery is rejected back to the queue, never acked, never held.
    monkeypatch.setattr(settle_module, "STEP_TRIES", 1)
    broker = AmqpDouble()
    setup = await settler_on(broker)
    request(broker)
    message = await take(setup.connection)
    broker.fail_next("publish", DLQ, *[Fault.NACK] * 2 * settle_module.STEP_TRIES)

    settled = await setup.settler.settle(
        message, envelope_of(message), verdict(Outcome.DEAD_LETTER, 90049), LOG
    )

    assert not settled.done
    assert broker.ops(Q)[-1] == ("reject", Q)
    assert ("ack", Q) not in broker.ops(Q)
    assert broker.held(DLQ) == []
    assert events(broker) == []
    (back,) = broker.held(Q)
    assert back.redelivered
    again = await take(setup.connection)  # it counts toward the queue's delivery limit
    assert (again.headers or {})[DELIVERY_COUNT] == 1
