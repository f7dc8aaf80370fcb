"""What a dead letter becomes when a tool publishes it: a replay (a new request) or a kept copy.

Pure: both are built from the delivery alone; the pass in `walk.py` publishes them.
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from consumer.core.envelope import copy_message
from schemas.events import (
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_FAILURES,
    H_HALTS,
    H_LINEAGE,
    H_MAY_HAVE_REACHED,
    H_RELEASES,
)

# Set by the broker on a delivery: never copied onto a message we publish (4.3 adds the second).
DELIVERY_COUNTERS = ("x-delivery-count", "x-acquired-count")
BROKER_HEADERS = (
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
    *DELIVERY_COUNTERS,
)
# A replay is a new request: no error headers, no broker headers, and nothing of the chain that
# died (the worker stamps a new lineage; a later 90050 counts as ours only if the new chain's own
# call may have reached the server). Attempts and first-seen are kept.
CHAIN_HEADERS = (H_LINEAGE, H_RELEASES, H_HALTS, H_FAILURES, H_MAY_HAVE_REACHED)
REPLAY_DROPS = (
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_DEAD_LETTERED_AT,
    *CHAIN_HEADERS,
    *BROKER_HEADERS,
)


def replayed(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The dead letter as a new request: error, broker, lineage and release headers dropped."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in REPLAY_DROPS}
    return copy_message(message, headers)


def requeued(properties: Basic.Properties) -> Basic.Properties:
    """A delivered message's properties for its copy at the queue's tail: unchanged except the
    broker's delivery counters (the copy is a new message) and `user_id` (the broker checks it
    against our own login). (aiormq gives a message without `message_id` one when publishing.)"""
    headers = properties.headers or {}
    return Basic.Properties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers={k: v for k, v in headers.items() if k not in DELIVERY_COUNTERS},
        delivery_mode=properties.delivery_mode or aio_pika.DeliveryMode.PERSISTENT.value,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        expiration=properties.expiration,
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        message_type=properties.message_type,
        app_id=properties.app_id,
        cluster_id=properties.cluster_id,
    )
