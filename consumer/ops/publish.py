"""Publish recall requests the way upstream systems should: validated, confirmed, mandatory."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
from aio_pika.exceptions import DeliveryError

from consumer.core.broker import broker_errors, connect_any
from consumer.core.errors import TimRecallError
from consumer.producer import (
    DEFAULT_EXCHANGE,
    NoOutcomeYet,
    RecallPublisher,
    Receipt,
    RepliesLost,
    Unroutable,
)
from schemas.events import ResultEvent
from schemas.recall import InvalidRequest, RecallRequest, parse_request


class PublishError(TimRecallError):
    """The broker did not take a message; the text says which and why."""


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: the body exactly as sent, and its AMQP identity."""

    body: bytes
    message_id: str
    correlation_id: str | None = None


def outgoing(request: RecallRequest, correlation_id: str | None = None) -> Outgoing:
    """A validated request as a message (the body is the API's own packet)."""
    body = RecallRequest.model_dump_json(request, by_alias=True, exclude_none=True).encode()
    return Outgoing(body=body, message_id=str(uuid.uuid4()), correlation_id=correlation_id)


def read_jsonl(lines: Iterable[str]) -> list[RecallRequest]:
    """Parse a JSON-lines file of requests; raises InvalidRequest naming every bad line."""
    requests: list[RecallRequest] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            requests.append(parse_request(line.encode()))
        except InvalidRequest as exc:
            problems.append(f"line {number}: {exc.info}")
    if problems:
        raise InvalidRequest("; ".join(problems))
    return requests


def amqp_message(item: Outgoing) -> aio_pika.Message:
    """The AMQP message for one request: persistent, JSON, timestamped."""
    return aio_pika.Message(
        body=item.body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=item.message_id,
        correlation_id=item.correlation_id,
        timestamp=datetime.now(UTC),
        app_id="tim-recall-publish",
    )


async def publish(amqp_url: str, queue: str, items: Iterable[Outgoing]) -> int:
    """Publish each item to `queue` with confirms and mandatory routing; returns how many."""
    connection, url = await connect_any(amqp_url)
    count = 0
    try:
        async with broker_errors(url):
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            for item in items:
                try:
                    await channel.default_exchange.publish(
                        amqp_message(item), routing_key=queue, mandatory=True
                    )
                except DeliveryError as exc:
                    raise PublishError(
                        f"the broker did not take message {item.message_id} after {count} "
                        f"published: queue {queue!r} missing or refusing ({_reason(exc)}); start "
                        "the worker once to declare it, or check RECALL_QUEUE"
                    ) from None
                count += 1
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return count


def _reason(exc: DeliveryError) -> str:
    frame = exc.frame
    text = getattr(frame, "reply_text", None) if frame is not None else None
    return str(text or "returned or nacked")


@dataclass(frozen=True)
class Waited:
    """A request published with --wait: its receipt, and its results event or why none came."""

    receipt: Receipt
    event: ResultEvent | None = None
    problem: str | None = None  # no outcome in time, or the connection lost: still queued


async def publish_to_app(
    amqp_url: str,
    requests: Sequence[RecallRequest],
    *,
    app: int,
    exchange: str = DEFAULT_EXCHANGE,
    correlation_id: str | None = None,
) -> list[Receipt]:
    """Publish every request for `app` through `exchange` (routing key: the SDKAppID) with
    confirms and mandatory routing, no reply asked for; raises NoSuchApp when no queue serves
    it."""
    async with RecallPublisher(amqp_url, app=app, exchange=exchange) as publisher:
        return await _publish_each(publisher, requests, correlation_id, app, reply=False)


async def _publish_each(
    publisher: RecallPublisher,
    requests: Sequence[RecallRequest],
    correlation_id: str | None,
    app: int | None,
    *,
    reply: bool,
) -> list[Receipt]:
    """Publish the requests in order; the first the broker does not take stops the rest, saying
    how many were published before it."""
    receipts: list[Receipt] = []
    for request in requests:
        try:
            receipts.append(
                await publisher.publish(
                    request.task_id,
                    offline_push_info=request.offline_push_info,
                    correlation_id=correlation_id,
                    reply=reply,
                )
            )
        except Unroutable as exc:
            raise _not_published(exc, len(receipts), app) from None
    return receipts


async def publish_and_wait(
    amqp_url: str,
    queue: str,
    requests: Sequence[RecallRequest],
    *,
    correlation_id: str | None,
    timeout: float,  # noqa: ASYNC109 (the outcomes' deadline, not one call's)
    on_done: Callable[[Waited], None] = lambda _: None,
    app: int | None = None,
    exchange: str = DEFAULT_EXCHANGE,
) -> list[Waited]:
    """Publish every request through one RecallPublisher (confirmed, mandatory, with a reply
    asked for; to `queue`, or for `app` through `exchange`), then wait for all outcomes until
    `timeout` s after the last confirm."""
    # No reply_ttl: every receipt is waited for below, however long publishing them all takes.
    async with RecallPublisher(
        amqp_url, queue, app=app, exchange=exchange, reply_ttl=None
    ) as publisher:
        receipts = await _publish_each(publisher, requests, correlation_id, app, reply=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        async def one(receipt: Receipt) -> Waited:
            try:
                waited = Waited(receipt, await publisher.wait(receipt, deadline - loop.time()))
            except (NoOutcomeYet, RepliesLost) as exc:
                waited = Waited(receipt, problem=str(exc))
            on_done(waited)
            return waited

        return list(await asyncio.gather(*(one(r) for r in receipts)))


def _not_published(exc: Unroutable, published: int, app: int | None) -> TimRecallError:
    """Why a request was not published, with how many were before it; for an app, when it was
    the first, the cause alone (every request of the call goes the same way: none could)."""
    if app is not None and not published:
        return exc
    return PublishError(f"{exc} ({published} published before it)")
