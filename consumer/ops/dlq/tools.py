"""The dead-letter tools over the broker: count, list (each), replay and purge (move).

Each opens one session, counts the queue with a passive declare and makes one pass over what it
held (`walk.py` says how the pass keeps the order and why it never hands a message back).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiormq
from aio_pika.abc import AbstractConnection
from aiormq.abc import DeliveredMessage

from consumer.core.broker import (
    BROKER_FAILURES,
    QueueMissing,
    broker_errors,
    connect_any,
    describe_broker_error,
)
from consumer.core.errors import BrokerUnavailable
from consumer.ops.dlq.letter import DeadLetter, describe_delivery
from consumer.ops.dlq.routes import Route
from consumer.ops.dlq.walk import Choice, DlqError, Walk

# A quorum queue applies acks at low priority: a channel closed right after its last acks can
# have some of them dropped, and those messages come back (RabbitMQ 3.10.8: seen in 1 run in 10
# with 300 acks, never with 10 ms of wait in 150 runs). The pass waits this long before closing.
SETTLE_GRACE_S = 0.5


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
    target: Callable[[DeliveredMessage], str | None] | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    verb: str = "visited",
) -> Walk:
    """One pass over `dlq` (see `walk.py`); returns what it did.

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
        work = Walk(
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
    match: Callable[[DeadLetter], bool] | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> int:
    """Describe the first `limit` dead letters (that `match`) to `emit` while a pass keeps them
    all, in order. Returns how many were shown."""
    shown = 0

    def choose(_: int, delivered: DeliveredMessage) -> Choice:
        nonlocal shown
        if limit is None or shown < limit:
            letter = describe_delivery(delivered)
            if match is None or match(letter):
                emit(letter)
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
    # Matching dead letters kept because no queue takes their app: (app, how many), in the
    # order first met.
    unserved: tuple[tuple[int | None, int], ...] = ()


async def move_dead_letters(
    amqp_url: str,
    dlq: str,
    target_queue: str | Route | None,
    match: Callable[[DeadLetter], bool],
    *,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Summary:
    """Replay (to `target_queue`, or to the queue a Route gives each letter) or purge (None) the
    matching dead letters, at most `limit`, in one pass; every other one stays, in order (see
    `_walk` for what a failure leaves), and so does one whose Route is None (counted in
    `unserved`). A replayed message is published with a confirm before its dead letter is
    acked. A dry run keeps every message and counts. Raises DlqError when the broker refused a
    replay."""
    matched = 0
    unserved: collections.Counter[int | None] = collections.Counter()
    verb = "replayed" if target_queue is not None else "purged"
    route = _to(target_queue) if isinstance(target_queue, str) else target_queue

    def choose(_: int, delivered: DeliveredMessage) -> Choice:
        nonlocal matched
        if limit is not None and matched >= limit:
            return "keep"
        letter = describe_delivery(delivered)
        if not match(letter):
            return "keep"
        if route is not None and route(letter) is None:
            unserved[letter.sdkappid] += 1
            return "keep"
        matched += 1
        if dry_run:
            return "keep"
        return "replay" if route is not None else "drop"

    def target(delivered: DeliveredMessage) -> str | None:
        # `choose` just gave this message "replay"; describing it again gives the same queue
        # (describe is pure) and costs little next to the confirmed publish that follows.
        assert route is not None
        return route(describe_delivery(delivered))

    work = await _walk(
        amqp_url,
        dlq,
        choose,
        target=target if route is not None else None,
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
    return Summary(done, work.total - done, work.visited, work.rotated, tuple(unserved.items()))


def _to(queue: str) -> Route:
    """The Route of every dead letter to one queue."""

    def route(_: DeadLetter) -> str:
        return queue

    return route
