"""consumer/core/envelope.py and the settle journal: what a delivery says of its chain, no
broker."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aio_pika.message import IncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from consumer.core.envelope import (
    Envelope,
    dead_letter_message,
    minimal_envelope,
    published_at,
    read_envelope,
    republish_message,
)
from consumer.core.settle import Journal
from schemas.events import (
    H_ATTEMPTS,
    H_DEAD_LETTER_ID,
    H_ERROR_CODE,
    H_EXPIRES_AT,
    H_HALTS,
    H_LINEAGE,
    H_MAY_HAVE_REACHED,
    H_RELEASES,
)

NOW = 1_780_000_000.0


def delivery(
    body: bytes = b'{"TaskId":"t"}',
    *,
    headers: dict[str, Any] | None = None,
    redelivered: bool = False,
    timestamp: datetime | None = None,
    message_id: str | None = "m-1",
    expiration: str | None = None,
) -> IncomingMessage:
    """A delivery as aio-pika builds it from the wire frames (no channel needed to read it)."""
    props = commands.Basic.Properties(
        headers=headers or {}, message_id=message_id, timestamp=timestamp, expiration=expiration
    )
    header = ContentHeader(body_size=len(body), properties=props)
    deliver = commands.Basic.Deliver(
        consumer_tag="c", delivery_tag=1, redelivered=redelivered, routing_key="q"
    )
    raw = DeliveredMessage(delivery=deliver, header=header, body=body, channel=None)  # type: ignore[arg-type]
    return IncomingMessage(raw, no_ack=False)


def test_a_message_has_a_stable_generation_and_no_lineage_of_its_own() -> None:
    first = read_envelope(delivery(), NOW)
    again = read_envelope(delivery(redelivered=True), NOW)
    other = read_envelope(delivery(b'{"TaskId":"u"}'), NOW)
    assert first.lineage is None
    assert not first.is_copy
    assert first.generation == again.generation  # the same message, redelivered
    assert first.generation != other.generation
    assert again.redelivered
    assert not again.may_have_reached  # the worker decides that, knowing its own deliveries


def test_the_broker_counters_are_not_part_of_the_generation() -> None:
    plain = read_envelope(delivery(headers={"a": 1}), NOW)
    counted = read_envelope(
        delivery(headers={"a": 1, "x-delivery-count": 3, "x-acquired-count": 4}, redelivered=True),
        NOW,
    )
    assert plain.generation == counted.generation
    assert counted.delivery_count == 3


@pytest.mark.parametrize(
    "change",
    [
        {"body": b'{"TaskId":"t" }'},
        {"headers": {"a": 2}},
        {"headers": {"a": 1, "b": None}},
        {"headers": {"a": "1"}},  # text is not the number
        {"headers": {"a": 1.0}},  # nor is a float
        {"message_id": "m-2"},
        {"message_id": None},
        {"timestamp": datetime.fromtimestamp(NOW, UTC)},
    ],
)
def test_any_change_of_bytes_is_another_generation(change: dict[str, Any]) -> None:
    base: dict[str, Any] = {"body": b'{"TaskId":"t"}', "headers": {"a": 1}}
    assert (
        read_envelope(delivery(**base), NOW).generation
        != read_envelope(delivery(**{**base, **change}), NOW).generation
    )


def test_every_copy_is_a_generation_of_its_own() -> None:
    message = delivery(headers={H_LINEAGE: "L#0"})
    envelope = read_envelope(message, NOW)
    assert envelope.is_copy
    copies = [
        envelope,
        replace(envelope, releases=1),
        replace(envelope, failures=1),
        replace(envelope, halts=1, halted_at=NOW),
        replace(envelope, may_have_reached=True),
    ]
    generations = {
        read_envelope(
            delivery(headers=republish_message(message, c, attempts=0, now=NOW).headers), NOW
        ).generation
        for c in copies
    }
    assert len(generations) == len(copies)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (0, 0, 0, False, None)),
        (
            {H_LINEAGE: "L#0", H_ATTEMPTS: 2, H_RELEASES: 1, H_HALTS: 1, H_MAY_HAVE_REACHED: True},
            (2, 1, 1, True, "L#0"),
        ),
        # The chain's headers count only on a copy of ours (it carries its lineage).
        (
            {H_ATTEMPTS: 2, H_RELEASES: 1, H_HALTS: 1, H_MAY_HAVE_REACHED: True},
            (2, 0, 0, False, None),
        ),
        ({H_LINEAGE: "L", H_ATTEMPTS: "x", H_RELEASES: -3, H_HALTS: True}, (0, 0, 0, False, "L")),
        ({H_LINEAGE: b"L-bytes"}, (0, 0, 0, False, "L-bytes")),
        ({H_LINEAGE: "x" * 500}, (0, 0, 0, False, None)),  # not ours: a fresh chain
        ({H_LINEAGE: ["not", "a", "string"]}, (0, 0, 0, False, None)),
        # A dead letter, ours or the broker's, is never a copy, whatever it still carries.
        ({H_LINEAGE: "L", H_ERROR_CODE: 90053, H_RELEASES: 2}, (0, 0, 0, False, None)),
        ({H_LINEAGE: "L", "x-death": [{"reason": "expired"}]}, (0, 0, 0, False, None)),
        ({H_LINEAGE: "L", H_ATTEMPTS: 1.9, H_HALTS: Decimal("2")}, (1, 0, 2, False, "L")),
        ({H_LINEAGE: "L", H_ATTEMPTS: float("nan"), H_HALTS: 10**30}, (0, 0, 10**30, False, "L")),
    ],
)
def test_headers_are_read_defensively(headers: dict[str, Any], expected: tuple[Any, ...]) -> None:
    e = read_envelope(delivery(headers=headers), NOW)
    assert (e.attempts, e.releases, e.halts, e.may_have_reached, e.lineage) == expected


def test_a_minimal_envelope_never_raises_and_assumes_a_redelivery_called() -> None:
    e = minimal_envelope(delivery(redelivered=True), NOW)
    assert e.may_have_reached
    assert e.lineage is None
    assert not minimal_envelope(delivery(), NOW).may_have_reached


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
    copy = republish_message(message, envelope, attempts=5, now=NOW)
    headers = copy.headers or {}
    assert headers[H_LINEAGE] == "L"
    assert (headers[H_ATTEMPTS], headers[H_RELEASES], headers[H_HALTS]) == (5, 2, 1)
    assert headers[H_MAY_HAVE_REACHED] is True
    assert "x-delivery-count" not in headers
    assert "x-acquired-count" not in headers
    assert headers["custom"] == "kept"
    assert copy.body == message.body
    assert copy.expiration is None  # the producer set none


@pytest.mark.parametrize(("ttl_s", "age_s", "left_s"), [(600, 100, 500), (600, 599.5, 0.5)])
def test_a_copy_keeps_what_is_left_of_the_producers_expiration(
    ttl_s: float, age_s: float, left_s: float
) -> None:
    sent = datetime.fromtimestamp(NOW - age_s, UTC)
    message = delivery(timestamp=sent, expiration=str(int(ttl_s * 1000)))
    envelope = replace(read_envelope(message, NOW), lineage="L#0")
    assert envelope.expires_at == pytest.approx(NOW - age_s + ttl_s, abs=1)
    copy = republish_message(message, envelope, attempts=0, now=NOW)
    assert float(copy.expiration or 0) == pytest.approx(left_s, abs=1)
    assert (copy.headers or {})[H_EXPIRES_AT] == round((envelope.expires_at or 0) * 1000)
    # The copy's own expiration is counted from its arrival: what it carries is not reset.
    again = read_envelope(delivery(headers=copy.headers, expiration="1000"), NOW + 1)
    assert again.expires_at == pytest.approx(envelope.expires_at, abs=0.001)


def test_a_dead_letter_carries_no_chain_and_is_unique() -> None:
    message = delivery(headers={H_LINEAGE: "L#0", H_RELEASES: 1, "custom": 1})
    letters = [
        dead_letter_message(
            message, code=90049, info="x", source="api", attempts=1, first_seen=NOW, now=NOW
        )
        for _ in range(2)
    ]
    for letter in letters:
        headers = letter.headers or {}
        assert H_LINEAGE not in headers
        assert H_RELEASES not in headers
        assert headers["custom"] == 1
        assert letter.expiration is None
    ids = {(letter.headers or {})[H_DEAD_LETTER_ID] for letter in letters}
    assert len(ids) == 2


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
