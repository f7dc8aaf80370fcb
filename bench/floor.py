"""The floor under a recall: the same AMQP round trips with nothing of the worker's own.

A bare aio-pika consumer (uvloop, prefetch 1, one quorum queue) that, for each delivery,
publishes the body to a stream with a confirm and then acks; with `--echo` it also follows that
stream (as the worker's memory follower does), and with `--http` it first POSTs the body to a
loopback HTTP server through httpx (the worker's client). Its CPU per message is what the
broker client, the HTTP client and the event loop cost on this machine before any of the
worker's own work (parsing, identity, pacing, the journal, logs, metrics): the part of
`overhead.cpu_s_per_1000` no change inside the worker can remove.
`python -m bench.floor` prints the figures of each variant beside each other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aio_pika

from bench.e2e import cpu_of
from bench.procs import AMQP_URL, poll
from bench.stage import publish_windowed

N = 4_000
WARMUP_N = 200
WINDOW = 200


async def consume(queue: str, stream: str, *, echo: bool, http_url: str | None) -> None:
    """The bare consumer (run in its own process); it says `ready` on stdout, then serves."""
    import httpx  # noqa: PLC0415 (only the consumer's process)

    from consumer.core.client import make_http_client  # noqa: PLC0415

    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1)
    publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
    http: httpx.AsyncClient | None = make_http_client(2.0, 5.0) if http_url else None
    source = await channel.get_queue(queue)
    if echo:  # as the worker's follower: read the stream, ack every 250
        reader = await connection.channel()
        await reader.set_qos(prefetch_count=1000)
        raw = await reader.get_underlay_channel()
        seen = 0

        async def follow(message: Any) -> None:
            nonlocal seen
            seen += 1
            if seen % 250 == 0:
                await message.channel.basic_ack(message.delivery.delivery_tag, multiple=True)

        await raw.basic_consume(stream, follow, arguments={"x-stream-offset": "next"})

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if http is not None and http_url is not None:
            await http.post(http_url, content=message.body)
        out = aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await publisher.default_exchange.publish(out, stream, mandatory=True)
        await message.ack()

    await source.consume(handle)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = b'{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in request.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(head % len(body) + body)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def variant(*, echo: bool, http: bool, n: int = N) -> dict[str, Any]:
    """One run: a consumer process, a producer here; the consumer's CPU per message."""
    queue = f"bench-floor-{uuid.uuid4().hex[:12]}"
    stream = f"{queue}.stream"
    connection = await aio_pika.connect(AMQP_URL)
    server = await asyncio.start_server(_answer, "127.0.0.1", 0) if http else None
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v4" if server else None
    child = None
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.declare_queue(stream, durable=True, arguments={"x-queue-type": "stream"})
        argv = ["-m", "bench.floor", "--consume", queue, stream]
        argv += ["--echo"] if echo else []
        argv += ["--http", url] if url else []
        child = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent
        )
        assert child.stdout is not None
        await asyncio.wait_for(child.stdout.readline(), 30)

        def publish() -> Awaitable[Any]:
            message = aio_pika.Message(json.dumps({"TaskId": uuid.uuid4().hex}).encode())
            return channel.default_exchange.publish(message, queue, mandatory=True)

        async def drained() -> bool:  # none ready: the last one delivered (one in hand at most)
            declared = await channel.declare_queue(queue, passive=True)
            return not declared.declaration_result.message_count

        await publish_windowed((publish for _ in range(WARMUP_N)), WINDOW)
        await poll(drained, 60, "the warm-up", every=0.2)
        cpu0, started = cpu_of(child.pid), time.monotonic()
        await publish_windowed((publish for _ in range(n)), WINDOW)
        await poll(drained, 300, "every message", every=0.02)
        seconds, cpu = time.monotonic() - started, cpu_of(child.pid) - cpu0
    finally:
        if child is not None and child.returncode is None:
            child.kill()
            await child.wait()
        if server is not None:
            server.close()
        with contextlib.suppress(Exception):  # the run's own queues go, whatever happened
            cleanup = await connection.channel()
            await cleanup.queue_delete(queue)
            await cleanup.queue_delete(stream)
        await connection.close()
    return {
        "messages_per_s": round(n / seconds, 1),
        "cpu_ms_per_message": round(cpu * 1000 / n, 3),
    }


async def floor() -> dict[str, Any]:
    """Each variant in turn: bare, with the stream echo, with the echo and the HTTP call."""
    return {
        "amqp": await variant(echo=False, http=False),
        "amqp_echo": await variant(echo=True, http=False),
        "amqp_echo_http": await variant(echo=True, http=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consume", nargs=2, metavar=("QUEUE", "STREAM"))
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--http")
    args = parser.parse_args()
    if args.consume:
        import uvloop  # noqa: PLC0415

        uvloop.run(consume(*args.consume, echo=args.echo, http_url=args.http))
        return
    json.dump(asyncio.run(floor()), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
