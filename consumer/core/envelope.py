"""Our bookkeeping on a message: read from a delivery, written onto a dead letter or re-publish."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from consumer.core.prepare import plausible
from schemas.events import (
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_FAILURES,
    H_FIRST_SEEN,
    H_HALTS,
    H_LINEAGE,
    H_MAY_HAVE_REACHED,
    H_RELEASES,
    H_TRACEPARENT,
    RECALL_ERROR_HEADERS,
)

MAX_INFO_CHARS = 1000  # a header, not a log: keep dead letters small
# Headers the broker sets on a delivery; a copy we publish must not carry them (from 4.0 the
# broker ignores client-set x- headers, and 4.3 adds x-acquired-count).
BROKER_DELIVERY_HEADERS = ("x-delivery-count", "x-acquired-count")


@dataclass(frozen=True)
class Envelope:
    """What earlier deliveries of this request left in its headers."""

    attempts: int
    first_seen: float  # unix seconds
    # A call for this lineage was really sent (by an earlier delivery, before a re-publish).
    may_have_reached: bool
    message_id: str | None
    correlation_id: str | None
    lineage: str | None = None  # None: never seen by a worker; stamp it first
    redelivered: bool = False  # the broker says this very message was delivered before
    releases: int = 0  # handed back with no call (shutdown, halt)
    failures: int = 0  # handling raised unexpectedly
    halts: int = 0  # its call halted a worker
    published_at: float | None = None  # the AMQP timestamp, when plausible
    fingerprint: str = ""  # identifies an unstamped message between its redeliveries
    trace_id: str | None = None  # from a valid W3C `traceparent` header
    trace_problem: str | None = None  # why a `traceparent` that was there is ignored
    reply_to: str | None = None  # a valid queue name to send the results event to
    reply_problem: str | None = None  # why a `reply_to` that was there is ignored

    @property
    def generation(self) -> str:
        """This copy of the request: its lineage and what its headers counted so far (every
        copy we publish changes one count), or the message's fingerprint before a stamp."""
        if self.lineage is None:
            return f"unstamped:{self.fingerprint}"
        return f"{self.lineage}:{self.attempts}:{self.releases}:{self.failures}:{self.halts}"

    def with_call_sent(self) -> Envelope:
        """The same, knowing that a call for this lineage was sent."""
        return replace(self, may_have_reached=True)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, bytes | str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


def published_at(message: AbstractIncomingMessage, now: float) -> float | None:
    """The message's AMQP timestamp in unix seconds, if set and plausible."""
    stamp = message.timestamp
    if stamp is None:
        return None
    at = stamp.replace(tzinfo=stamp.tzinfo or UTC).timestamp()
    return at if plausible(at, now) else None


def fingerprint(message: AbstractIncomingMessage) -> str:
    """What identifies one unstamped message across its redeliveries (not a producer's copy)."""
    digest = hashlib.blake2b(message.body, digest_size=16)
    digest.update(f"|{message.message_id}|{message.timestamp}|{message.app_id}".encode())
    return digest.hexdigest()


def read_envelope(message: AbstractIncomingMessage, now: float) -> Envelope:
    """Read our headers. Whether a redelivery may have been called for is the worker's call:
    it knows its own deliveries; for another process's it assumes the worst."""
    headers: Mapping[str, Any] = message.headers or {}
    attempts = max(0, _int(headers.get(H_ATTEMPTS)) or 0)
    first_seen = _int(headers.get(H_FIRST_SEEN))
    reached = headers.get(H_MAY_HAVE_REACHED)
    return Envelope(
        attempts=attempts,
        first_seen=float(first_seen) if first_seen and 0 < first_seen <= now else now,
        may_have_reached=reached is True or reached == 1,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        lineage=_text(headers.get(H_LINEAGE)),
        redelivered=bool(message.redelivered),
        releases=max(0, _int(headers.get(H_RELEASES)) or 0),
        failures=max(0, _int(headers.get(H_FAILURES)) or 0),
        halts=max(0, _int(headers.get(H_HALTS)) or 0),
        published_at=published_at(message, now),
        fingerprint=fingerprint(message),
        **_trace(headers.get(H_TRACEPARENT)),
        **_reply_to(message.reply_to),
    )


_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _trace(value: Any) -> dict[str, str]:
    """The trace id of a W3C traceparent (version 00 or later), or why it is ignored."""
    if value is None:
        return {}
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    match = _TRACEPARENT.match(text.strip()) if isinstance(text, str) else None
    if match is None or match[1] == "ff" or set(match[2]) == {"0"} or set(match[3]) == {"0"}:
        return {"trace_problem": "traceparent is not a W3C trace context"}
    return {"trace_id": match[2]}


def _reply_to(value: str | None) -> dict[str, str]:
    """A reply_to usable as a queue name (1 to 255 bytes), or why it is ignored."""
    if not value:
        return {}
    if len(value.encode()) > 255 or any(ord(c) < 32 for c in value):
        return {"reply_problem": "reply_to is not a valid queue name"}
    return {"reply_to": value}


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """The delivered message, body and properties, to publish again with `headers`."""
    # The original body byte for byte with its properties. Not `expiration` (a TTL would expire
    # the dead letter) and not `user_id` (the broker checks it against our own login).
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


def _own_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    headers = dict(message.headers or {})
    for name in (*RECALL_ERROR_HEADERS, *BROKER_DELIVERY_HEADERS):
        headers.pop(name, None)
    return headers


def dead_letter_message(
    message: AbstractIncomingMessage,
    *,
    code: int,
    info: str,
    source: str,
    attempts: int,
    first_seen: float,
    now: float,
) -> aio_pika.Message:
    """The original request plus the headers that say why it is dead."""
    headers = _own_headers(message)
    headers.update(
        {
            H_ERROR_CODE: code,
            H_ERROR_INFO: info[:MAX_INFO_CHARS],
            H_ERROR_SOURCE: source,
            H_ATTEMPTS: attempts,
            H_FIRST_SEEN: int(first_seen),
            H_DEAD_LETTERED_AT: int(now),
        }
    )
    return copy_message(message, headers)


def republish_message(
    message: AbstractIncomingMessage, envelope: Envelope, *, attempts: int, **more: Any
) -> aio_pika.Message:
    """The original request to the queue's tail, carrying what this chain learned so far.

    Used for a stamp (first sight), a re-publish (retry budget spent) and a release (shutdown,
    halt, an error): the copy is a new broker message, so none of these counts toward the
    broker's delivery limit on any RabbitMQ version; our own headers count them instead.
    """
    headers = _own_headers(message)
    headers.update(
        {
            H_ATTEMPTS: attempts,
            H_FIRST_SEEN: int(envelope.first_seen),
            H_MAY_HAVE_REACHED: envelope.may_have_reached,
            H_RELEASES: envelope.releases,
            H_FAILURES: envelope.failures,
            H_HALTS: envelope.halts,
        }
    )
    if envelope.lineage is not None:
        headers[H_LINEAGE] = envelope.lineage
    headers.update(more)
    return copy_message(message, headers)
