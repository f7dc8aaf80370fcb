"""Our bookkeeping on a message: read from a delivery, written onto a dead letter or re-publish."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from schemas.events import (
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_FIRST_SEEN,
    H_MAY_HAVE_REACHED,
    RECALL_ERROR_HEADERS,
)

MAX_INFO_CHARS = 1000  # a header, not a log: keep dead letters small


@dataclass(frozen=True)
class Envelope:
    """What earlier deliveries of this request left in its headers."""

    attempts: int
    first_seen: float  # unix seconds
    may_have_reached: bool
    message_id: str | None
    correlation_id: str | None


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


def read_envelope(message: AbstractIncomingMessage, now: float) -> Envelope:
    """Read our headers; a redelivery counts as 'may have reached' (a crash before the ack)."""
    headers: Mapping[str, Any] = message.headers or {}
    attempts = max(0, _int(headers.get(H_ATTEMPTS)) or 0)
    first_seen = _int(headers.get(H_FIRST_SEEN))
    reached = headers.get(H_MAY_HAVE_REACHED)
    return Envelope(
        attempts=attempts,
        first_seen=float(first_seen) if first_seen and 0 < first_seen <= now else now,
        may_have_reached=bool(message.redelivered) or reached is True or reached == 1,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
    )


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
    for name in (*RECALL_ERROR_HEADERS, "x-delivery-count"):
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
    message: AbstractIncomingMessage, *, attempts: int, first_seen: float, may_have_reached: bool
) -> aio_pika.Message:
    """The original request, carrying its attempt count and first-seen time to the queue's tail."""
    headers = _own_headers(message)
    headers.update(
        {
            H_ATTEMPTS: attempts,
            H_FIRST_SEEN: int(first_seen),
            H_MAY_HAVE_REACHED: may_have_reached,
        }
    )
    return copy_message(message, headers)
