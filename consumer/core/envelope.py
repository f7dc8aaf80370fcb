"""Our bookkeeping on a message: read from a delivery, written onto a dead letter or re-publish."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from consumer.core.identity import BROKER_DELIVERY_HEADERS, generation
from consumer.core.prepare import plausible
from schemas.events import (
    BROKER_DEATH_HEADERS,
    CHAIN_HEADERS,
    H_ATTEMPTS,
    H_DEAD_LETTER_ID,
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_EXPIRES_AT,
    H_FAILURES,
    H_FIRST_SEEN,
    H_HALTED_AT,
    H_HALTS,
    H_LINEAGE,
    H_MAY_HAVE_REACHED,
    H_RELEASES,
    H_SDKAPPID,
    H_TRACEPARENT,
    RECALL_ERROR_HEADERS,
)

MAX_INFO_CHARS = 1000  # a header, not a log: keep dead letters small
MAX_LINEAGE_CHARS = 200
DELIVERY_COUNT = "x-delivery-count"


@dataclass(frozen=True)
class Envelope:
    """What a delivery says of its request's chain; `lineage` is resolved by the worker."""

    attempts: int
    first_seen: float  # unix seconds
    # A call for this chain was really sent (by an earlier delivery, before a copy).
    may_have_reached: bool
    message_id: str | None
    correlation_id: str | None
    lineage: str | None = None  # the chain: carried by a copy of ours, else resolved later
    is_copy: bool = False  # a release or re-publish of ours (carries its chain's headers)
    redelivered: bool = False  # the broker says this very message was delivered before
    generation: str = ""  # this message's digest (consumer/core/identity.py): the journal key
    delivery_count: int = 0  # the broker's x-delivery-count: returns so far
    releases: int = 0  # handed back with no call (shutdown, halt)
    failures: int = 0  # handling raised unexpectedly
    halts: int = 0  # its call halted a worker
    halted_at: float | None = None  # unix seconds of its latest halt
    expires_at: float | None = None  # the producer's expiration, as unix seconds
    published_at: float | None = None  # the AMQP timestamp, when plausible
    trace_id: str | None = None  # from a valid W3C `traceparent` header
    trace_problem: str | None = None  # why a `traceparent` that was there is ignored
    reply_to: str | None = None  # a valid queue name to send the results event to
    reply_problem: str | None = None  # why a `reply_to` that was there is ignored

    def with_call_sent(self) -> Envelope:
        """The same, knowing that a call for this chain was sent."""
        return replace(self, may_have_reached=True)


def minimal_envelope(message: AbstractIncomingMessage, now: float) -> Envelope:
    """What is certain of any delivery, for when reading its headers failed: it may have been
    called for before if the broker says it was delivered before."""
    redelivered = bool(getattr(message, "redelivered", False))
    return Envelope(
        attempts=0,
        first_seen=now,
        may_have_reached=redelivered,
        message_id=_text(getattr(message, "message_id", None)),
        correlation_id=_text(getattr(message, "correlation_id", None)),
        redelivered=redelivered,
        generation=f"unreadable:{id(message)}",
    )


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return int(value) if value.is_finite() else None
    if isinstance(value, bytes | str) and len(value) <= 30:
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _seconds(value: Any) -> float | None:
    """A unix time in seconds from a header (int, float, decimal or text), if finite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        number = float(value)
    elif isinstance(value, bytes | str) and len(value) <= 30:
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def seconds_from_ms(value: Any) -> float | None:
    """Unix seconds from a header in unix milliseconds."""
    ms = _int(value)
    return None if ms is None else ms / 1000


def _ms(at: float) -> int:
    return round(at * 1000)


def _text(value: Any, limit: int = MAX_LINEAGE_CHARS) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def published_at(message: AbstractIncomingMessage, now: float) -> float | None:
    """The message's AMQP timestamp in unix seconds, if set and plausible."""
    stamp = message.timestamp
    if not isinstance(stamp, datetime):
        return None
    try:
        at = stamp.replace(tzinfo=stamp.tzinfo or UTC).timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return at if plausible(at, now) else None


def message_generation(message: AbstractIncomingMessage) -> str:
    """This message's digest: the same for each of its redeliveries, not for a copy."""
    properties = (
        ("content_type", message.content_type),
        ("content_encoding", message.content_encoding),
        ("delivery_mode", int(message.delivery_mode or 0)),
        ("priority", message.priority),
        ("correlation_id", message.correlation_id),
        ("reply_to", message.reply_to),
        ("expiration", message.expiration),
        ("message_id", message.message_id),
        ("timestamp", message.timestamp),
        ("type", message.type),
        ("user_id", message.user_id),
        ("app_id", message.app_id),
    )
    return generation(message.body, properties, message.headers or {})


def is_dead_letter(headers: Mapping[str, Any]) -> bool:
    """A dead letter, ours or the broker's: moved back, it is a new request, never a copy."""
    return H_ERROR_CODE in headers or "x-death" in headers


def read_envelope(message: AbstractIncomingMessage, now: float) -> Envelope:
    """Read what the delivery carries. Whether a redelivery may have been called for is the
    worker's call: it knows its own deliveries; for another process's it assumes the worst."""
    headers: Mapping[str, Any] = message.headers or {}
    first_seen = _seconds(headers.get(H_FIRST_SEEN))
    lineage = None if is_dead_letter(headers) else _text(headers.get(H_LINEAGE))
    # The chain's own headers count only on a copy of ours; on anything else (a producer's
    # message, a dead letter moved back) they belong to a chain that is over.
    chain: Mapping[str, Any] = headers if lineage is not None else {}
    reached = chain.get(H_MAY_HAVE_REACHED)
    sent_at = published_at(message, now)
    return Envelope(
        attempts=max(0, _int(headers.get(H_ATTEMPTS)) or 0),
        first_seen=first_seen if first_seen and 0 < first_seen <= now else now,
        may_have_reached=reached is True or reached == 1,
        message_id=_text(message.message_id, 255),
        correlation_id=_text(message.correlation_id, 255),
        lineage=lineage,
        is_copy=lineage is not None,
        redelivered=bool(message.redelivered),
        generation=message_generation(message),
        delivery_count=max(0, _int(headers.get(DELIVERY_COUNT)) or 0),
        releases=max(0, _int(chain.get(H_RELEASES)) or 0),
        failures=max(0, _int(chain.get(H_FAILURES)) or 0),
        halts=max(0, _int(chain.get(H_HALTS)) or 0),
        halted_at=seconds_from_ms(chain.get(H_HALTED_AT)),
        expires_at=_expires_at(message, chain, sent_at, now),
        published_at=sent_at,
        **_trace(headers.get(H_TRACEPARENT)),
        **_reply_to(message.reply_to),
    )


def _expires_at(
    message: AbstractIncomingMessage, chain: Mapping[str, Any], sent_at: float | None, now: float
) -> float | None:
    """When the producer's `expiration` runs out: carried by a copy, else from the TTL counted
    from the publication (the AMQP timestamp) or, without one, from now."""
    carried = seconds_from_ms(chain.get(H_EXPIRES_AT))
    if carried is not None:
        return carried
    ttl = message.expiration
    if not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl < 0:
        return None
    return (sent_at if sent_at is not None else now) + float(ttl)


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


def copy_message(
    message: AbstractIncomingMessage, headers: dict[str, Any], *, expiration_s: float | None = None
) -> aio_pika.Message:
    """The delivered message, body and properties, to publish again with `headers`."""
    # The original body byte for byte with its properties. Not the producer's `expiration`
    # as it was (a copy gets what is left of it; a dead letter none, or it would expire) and
    # not `user_id` (the broker checks it against our own login).
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
        expiration=expiration_s,
    )


def _own_headers(message: AbstractIncomingMessage, *drop: str) -> dict[str, Any]:
    headers = dict(message.headers or {})
    for name in (*RECALL_ERROR_HEADERS, *BROKER_DELIVERY_HEADERS, *drop):
        headers.pop(name, None)
    return sendable_table(headers)


FLOAT32_MAX = 3.4028234663852886e38
INT64 = range(-(2**63), 2**63)
MAX_DEPTH = 32


def sendable_table(table: Mapping[str, Any]) -> dict[str, Any]:
    """A header table a copy can carry: what we received, in the types our client can send.

    Another client may send what aio-pika's encoder cannot (a 64-bit double, an unsigned
    64-bit integer, bytes, a decimal of any scale) and RabbitMQ 3.10 refuses NaN and infinite
    doubles by closing the connection. Such a value is carried as its text, so that a dead
    letter or a release copy can always be published and no header ever stalls a request.
    """
    return {str(key): _sendable(value, 0) for key, value in table.items()}


def _sendable(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | str | datetime | bytearray):
        return value
    if depth >= MAX_DEPTH:
        return repr(value)[:MAX_INFO_CHARS]
    if isinstance(value, bytes | memoryview):
        return bytearray(value)
    if isinstance(value, int):
        return value if value in INT64 else str(value)
    if isinstance(value, float):
        # aio-pika sends a float as a 32-bit float: beyond its range, or not finite, as text.
        return value if math.isfinite(value) and abs(value) <= FLOAT32_MAX else repr(value)
    if isinstance(value, Decimal):
        return value if _decimal_fits(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _sendable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sendable(v, depth + 1) for v in value]
    return repr(value)[:MAX_INFO_CHARS]


def _decimal_fits(value: Decimal) -> bool:
    """AMQP's decimal: a scale of 0 to 255 and a signed 32-bit value."""
    if not value.is_finite():
        return False
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or not 0 <= -exponent <= 255:
        return False
    unscaled = int("".join(map(str, digits)) or "0")
    return unscaled < 2**31


def dead_letter_message(
    message: AbstractIncomingMessage,
    *,
    code: int,
    info: str,
    source: str,
    attempts: int,
    first_seen: float,
    now: float,
    sdkappid: int | None = None,
) -> aio_pika.Message:
    """The original request plus the headers that say why it is dead (and for which app).

    Without its chain's headers: moved back by any tool, it is a new request (see identity.py).
    A dead letter id of its own makes every dead letter unique bytes.
    """
    headers = _own_headers(message, *CHAIN_HEADERS)
    headers.update(
        {
            H_ERROR_CODE: code,
            H_ERROR_INFO: info[:MAX_INFO_CHARS],
            H_ERROR_SOURCE: source,
            H_ATTEMPTS: attempts,
            H_FIRST_SEEN: int(first_seen),
            H_DEAD_LETTERED_AT: int(now),
            H_DEAD_LETTER_ID: uuid.uuid4().hex,
        }
    )
    if sdkappid is not None:
        headers[H_SDKAPPID] = sdkappid
    return copy_message(message, headers)


def remaining_s(envelope: Envelope, now: float) -> float | None:
    """What is left of the producer's expiration (None: it set none); <= 0 once it ran out."""
    return None if envelope.expires_at is None else envelope.expires_at - now


def republish_message(
    message: AbstractIncomingMessage,
    envelope: Envelope,
    *,
    attempts: int,
    now: float,
    **more: Any,
) -> aio_pika.Message:
    """The request again at the queue's tail, carrying what its chain learned so far.

    Used for a re-publish (retry budget spent) and a release (shutdown, halt, an error): the
    copy is a new broker message, so neither counts toward the broker's delivery limit on any
    RabbitMQ version; our own headers count them instead. The broker's death headers are not
    carried: the copy is a live request of a live chain, not a dead letter.
    """
    headers = _own_headers(message, *BROKER_DEATH_HEADERS)
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
    if envelope.halted_at is not None:
        headers[H_HALTED_AT] = _ms(envelope.halted_at)
    left = remaining_s(envelope, now)
    if envelope.expires_at is not None:
        headers[H_EXPIRES_AT] = _ms(envelope.expires_at)
    headers.update(more)
    # The broker counts a TTL from the copy's arrival: give it what is left, at least 1 ms.
    return copy_message(message, headers, expiration_s=None if left is None else max(left, 0.001))
