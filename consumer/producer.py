"""The Python producer's API: publish recall requests, confirmed and mandatory; learn outcomes.

A request goes straight to one queue (the default exchange), or, for the multi-app fleet, to the
direct exchange RECALL_EXCHANGE with the SDKAppID in decimal as routing key: the bindings are the
contract, and an app no queue serves comes back to the producer (NoSuchApp).

Replies come by Direct Reply-to, consumed without acks on the publisher's channel: no queue to
declare, delete or leak, no configure permission; a reply to a publisher that is gone is only
unroutable. They are matched by message_id (ours, unique; a correlation_id may be shared). What
the publisher holds for them is bounded: a request nobody waits for is forgotten `reply_ttl` s
after its confirm, a waited one when its wait ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import DeliveryError, PublishError
from pydantic import BaseModel

from consumer.core.broker import broker_errors, connect
from consumer.core.errors import BrokerUnavailable, ConfigurationError, TimRecallError
from consumer.core.nodes import NoNodeReachable, connect_first, split_urls
from consumer.core.stream import RESULT_TYPE
from schemas.events import H_TRACEPARENT, ResultEvent
from schemas.recall import InvalidRequest, OfflinePushInfo, RecallRequest, parse_request

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_QUEUE = "timpush.recall"
DEFAULT_EXCHANGE = "tim-recall"
DEFAULT_REPLY_TTL_S = 300.0
APP_ID = "tim-recall-producer"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_log = structlog.get_logger("tim_recall.producer")


@dataclass(frozen=True)
class Receipt:
    """A request the broker confirmed: what identifies it, and where it went (`exchange` and
    `routing_key`; `queue` when it was named, `app` when the exchange's bindings chose)."""

    message_id: str
    correlation_id: str
    task_id: str
    queue: str | None
    published_at: datetime
    expects_reply: bool = True
    exchange: str = ""  # the default exchange: straight to the queue named by routing_key
    routing_key: str = ""
    app: int | None = None

    def destination(self) -> str:
        """Where the broker routed it, in words."""
        if self.app is not None:
            return f"app {self.app} on exchange {self.exchange!r}"
        return f"queue {self.queue!r}"

    def lookup(self) -> str:
        """The command that finds this request's outcome in the results stream later."""
        return f"tim-recall results --since 1d --correlation-id {self.correlation_id}"


class Unroutable(TimRecallError):
    """The broker did not take a request: the queue or exchange is missing, or it refused or
    nacked it."""


class NoSuchApp(Unroutable):
    """The broker returned a request for an app no queue serves: nothing was queued."""

    def __init__(self, app: int, exchange: str) -> None:
        self.app = app
        self.exchange = exchange
        super().__init__(
            f"no such app: {app} (no queue serves it on exchange {exchange!r}; is the app in "
            "the worker's RECALL_APPS_FILE?)"
        )


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


@dataclass(slots=True)
class _Pending:
    """A request asked a reply for: its receipt, the future its reply sets, and the loop time
    after which, if nobody is waiting for it, it is forgotten."""

    receipt: Receipt
    future: asyncio.Future[ResultEvent]
    until: float = math.inf


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
    (RepliesLost); the next publish reopens it, node by node from RECALL_AMQP_URL's list.

    With `app`, requests go to `exchange` with routing key `str(app)` (NoSuchApp when no queue
    is bound for it); without it, straight to `queue`. A reply asked for and not waited for is
    held `reply_ttl` s after the confirm, then forgotten (None: until its wait, for a caller that
    waits for every receipt)."""

    def __init__(
        self,
        amqp_url: str,
        queue: str = DEFAULT_QUEUE,
        *,
        app: int | None = None,
        exchange: str = DEFAULT_EXCHANGE,
        confirm_timeout: float = 30.0,
        reply_ttl: float | None = DEFAULT_REPLY_TTL_S,
    ) -> None:
        if app is not None and (isinstance(app, bool) or app <= 0):
            raise ValueError(f"app {app!r} is not an SDKAppID (a positive integer)")
        if app is not None and not exchange:
            raise ValueError("an app's requests go through a named exchange, not the default")
        if reply_ttl is not None and not reply_ttl > 0:
            raise ValueError(f"reply_ttl {reply_ttl!r} must be more than 0 s (or None)")
        self._urls = split_urls(amqp_url)
        self.queue = queue
        self.app = app
        self.exchange = exchange
        self._confirm_timeout = confirm_timeout  # a stalled link gives no confirm at all
        self._reply_ttl = math.inf if reply_ttl is None else reply_ttl
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._url: str | None = None
        self._lock = asyncio.Lock()  # opening the connection, channel and reply consumer
        # Confirmed, nobody waiting yet: in confirm order, which is deadline order (one ttl),
        # so the oldest is first and expiring them is popping from the front.
        self._expiring: OrderedDict[str, _Pending] = OrderedDict()
        # Being published or waited for: held until that ends, whatever the ttl.
        self._held: dict[str, _Pending] = {}
        self._sweep: asyncio.TimerHandle | None = None  # one timer, at the oldest deadline
        self._closed = False

    @property
    def pending(self) -> int:
        """How many requests' replies are held (expected, or come and not yet waited for)."""
        return len(self._expiring) + len(self._held)

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
        InvalidRequest (nothing sent), NoSuchApp (no queue serves the app), Unroutable (no such
        queue or exchange, or refused) or BrokerUnavailable. With `reply=True` (the default) its
        reply is held for `wait` until `reply_ttl` s after the confirm; with `reply=False` none
        is asked for, nothing is held, and there is nothing to wait for."""
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
        routing_key = self.queue if self.app is None else str(self.app)
        receipt = Receipt(
            *ids,
            request.task_id,
            self.queue if self.app is None else None,
            at,
            expects_reply=reply,
            exchange="" if self.app is None else self.exchange,
            routing_key=routing_key,
            app=self.app,
        )
        if reply:  # before publishing: a fast worker may answer before the confirm is read
            self._held[receipt.message_id] = _Pending(receipt, _future())
        published = False
        try:
            async with broker_errors(self._url):
                try:
                    exchange = channel.default_exchange
                    if self.app is not None:  # no declare: a passive one would close the channel
                        exchange = await channel.get_exchange(self.exchange, ensure=False)
                    sent = exchange.publish(message, routing_key, mandatory=True)
                    await asyncio.wait_for(sent, self._confirm_timeout)
                except DeliveryError as exc:  # returned (no such queue or binding) or nacked
                    raise self._not_taken(receipt, exc) from None
                except aiormq.exceptions.ChannelNotFoundEntity:
                    if self.app is None:  # the default exchange is never missing
                        raise
                    # The app's exchange is: the broker closed the channel (the next publish
                    # opens another) and nothing was queued.
                    raise Unroutable(
                        f"the broker did not take TaskId {receipt.task_id}: exchange "
                        f"{self.exchange!r} does not exist; a worker declares it at start "
                        "(start one, or check RECALL_EXCHANGE)"
                    ) from None
            published = True
        except TimeoutError:
            raise BrokerUnavailable(
                f"no confirm from RabbitMQ within {self._confirm_timeout:g} s for TaskId "
                f"{receipt.task_id}: it may or may not be queued"
            ) from None
        finally:
            pending = self._held.pop(receipt.message_id, None)
            if published and pending is not None:
                self._expire_later(pending)
        return receipt

    async def wait(self, receipt: Receipt, timeout: float) -> ResultEvent:  # noqa: ASYNC109
        """The results event of a published request, also when its reply came before this wait
        (within `reply_ttl`). Raises NoOutcomeYet after `timeout` s (it stays queued; a later
        reply is dropped) or RepliesLost (the connection went away)."""
        if not receipt.expects_reply:
            raise ValueError("this receipt was published with reply=False: nothing to wait for")
        key = receipt.message_id
        pending = self._expiring.pop(key, None) or self._held.get(key)
        if pending is None:
            expired = f", its reply_ttl ({self._reply_ttl:g} s) passed before this wait"
            raise ValueError(
                f"{key}: nothing held for it: already waited for"
                f"{expired if math.isfinite(self._reply_ttl) else ''}, or not published here; "
                f"find its outcome with `{receipt.lookup()}`"
            )
        self._held[key] = pending  # a wait outlives the ttl: held until it ends
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout)
        except TimeoutError:
            raise NoOutcomeYet(receipt, f"no outcome within {timeout:g} s") from None
        finally:
            self._held.pop(key, None)

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

    def _not_taken(self, receipt: Receipt, exc: DeliveryError) -> Unroutable:
        if self.app is None:
            return Unroutable(
                f"the broker did not take TaskId {receipt.task_id}: queue "
                f"{self.queue!r} missing or refusing ({_reason(exc)}); start the "
                "worker once to declare it"
            )
        if isinstance(exc, PublishError):  # basic.return: no binding for the app's key
            return NoSuchApp(self.app, self.exchange)
        return Unroutable(  # nacked: a queue serves the app but refused (full, say)
            f"the broker refused TaskId {receipt.task_id} for {receipt.destination()} "
            f"({_reason(exc)})"
        )

    def _expire_later(self, pending: _Pending) -> None:
        """Hold a confirmed request's reply until `reply_ttl` from now, unless a wait takes it."""
        loop = asyncio.get_running_loop()
        pending.until = loop.time() + self._reply_ttl
        self._expiring[pending.receipt.message_id] = pending
        if self._sweep is None and math.isfinite(pending.until):
            self._sweep = loop.call_at(pending.until, self._expire)

    def _expire(self) -> None:
        """Forget the requests whose deadline passed, then set the one timer for the next."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now, forgotten = loop.time(), 0
        while self._expiring:
            oldest = next(iter(self._expiring.values()))
            if oldest.until > now:
                self._sweep = loop.call_at(oldest.until, self._expire)
                break
            self._expiring.popitem(last=False)
            forgotten += 1
        if forgotten:
            _log.debug("replies_forgotten", count=forgotten, reply_ttl=self._reply_ttl)

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
        key = message.message_id or ""
        pending = self._held.get(key) or self._expiring.get(key)
        if pending is None or message.type != RESULT_TYPE:
            _log.debug("reply_dropped", message_id=message.message_id, type=message.type)
            return
        try:
            event = ResultEvent.model_validate_json(message.body)
        except ValueError:
            _log.warning("reply_unreadable", message_id=message.message_id)
            return
        if not pending.future.done():
            pending.future.set_result(event)

    def _on_close(self, sender: object, exc: BaseException | None = None) -> None:
        if sender is not self._channel and sender is not self._connection:
            return  # one replaced already
        self._channel = None
        why = f"lost the connection to RabbitMQ ({exc or 'closed'})"
        self._fail_pending(" ".join(why.split()))

    def _fail_pending(self, why: str) -> None:
        for pending in (*self._held.values(), *self._expiring.values()):
            if not pending.future.done():
                pending.future.set_exception(RepliesLost(pending.receipt, f"{why} while waiting"))


def _future() -> asyncio.Future[ResultEvent]:
    future: asyncio.Future[ResultEvent] = asyncio.get_running_loop().create_future()
    # An exception nobody waits for (a publish-only caller) must not be logged at collection.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


def _reason(exc: DeliveryError) -> str:
    return str(getattr(exc.frame, "reply_text", None) or "returned or nacked")
