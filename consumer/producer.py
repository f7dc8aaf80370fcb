"""The Python producer's API: publish recall requests, confirmed and mandatory; learn outcomes.

Replies come by Direct Reply-to, consumed without acks on the publisher's channel: no queue to
declare, delete or leak, no configure permission; a reply to a publisher that is gone is only
unroutable. They are matched by message_id (ours, unique; a correlation_id may be shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import DeliveryError
from pydantic import BaseModel

from consumer.core.broker import broker_errors, connect
from consumer.core.errors import BrokerUnavailable, ConfigurationError, TimRecallError
from consumer.core.nodes import NoNodeReachable, connect_first, split_urls
from consumer.core.stream import RESULT_TYPE
from schemas.events import H_TRACEPARENT, ResultEvent
from schemas.recall import InvalidRequest, OfflinePushInfo, RecallRequest, parse_request

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_QUEUE = "timpush.recall"
APP_ID = "tim-recall-producer"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_log = structlog.get_logger("tim_recall.producer")


@dataclass(frozen=True)
class Receipt:
    """A request the broker confirmed: what identifies it, and where it went."""

    message_id: str
    correlation_id: str
    task_id: str
    queue: str
    published_at: datetime
    expects_reply: bool = True

    def lookup(self) -> str:
        """The command that finds this request's outcome in the results stream later."""
        return f"tim-recall results --since 1d --correlation-id {self.correlation_id}"


class Unroutable(TimRecallError):
    """The broker did not take a request: the queue is missing, or it refused or nacked it."""


class _StillQueued(TimRecallError):
    def __init__(self, receipt: Receipt, why: str) -> None:
        self.receipt = receipt
        text = (
            f"{why} for TaskId {receipt.task_id}; the request stays queued and will be "
            f"settled: look it up later with `{receipt.lookup()}`"
        )
        super().__init__(text)
        self.args = (text,)  # OSError (TimeoutError) would read (receipt, why) as an errno

    def __str__(self) -> str:
        return str(self.args[0])


class NoOutcomeYet(_StillQueued, TimeoutError):
    """No reply before the timeout: the request stays queued and will still be settled."""


class RepliesLost(_StillQueued, BrokerUnavailable):
    """The connection went away while waiting: the reply cannot come, the outcome still will."""


PushInfo = OfflinePushInfo | dict[str, Any] | None


def build_request(task_id: str, offline_push_info: PushInfo = None) -> RecallRequest:
    """The request exactly as the worker will parse it; raises InvalidRequest saying why."""
    doc: dict[str, Any] = {"TaskId": task_id}
    if isinstance(offline_push_info, BaseModel):
        offline_push_info = offline_push_info.model_dump(mode="json", by_alias=True)
    if offline_push_info is not None:
        doc["OfflinePushInfo"] = offline_push_info
    try:
        return parse_request(json.dumps(doc, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:  # not JSON at all: a set, a NaN
        raise InvalidRequest(f"not JSON: {exc}") from None


def request_message(
    request: RecallRequest,
    *,
    correlation_id: str | None = None,
    traceparent: str | None = None,
    reply_to: str | None = None,
) -> aio_pika.Message:
    """The AMQP message of a request: persistent JSON, timestamped, with a fresh message_id
    (also the correlation_id when none is given, so the outcome can always be looked up)."""
    if traceparent is not None and not _TRACEPARENT.match(traceparent):
        raise InvalidRequest(f"traceparent {traceparent[:80]!r} is not a W3C trace context")
    message_id = str(uuid.uuid4())
    return aio_pika.Message(
        body=request.api_bytes(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        correlation_id=correlation_id or message_id,
        timestamp=datetime.now(UTC),
        app_id=APP_ID,
        reply_to=reply_to,
        headers={H_TRACEPARENT: traceparent} if traceparent else None,
    )


class RecallPublisher:
    """Publishes recall requests over one reused connection and waits for their outcomes; safe
    for many tasks at once (one future per receipt). A lost connection fails the waits it strands
    (RepliesLost); the next publish reopens it, node by node from RECALL_AMQP_URL's list."""

    def __init__(
        self, amqp_url: str, queue: str = DEFAULT_QUEUE, *, confirm_timeout: float = 30.0
    ) -> None:
        self._urls = split_urls(amqp_url)
        self.queue = queue
        self._confirm_timeout = confirm_timeout  # a stalled link gives no confirm at all
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._url: str | None = None
        self._lock = asyncio.Lock()  # opening the connection, channel and reply consumer
        self._pending: dict[str, tuple[Receipt, asyncio.Future[ResultEvent]]] = {}
        self._closed = False

    async def __aenter__(self) -> RecallPublisher:
        await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def publish(
        self,
        task_id: str,
        *,
        offline_push_info: PushInfo = None,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        reply: bool = True,
    ) -> Receipt:
        """Validate and publish one request; returns once the broker confirmed it. Raises
        InvalidRequest (nothing sent), Unroutable (no such queue, or refused) or BrokerUnavailable.
        With `reply=False` no reply is asked for, nothing is held, and there is nothing to wait."""
        request = build_request(task_id, offline_push_info)
        message = request_message(
            request,
            correlation_id=correlation_id,
            traceparent=traceparent,
            reply_to=DIRECT_REPLY_TO if reply else None,
        )
        channel = await self._open()
        at = message.timestamp or datetime.now(UTC)
        ids = str(message.message_id), str(message.correlation_id)
        receipt = Receipt(*ids, request.task_id, self.queue, at, expects_reply=reply)
        if reply:  # before publishing: a fast worker may answer before the confirm is read
            self._pending[receipt.message_id] = (receipt, _future())
        published = False
        try:
            async with broker_errors(self._url):
                try:
                    sent = channel.default_exchange.publish(message, self.queue, mandatory=True)
                    await asyncio.wait_for(sent, self._confirm_timeout)
                except DeliveryError as exc:  # returned (no such queue) or nacked
                    raise Unroutable(
                        f"the broker did not take TaskId {receipt.task_id}: queue "
                        f"{self.queue!r} missing or refusing ({_reason(exc)}); start the "
                        "worker once to declare it"
                    ) from None
            published = True
        except TimeoutError:
            raise BrokerUnavailable(
                f"no confirm from RabbitMQ within {self._confirm_timeout:g} s for TaskId "
                f"{receipt.task_id}: it may or may not be queued"
            ) from None
        finally:
            if not published:
                self._pending.pop(receipt.message_id, None)
        return receipt

    async def wait(self, receipt: Receipt, timeout: float) -> ResultEvent:  # noqa: ASYNC109
        """The results event of a published request. Raises NoOutcomeYet after `timeout` s (it
        stays queued; a later reply is dropped) or RepliesLost (the connection went away)."""
        if not receipt.expects_reply:
            raise ValueError("this receipt was published with reply=False: nothing to wait for")
        entry = self._pending.get(receipt.message_id)
        if entry is None:
            raise ValueError(f"{receipt.message_id}: already waited for, or not published here")
        try:
            return await asyncio.wait_for(asyncio.shield(entry[1]), timeout)
        except TimeoutError:
            raise NoOutcomeYet(receipt, f"no outcome within {timeout:g} s") from None
        finally:
            self._pending.pop(receipt.message_id, None)

    async def recall(
        self,
        task_id: str,
        *,
        offline_push_info: PushInfo = None,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        timeout: float = 60.0,  # noqa: ASYNC109 (the outcome's deadline, not a call's)
    ) -> ResultEvent:
        """Publish one request and wait for its outcome (see `publish` and `wait`)."""
        info, cid, trace = offline_push_info, correlation_id, traceparent
        receipt = await self.publish(
            task_id, offline_push_info=info, correlation_id=cid, traceparent=trace
        )
        return await self.wait(receipt, timeout)

    async def close(self) -> None:
        """Close the connection; waits still pending fail with RepliesLost."""
        self._closed = True
        connection, self._connection, self._channel = self._connection, None, None
        self._fail_pending("the publisher was closed")
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _open(self) -> AbstractChannel:
        async with self._lock:
            if self._closed:
                raise RuntimeError("this RecallPublisher is closed")
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            if self._connection is None or self._connection.is_closed:
                self._connection = await self._connect()
                self._connection.close_callbacks.add(self._on_close)
            async with broker_errors(self._url):
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                channel.close_callbacks.add(self._on_close)
                replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
                await replies.consume(self._on_reply, no_ack=True)
            self._channel = channel
            return channel

    async def _connect(self) -> AbstractConnection:
        if not self._urls:
            raise ConfigurationError("no RabbitMQ URL given (RECALL_AMQP_URL is empty)")
        retry = (BrokerUnavailable,)  # a refused login or certificate is raised at once
        try:
            connection, index = await connect_first(self._urls, connect, retry_on=retry)
        except NoNodeReachable as exc:  # each reason names its host:port
            raise BrokerUnavailable("; ".join(f.reason for f in exc.failures)) from None
        self._url = self._urls[index]
        return connection

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        entry = self._pending.get(message.message_id or "")
        if entry is None or message.type != RESULT_TYPE:
            _log.debug("reply_dropped", message_id=message.message_id, type=message.type)
            return
        try:
            event = ResultEvent.model_validate_json(message.body)
        except ValueError:
            _log.warning("reply_unreadable", message_id=message.message_id)
            return
        if not entry[1].done():
            entry[1].set_result(event)

    def _on_close(self, sender: object, exc: BaseException | None = None) -> None:
        if sender is not self._channel and sender is not self._connection:
            return  # one replaced already
        self._channel = None
        why = f"lost the connection to RabbitMQ ({exc or 'closed'})"
        self._fail_pending(" ".join(why.split()))

    def _fail_pending(self, why: str) -> None:
        for receipt, future in self._pending.values():
            if not future.done():
                future.set_exception(RepliesLost(receipt, f"{why} while waiting"))


def _future() -> asyncio.Future[ResultEvent]:
    future: asyncio.Future[ResultEvent] = asyncio.get_running_loop().create_future()
    # An exception nobody waits for (a publish-only caller) must not be logged at collection.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


def _reason(exc: DeliveryError) -> str:
    return str(getattr(exc.frame, "reply_text", None) or "returned or nacked")
