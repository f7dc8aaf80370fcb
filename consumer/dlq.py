"""Dead-letter tools: list, replay and purge, each safe while workers run."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import DeliveryError

from consumer.envelope import copy_message
from schemas.events import (
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_FAILURES,
    H_HALTS,
    H_LINEAGE,
    H_RELEASES,
)

BROKER_HEADERS = (
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
    "x-delivery-count",
)
# A replayed request is a new request: a new lineage (the worker stamps one), no releases,
# halts or failures of the old chain.
CHAIN_HEADERS = (H_LINEAGE, H_RELEASES, H_HALTS, H_FAILURES)
REPLAY_DROPS = (
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_DEAD_LETTERED_AT,
    *BROKER_HEADERS,
    "x-acquired-count",
    *CHAIN_HEADERS,
)


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as an operator sees it."""

    task_id: str | None
    code: int | None
    info: str
    source: str  # api, local, or "broker:<reason>" when RabbitMQ dead-lettered it itself
    attempts: int
    when: datetime | None
    message_id: str | None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "task_id": self.task_id,
            "code": self.code,
            "info": self.info,
            "source": self.source,
            "attempts": self.attempts,
            "when": self.when.isoformat() if self.when else None,
            "message_id": self.message_id,
        }


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _task_id(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    task_id = doc.get("TaskId") if isinstance(doc, dict) else None
    return task_id if isinstance(task_id, str) else None


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    """What a dead letter says about itself (ours, or dead-lettered by the broker)."""
    headers = message.headers or {}
    code = headers.get(H_ERROR_CODE)
    when = headers.get(H_DEAD_LETTERED_AT)
    source = _text(headers.get(H_ERROR_SOURCE))
    info = _text(headers.get(H_ERROR_INFO))
    at = datetime.fromtimestamp(when, UTC) if isinstance(when, int) else None
    deaths = headers.get("x-death")
    if code is None and isinstance(deaths, list) and deaths:
        death = deaths[0] if isinstance(deaths[0], dict) else {}
        reason = _text(death.get("reason")) or _text(headers.get("x-first-death-reason"))
        source = f"broker:{reason or 'unknown'}"
        info = f"dead-lettered by RabbitMQ from {_text(death.get('queue'))} ({reason})"
        t = death.get("time")
        at = t if isinstance(t, datetime) else at
    attempts = headers.get(H_ATTEMPTS)
    return DeadLetter(
        task_id=_task_id(message.body),
        code=code if isinstance(code, int) else None,
        info=info,
        source=source or "unknown",
        attempts=attempts if isinstance(attempts, int) else 0,
        when=at,
        message_id=message.message_id,
    )


def matcher(code: int | None, task_id: str | None) -> Callable[[DeadLetter], bool]:
    """A filter on code and TaskId (None matches anything)."""

    def match(letter: DeadLetter) -> bool:
        return (code is None or letter.code == code) and (
            task_id is None or letter.task_id == task_id
        )

    return match


async def _take_all(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    taken: list[AbstractIncomingMessage] = []
    while True:
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        taken.append(message)
    return taken


async def _hand_back(messages: list[AbstractIncomingMessage]) -> None:
    # One nack each, in delivery order. Closing the channel would hand them back too, but a
    # quorum queue then requeues them in no particular order (seen on 3.10 past 32 messages).
    for message in messages:
        await message.nack(requeue=True)


class DlqError(Exception):
    """A dead-letter operation stopped; every message not yet moved is back in place."""


async def list_dead_letters(amqp_url: str, dlq: str, limit: int | None) -> list[DeadLetter]:
    """The first `limit` dead letters; every message is handed back, in order.

    Every message is taken, not only `limit`: a quorum queue may put messages handed back
    behind the ones never taken, and a listing must leave the order as it found it.
    """
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(dlq, ensure=True)
        taken = await _take_all(queue)
        letters = [describe(m) for m in taken[:limit]]
        await _hand_back(taken)
        await channel.close()
        return letters
    finally:
        await connection.close()


async def count_dead_letters(amqp_url: str, dlq: str) -> int:
    """How many messages the dead-letter queue holds."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(dlq, passive=True)
        return int(declared.declaration_result.message_count or 0)


@dataclass(frozen=True)
class Summary:
    """What a replay or purge did."""

    matched: int
    kept: int


async def move_dead_letters(
    amqp_url: str,
    dlq: str,
    target_queue: str | None,
    match: Callable[[DeadLetter], bool],
    *,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Replay (to `target_queue`) or purge (None) the matching dead letters; others stay in order.

    Each replayed message is published with a confirm before its dead letter is acked.
    """
    connection = await aio_pika.connect(amqp_url)
    matched = kept = 0
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.get_queue(dlq, ensure=True)
        taken = await _take_all(queue)
        kept_messages: list[AbstractIncomingMessage] = []
        for index, message in enumerate(taken):
            letter = describe(message)
            if not match(letter) or (limit is not None and matched >= limit):
                kept_messages.append(message)
                continue
            if not dry_run:
                try:
                    if target_queue is not None:
                        await channel.default_exchange.publish(
                            _replayed(message), routing_key=target_queue, mandatory=True
                        )
                    await message.ack()
                except (DeliveryError, aiormq.exceptions.AMQPError) as exc:
                    await _hand_back(kept_messages + taken[index:])
                    raise DlqError(
                        f"stopped after {matched}: the broker did not take dead letter "
                        f"{letter.message_id} for {target_queue!r} ({type(exc).__name__}); "
                        "it and every other one are back in place"
                    ) from None
            matched += 1
            if progress is not None:
                progress(1)
        kept = len(kept_messages)
        await _hand_back(kept_messages)
        await channel.close()
    finally:
        await connection.close()
    return Summary(matched=matched, kept=kept)


def _replayed(message: AbstractIncomingMessage) -> aio_pika.Message:
    headers = {k: v for k, v in (message.headers or {}).items() if k not in REPLAY_DROPS}
    return copy_message(message, headers)
