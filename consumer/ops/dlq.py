"""Dead-letter tools: list, replay and purge, in bounded memory, each safe while workers run.

Every tool makes one pass over the N messages the dead-letter queue held when it started (a
passive declare counts them), through one consumer holding at most PREFETCH messages. Each
visited message is acted on (replay: published to the recall queue with a confirm, then acked;
purge: acked) or kept: re-published byte for byte (body, properties and headers, less the
broker's delivery counters and `user_id`) to the queue's own tail with a confirm, then acked.
`list` keeps every message and shows the first ones as it goes. After the pass the kept messages
are in their original order, followed only by dead letters that arrived meanwhile (those are
where they arrived, among the kept ones). Memory holds PREFETCH messages (≤ 64 KiB each) at
most, whatever the queue's length.

Why a pass and not a peek that hands messages back: a quorum queue keeps what is handed back
(basic.nack or reject with requeue, or a channel closed with messages unacked) in a returns
queue served before the rest, and RabbitMQ 3.10.8 does not keep the order of that queue: seen
shuffled from 33 messages handed back in one go, and again, intermittently, when handed back
one per round trip. A publish is the one thing a queue keeps in order. So the tools never hand
a message back in normal operation: the acks of the last PREFETCH messages wait until the
consumer is cancelled, so that no message past the N it visits is ever delivered to it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
)
from aio_pika.exceptions import DeliveryError
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from consumer.core.broker import (
    BROKER_FAILURES,
    QueueMissing,
    broker_errors,
    connect_any,
    describe_broker_error,
)
from consumer.core.envelope import copy_message
from consumer.core.errors import BrokerUnavailable, TimRecallError
from schemas.events import (
    H_ATTEMPTS,
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

PREFETCH = 256  # messages a pass holds at once (in flight plus waiting)
WINDOW = 128  # publishes awaiting their confirm at once
IDLE_S = 15.0  # a delivery expected but not coming: the queue held fewer than counted
# A quorum queue applies acks at low priority: a channel closed right after its last acks can
# have some of them dropped, and those messages come back (RabbitMQ 3.10.8: seen in 1 run in 10
# with 300 acks, never with 10 ms of wait in 150 runs). The pass waits this long before closing.
SETTLE_GRACE_S = 0.5
MAX_TASK_ID_CHARS = 256
MAX_INFO_CHARS = 1000
MAX_TEXT_CHARS = 200


class DlqError(TimRecallError):
    """A dead-letter operation stopped; the text says what was done and where the rest is."""


class Letter(Protocol):
    """What `describe` reads from a message."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Any: ...

    @property
    def message_id(self) -> str | None: ...


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


def _text(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """A header value as bounded text: strings and bytes, or a scalar; anything else is ''."""
    text: str
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: limit * 4]).decode("utf-8", "replace")
    elif isinstance(value, bool | int | float | datetime):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        return ""
    return text[:limit]


def _int(value: Any) -> int | None:
    """An integer header, also when sent as a short decimal string; never a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bytes | bytearray | str) and 0 < len(value) <= 20:
        text = value.decode("ascii", "replace") if not isinstance(value, str) else value
        text = text.strip()
        if text.removeprefix("-").isdigit():
            return int(text)
    return None


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    seconds = _int(value)
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def task_id_of(body: Any) -> str | None:
    """The TaskId of a JSON object body; None for anything else (never raises).

    Only a body that starts like an object is parsed; nesting too deep for the parser (a body of
    100,000 brackets inside one), invalid UTF-8 or a number too long all come back None.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        return None
    if not bytes(body[:64]).lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{"):
        return None
    try:
        doc = json.loads(bytes(body))
    except Exception:  # ValueError, UnicodeDecodeError, RecursionError: a hostile body
        return None
    task_id = doc.get("TaskId") if isinstance(doc, dict) else None
    if isinstance(task_id, str) and 0 < len(task_id) <= MAX_TASK_ID_CHARS:
        return task_id
    return None


def describe(message: Letter) -> DeadLetter:
    """What a dead letter says about itself (ours, or dead-lettered by the broker); never raises.

    Whatever the body and headers hold, the answer is a DeadLetter: what cannot be read is
    unknown (None, '' or 0), never an exception.
    """
    try:
        return _describe(message)
    except Exception:  # a message that defeats even the checks below must not stop a tool
        return DeadLetter(None, None, "(unreadable dead letter)", "unknown", 0, None, None)


def _describe(message: Letter) -> DeadLetter:
    raw_headers = message.headers
    headers: Mapping[str, Any] = raw_headers if isinstance(raw_headers, Mapping) else {}
    code = _int(headers.get(H_ERROR_CODE))
    source = _text(headers.get(H_ERROR_SOURCE))
    info = _text(headers.get(H_ERROR_INFO), MAX_INFO_CHARS)
    at = _when(headers.get(H_DEAD_LETTERED_AT))
    deaths = headers.get("x-death")
    if code is None and (isinstance(deaths, list | tuple) or "x-first-death-reason" in headers):
        death = deaths[0] if isinstance(deaths, list | tuple) and deaths else None
        death = death if isinstance(death, Mapping) else {}
        reason = _text(death.get("reason")) or _text(headers.get("x-first-death-reason"))
        queue = _text(death.get("queue")) or _text(headers.get("x-first-death-queue"))
        source = f"broker:{reason or 'unknown'}"
        info = f"dead-lettered by RabbitMQ from {queue or '?'} ({reason or 'no reason given'})"
        at = _when(death.get("time")) or at
    message_id = message.message_id
    return DeadLetter(
        task_id=task_id_of(message.body),
        code=code,
        info=info,
        source=source or "unknown",
        attempts=max(0, _int(headers.get(H_ATTEMPTS)) or 0),
        when=at,
        message_id=message_id[:MAX_TEXT_CHARS] if isinstance(message_id, str) else None,
    )


def matcher(code: int | None, task_id: str | None) -> Callable[[DeadLetter], bool]:
    """A filter on code and TaskId (None matches anything)."""

    def match(letter: DeadLetter) -> bool:
        return (code is None or letter.code == code) and (
            task_id is None or letter.task_id == task_id
        )

    return match


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


class _Raw:
    """A delivery as `describe` reads it, without building an aio-pika message."""

    __slots__ = ("_delivered",)

    def __init__(self, delivered: DeliveredMessage) -> None:
        self._delivered = delivered

    @property
    def body(self) -> bytes:
        return self._delivered.body

    @property
    def headers(self) -> Any:
        return self._delivered.header.properties.headers

    @property
    def message_id(self) -> str | None:
        return self._delivered.header.properties.message_id


def describe_delivery(delivered: DeliveredMessage) -> DeadLetter:
    """`describe` for a raw delivery."""
    return describe(_Raw(delivered))


class _Closed:
    """Put in the buffer when the channel closes."""

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


Choice = Literal["keep", "drop", "replay"]


@dataclass
class _InFlight:
    """A publish awaiting its confirm: a copy for the tail, or a replay."""

    replay: bool
    index: int
    delivered: DeliveredMessage
    message_id: str | None
    confirm: asyncio.Future[Any]


@dataclass
class _Pass:
    """One pass over the `total` messages at the head of the queue; `choose` decides for each.

    Publishes are pipelined (WINDOW at most unconfirmed), and each original is acked once its
    copy or replay is confirmed. Two rules keep the order and lose nothing:
    - a copy for the tail waits until every replay before it is confirmed: a refused replay is
      kept, so it must reach the tail before any message after it;
    - two publishes with the same message_id are never in flight while one is a replay (aiormq
      matches a returned message to its publish by message_id).
    The consumer may hold `prefetch` messages; an ack frees room for one more, so the acks of the
    last `prefetch` messages wait until the consumer is cancelled: the pass never receives a
    message past the `total` it visits, and never has to hand one back.
    """

    channel: AbstractChannel
    underlay: aiormq.abc.AbstractChannel
    dlq: str
    total: int
    choose: Callable[[int, DeliveredMessage], Choice]
    target: str | None = None  # where "replay" publishes
    progress: Callable[[int], None] | None = None
    prefetch: int = 1
    visited: int = 0
    moved: int = 0  # dropped or replayed
    rotated: int = 0
    received: int = 0
    refusal: str | None = None
    consumer_tag: str | None = None
    cancelled: bool = False
    buffer: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    deferred: list[int] = field(default_factory=list)
    in_flight: collections.deque[_InFlight] = field(default_factory=collections.deque)
    replays_in_flight: int = 0
    ids_in_flight: collections.Counter[str | None] = field(default_factory=collections.Counter)
    refused: list[tuple[int, DeliveredMessage]] = field(default_factory=list)  # to keep, in order

    async def start(self) -> None:
        self.prefetch = max(1, min(PREFETCH, self.total))
        self.channel.close_callbacks.add(self._on_close)
        await self.underlay.basic_qos(prefetch_count=self.prefetch)
        ok = await self.underlay.basic_consume(self.dlq, self._on_delivery)
        self.consumer_tag = ok.consumer_tag

    async def _on_delivery(self, delivered: DeliveredMessage) -> None:
        self.received += 1
        self.buffer.put_nowait((self.received, delivered))

    def _on_close(self, _: object, exc: BaseException | None = None) -> None:
        self.buffer.put_nowait(_Closed(exc))

    async def _next(self) -> tuple[int, DeliveredMessage] | None:
        try:
            item = await asyncio.wait_for(self.buffer.get(), IDLE_S)
        except TimeoutError:
            return None  # the queue held fewer than counted (another tool took some)
        if isinstance(item, _Closed):
            self.buffer.put_nowait(item)
            raise item.exc or aiormq.exceptions.ChannelInvalidStateError("channel closed")
        index, delivered = item
        return int(index), delivered

    async def run(self) -> None:
        """Visit up to `total` messages, then send the acks held back."""
        while self.visited < self.total:
            if not self.cancelled and self.received >= self.total:
                await self._cancel()
            item = await self._next()
            if item is None:
                break
            index, delivered = item
            choice = self.choose(index, delivered)
            if choice == "replay" and self.refusal is None:
                await self._replay(index, delivered)
            elif choice == "drop":
                await self._ack(index, delivered.delivery_tag)
                self.moved += 1
            else:  # keep (also a replay once one was refused: the order is kept from there)
                await self._rotate(index, delivered)
            self.visited += 1
            if self.progress is not None:
                self.progress(1)
        await self._settle(0)
        await self._keep_refused()
        await self._settle(0)
        await self._cancel()

    async def _cancel(self) -> None:
        """No more deliveries; then the acks held back go."""
        if not self.cancelled and self.consumer_tag is not None:
            await self.underlay.basic_cancel(self.consumer_tag)
        self.cancelled = True
        deferred, self.deferred = self.deferred, []
        for tag in deferred:
            await self.underlay.basic_ack(tag, wait=False)

    async def _ack(self, index: int, tag: int | None) -> None:
        assert tag is not None
        if index > self.total - self.prefetch and not self.cancelled:
            self.deferred.append(tag)
        else:
            await self.underlay.basic_ack(tag, wait=False)

    def _publish(self, replay: bool, index: int, delivered: DeliveredMessage) -> None:
        message_id = delivered.header.properties.message_id
        publish: Any
        if replay:
            publish = self.channel.default_exchange.publish(
                replayed(aio_pika.IncomingMessage(delivered)),
                routing_key=self.target or "",
                mandatory=True,
            )
            self.replays_in_flight += 1
        else:
            publish = self.underlay.basic_publish(
                delivered.body,
                routing_key=self.dlq,
                properties=requeued(delivered.header.properties),
                mandatory=True,
            )
            self.rotated += 1
        self.ids_in_flight[message_id] += 1
        future = asyncio.ensure_future(publish)
        self.in_flight.append(_InFlight(replay, index, delivered, message_id, future))

    async def _replay(self, index: int, delivered: DeliveredMessage) -> None:
        if self.ids_in_flight[delivered.header.properties.message_id]:
            await self._settle(0)  # a return must find its own publish
            if self.refusal is not None:
                await self._rotate(index, delivered)
                return
        self._publish(True, index, delivered)
        await self._settle(WINDOW - 1)

    async def _rotate(self, index: int, delivered: DeliveredMessage) -> None:
        if self.replays_in_flight:
            await self._settle(0)  # a refused replay before it must go to the tail first
        await self._keep_refused()
        self._publish(False, index, delivered)
        await self._settle(WINDOW - 1)

    async def _keep_refused(self) -> None:
        refused, self.refused = self.refused, []
        for index, delivered in refused:
            self._publish(False, index, delivered)
            await self._settle(WINDOW - 1)

    async def _settle(self, keep: int) -> None:
        """Wait for the oldest publishes until at most `keep` are unconfirmed; ack each original
        confirmed; a refused replay is kept (moved to the tail in its turn)."""
        while len(self.in_flight) > keep or (self.in_flight and self.in_flight[0].confirm.done()):
            entry = self.in_flight.popleft()
            self.ids_in_flight[entry.message_id] -= 1
            if entry.replay:
                self.replays_in_flight -= 1
            try:
                await entry.confirm
            except DeliveryError as exc:
                if not entry.replay:
                    self.abandon()
                    raise DlqError(
                        f"stopped after visiting {self.visited} of {self.total}: the broker did "
                        f"not take a copy for the tail of {self.dlq!r} ({_refusal(exc)}); "
                        "nothing is lost: the messages not yet moved go back to the queue"
                    ) from None
                if self.refusal is None:
                    self.refusal = (
                        f"the broker did not take dead letter {entry.message_id} for queue "
                        f"{self.target!r} ({_refusal(exc)})"
                    )
                self.refused.append((entry.index, entry.delivered))
                continue
            if entry.replay:
                self.moved += 1
            await self._ack(entry.index, entry.delivered.delivery_tag)

    def abandon(self) -> None:
        """Stop: forget the publishes in flight and the acks held back (their messages go back
        to the queue when the channel closes)."""
        for entry in self.in_flight:
            entry.confirm.cancel()
        self.in_flight.clear()
        self.deferred.clear()


def _refusal(exc: DeliveryError) -> str:
    frame = exc.frame
    text = getattr(frame, "reply_text", None) if frame is not None else None
    if text:
        return str(text)
    return "nacked" if frame is not None else "refused"


@contextlib.asynccontextmanager
async def _session(amqp_url: str, dlq: str) -> AsyncIterator[tuple[AbstractConnection, int, str]]:
    """A connection, how many messages `dlq` holds ready, and the URL of the node connected to;
    QueueMissing if `dlq` does not exist."""
    connection, url = await connect_any(amqp_url)
    try:
        async with broker_errors(url):
            ready = await _ready_count(connection, dlq)
            yield connection, ready, url
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


async def _ready_count(connection: AbstractConnection, dlq: str) -> int:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(dlq, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise QueueMissing(dlq, "dead-letter queue") from None
    finally:
        if not channel.is_closed:
            await channel.close()
    return int(declared.declaration_result.message_count or 0)


async def count_dead_letters(amqp_url: str, dlq: str) -> int:
    """How many messages the dead-letter queue holds (ready, not held by a tool)."""
    async with _session(amqp_url, dlq) as (_, ready, _):
        return ready


async def _walk(
    amqp_url: str,
    dlq: str,
    choose: Callable[[int, DeliveredMessage], Choice],
    *,
    target: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    verb: str = "visited",
) -> _Pass:
    """One pass over `dlq` (see the module docstring); returns what it did.

    What "in place, in order" means when something fails:
    - The broker refuses a replay (no such queue, a full queue): no replay is sent after that
      (those already on their way may still be taken), the pass goes on keeping every other
      message, refused ones included, so the queue ends in its original order, less what was
      replayed. The caller then says it stopped (DlqError).
    - The connection is lost (or the tool killed): the messages not yet visited are at the head,
      in order; the kept ones already moved are at the tail, in order; the up to PREFETCH the tool
      held go back to the queue's returns, which a quorum queue serves first but not always in
      order. Nothing is lost, and running the command again finishes the work; a message whose
      copy was confirmed but whose ack was lost with the connection is in the queue twice.
    - The broker refuses a copy for the tail (its own queue: not expected): DlqError, as above.
    """
    async with _session(amqp_url, dlq) as (connection, ready, url):
        if on_total is not None:
            on_total(ready)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        work = _Pass(
            channel,
            await channel.get_underlay_channel(),
            dlq,
            ready,
            choose,
            target=target,
            progress=progress,
        )
        if ready == 0:
            return work
        try:
            await work.start()
            await work.run()
        except BROKER_FAILURES as exc:
            work.abandon()
            reason = describe_broker_error(exc, url)
            raise BrokerUnavailable(
                f"{reason}; stopped after visiting {work.visited} of {ready} dead letters "
                f"({work.moved} {verb}): none is lost; run the command again to finish"
            ) from exc
        except BaseException:
            work.abandon()
            raise
        finally:
            with contextlib.suppress(*BROKER_FAILURES):
                if not channel.is_closed:
                    await asyncio.sleep(SETTLE_GRACE_S)  # see SETTLE_GRACE_S
                    await channel.close()
    return work


async def each_dead_letter(
    amqp_url: str,
    dlq: str,
    limit: int | None,
    emit: Callable[[DeadLetter], None],
    *,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> int:
    """Describe the first `limit` dead letters to `emit` while a pass keeps them all, in order.
    Returns how many were shown."""
    shown = 0

    def choose(index: int, delivered: DeliveredMessage) -> Choice:
        nonlocal shown
        if limit is None or index <= limit:
            emit(describe_delivery(delivered))
            shown += 1
        return "keep"

    await _walk(amqp_url, dlq, choose, progress=progress, on_total=on_total, verb="moved")
    return shown


async def list_dead_letters(amqp_url: str, dlq: str, limit: int | None) -> list[DeadLetter]:
    """The first `limit` dead letters; every message stays, in order."""
    letters: list[DeadLetter] = []
    await each_dead_letter(amqp_url, dlq, limit, letters.append)
    return letters


@dataclass(frozen=True)
class Summary:
    """What a replay or purge did: `matched` moved (or, dry, would be), `kept` left in place."""

    matched: int
    kept: int
    visited: int = 0
    rotated: int = 0  # kept messages moved to the tail to keep the order


async def move_dead_letters(
    amqp_url: str,
    dlq: str,
    target_queue: str | None,
    match: Callable[[DeadLetter], bool],
    *,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Summary:
    """Replay (to `target_queue`) or purge (None) the matching dead letters, at most `limit`, in
    one pass; every other one stays, in order (see `_walk` for what a failure leaves). A
    replayed message is published with a confirm before its dead letter is acked. A dry run
    keeps every message and counts. Raises DlqError when the broker refused a replay."""
    matched = 0
    verb = "replayed" if target_queue is not None else "purged"

    def choose(_: int, delivered: DeliveredMessage) -> Choice:
        nonlocal matched
        if (limit is not None and matched >= limit) or not match(describe_delivery(delivered)):
            return "keep"
        matched += 1
        if dry_run:
            return "keep"
        return "replay" if target_queue is not None else "drop"

    work = await _walk(
        amqp_url,
        dlq,
        choose,
        target=target_queue,
        progress=progress,
        on_total=on_total,
        verb=verb,
    )
    if work.refusal is not None:
        raise DlqError(
            f"stopped after {work.moved} {verb}: {work.refusal}; every other dead letter is in "
            "the queue, in order"
        )
    done = matched if dry_run else work.moved
    return Summary(done, work.total - done, work.visited, work.rotated)
