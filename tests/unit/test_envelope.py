"""consumer/core/envelope.py and the settle journal: what a delivery says of its chain, no
broker."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika.message import IncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from consumer.core.envelope import Envelope, published_at, read_envelope, republish_message
from consumer.core.settle import Journal
from schemas.events import H_ATTEMPTS, H_HALTS, H_LINEAGE, H_MAY_HAVE_REACHED, H_RELEASES

NOW = 1_780_000_000.0


def delivery(
    body: bytes = b'{"TaskId":"t"}',
    *,
    headers: dict[str, Any] | None = None,
    redelivered: bool = False,
    timestamp: datetime | None = None,
    message_id: str | None = "m-1",
) -> IncomingMessage:
    """A delivery as aio-pika builds it from the wire frames (no channel needed to read it)."""
    props = commands.Basic.Properties(
        headers=headers or {}, message_id=message_id, timestamp=timestamp
    )
    header = ContentHeader(body_size=len(body), properties=props)
    deliver = commands.Basic.Deliver(
        consumer_tag="c", delivery_tag=1, redelivered=redelivered, routing_key="q"
    )
    raw = DeliveredMessage(delivery=deliver, header=header, body=body, channel=None)  # type: ignore[arg-type]
    return IncomingMessage(raw, no_ack=False)


def test_a_new_message_has_no_lineage_and_a_stable_fingerprint() -> None:
    first = read_envelope(delivery(), NOW)
    again = read_envelope(delivery(redelivered=True), NOW)
    other = read_envelope(delivery(b'{"TaskId":"u"}'), NOW)
    assert first.lineage is None
    assert first.generation == again.generation  # the same message, redelivered
    assert first.generation != other.generation
    assert again.redelivered
    assert not again.may_have_reached  # the worker decides that, knowing its own deliveries


def test_every_copy_is_a_generation_of_its_own() -> None:
    stamped = read_envelope(delivery(headers={H_LINEAGE: "L"}), NOW)
    copies = [
        stamped,
        replace(stamped, attempts=1),
        replace(stamped, releases=1),
        replace(stamped, failures=1),
        replace(stamped, halts=1),
    ]
    assert len({c.generation for c in copies}) == len(copies)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (0, 0, 0, False, None)),
        (
            {H_ATTEMPTS: 2, H_RELEASES: 1, H_HALTS: 1, H_MAY_HAVE_REACHED: True},
            (2, 1, 1, True, None),
        ),
        ({H_ATTEMPTS: "x", H_RELEASES: -3, H_HALTS: True}, (0, 0, 0, False, None)),
        ({H_LINEAGE: b"L-bytes"}, (0, 0, 0, False, "L-bytes")),
        ({H_LINEAGE: "x" * 500}, (0, 0, 0, False, None)),  # not ours: a fresh chain
        ({H_LINEAGE: ["not", "a", "string"]}, (0, 0, 0, False, None)),
    ],
)
def test_headers_are_read_defensively(headers: dict[str, Any], expected: tuple[Any, ...]) -> None:
    e = read_envelope(delivery(headers=headers), NOW)
    assert (e.attempts, e.releases, e.halts, e.may_have_reached, e.lineage) == expected


@pytest.mark.parametrize(
    ("offset", "plausible"),
    [(-3600, True), (-29 * 86400, True), (-31 * 86400, False), (200, True), (600, False)],
)
def test_amqp_timestamp_is_used_only_when_plausible(offset: float, plausible: bool) -> None:
    stamp = datetime.fromtimestamp(NOW + offset, UTC)
    at = published_at(delivery(timestamp=stamp), NOW)
    assert (at is not None) is plausible
    if plausible:
        assert at == pytest.approx(NOW + offset, abs=1)


def test_a_copy_carries_what_the_chain_learned_and_drops_broker_headers() -> None:
    message = delivery(headers={"x-delivery-count": 3, "x-acquired-count": 4, "custom": "kept"})
    envelope = replace(
        read_envelope(message, NOW), lineage="L", releases=2, halts=1, may_have_reached=True
    )
    copy = republish_message(message, envelope, attempts=5)
    headers = copy.headers or {}
    assert headers[H_LINEAGE] == "L"
    assert (headers[H_ATTEMPTS], headers[H_RELEASES], headers[H_HALTS]) == (5, 2, 1)
    assert headers[H_MAY_HAVE_REACHED] is True
    assert "x-delivery-count" not in headers
    assert "x-acquired-count" not in headers
    assert headers["custom"] == "kept"
    assert copy.body == message.body


def test_journal_is_bounded_and_forgets_acked_generations() -> None:
    journal = Journal(size=3)
    for key in "abcd":
        journal.open(key).called = True
    assert journal.peek("a") is None  # the oldest went first
    assert journal.peek("d") is not None
    journal.close("d")
    assert journal.peek("d") is None
    assert len(journal) == 2


def test_envelope_is_immutable_values() -> None:
    e = Envelope(
        attempts=0, first_seen=NOW, may_have_reached=False, message_id=None, correlation_id=None
    )
    assert e.with_call_sent().may_have_reached
    assert not e.may_have_reached


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # all-zero: invalid
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # version ff: invalid
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # must be lowercase
        ("garbage", None),
        (42, None),
    ],
)
def test_traceparent(traceparent: Any, trace_id: str | None) -> None:
    e = read_envelope(delivery(headers={"traceparent": traceparent}), NOW)
    assert e.trace_id == trace_id
    assert (e.trace_problem is None) is (trace_id is not None)
