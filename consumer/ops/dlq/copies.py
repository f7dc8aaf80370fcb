"""What a dead letter becomes when a tool publishes it: a replay (a new request) or a kept copy.

Pure: both are built from the delivery alone; the pass in `walk.py` publishes them.
"""

from __future__ import annotations

import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from consumer.core.envelope import copy_message
from consumer.core.identity import BROKER_DELIVERY_HEADERS
from schemas.events import (
    BROKER_DEATH_HEADERS,
    CHAIN_HEADERS,
    H_REPLAY,
    RECALL_ERROR_HEADERS,
)

# Set by the broker on a delivery: never copied onto a message we publish (4.3 adds the second).
DELIVERY_COUNTERS = tuple(sorted(BROKER_DELIVERY_HEADERS))
BROKER_HEADERS = (*BROKER_DEATH_HEADERS, *DELIVERY_COUNTERS)
# A replay is a new request: no error headers, no broker headers, and nothing of the chain that
# died (a later 90050 counts as ours only if the new chain's own call may have reached the
# server). Attempts and first-seen are kept.
REPLAY_DROPS = (*RECALL_ERROR_HEADERS, *CHAIN_HEADERS, *BROKER_HEADERS, H_REPLAY)


def replayed(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The dead letter as a new request: error, broker and chain headers dropped, and a replay id
    of its own, so that no two replays are the same bytes (consumer/core/identity.py)."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in REPLAY_DROPS}
    headers[H_REPLAY] = uuid.uuid4().hex
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
