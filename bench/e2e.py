"""End to end: a producer publishing into a running worker, limits lifted, logs at INFO in JSON.

What one recall costs the worker as production runs it: every request published (confirmed)
by this process while the worker consumes, called once, its results event confirmed, acked.
Reported beside the sandbox's (this process: producer and sandbox) and the broker's CPU for the
same run, and the copies of a request the worker published to its own queue (0 when each
request travels once). `python -m bench.e2e` runs it alone; with BENCH_WORKER_ROOT set to
another checkout (a worktree of an older commit) it measures that commit's worker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aio_pika

from bench import stats
from bench.procs import _TICKS, AMQP_URL, poll
from bench.stage import Stage, body, publish_windowed, stage
from consumer.core.stream import read_results
from consumer.ops.publish import Outgoing, amqp_message

WARMUP_N = 200
N = 4_000
WINDOW = 200  # publishes awaiting their confirm at once: a producer that does not wait for each
LIFTED_INTERVAL_S = 0.000001


def broker_pid(port: int = 5672) -> int | None:
    """The pid of the RabbitMQ node listening on `port` (ss), None when it cannot be told."""
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return None
    marker = "pid="
    if marker not in out:
        return None
    return int(out.split(marker, 1)[1].split(",", 1)[0])


def cpu_of(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def _publish(st: Stage, count: int, sent: dict[str, float]) -> None:
    """Publish `count` requests with WINDOW confirms in flight, noting each one's send time."""
    exchange = st.channel.default_exchange

    def send() -> Awaitable[Any]:
        message_id = str(uuid.uuid4())
        message = amqp_message(Outgoing(body(st.sandbox.create_task()), message_id))
        sent[message_id] = time.time()
        return exchange.publish(message, st.queue, mandatory=True)

    await publish_windowed((send for _ in range(count)), WINDOW)


async def end_to_end(workdir: Path, n: int = N) -> dict[str, Any]:
    """The scenario; see the module docstring."""
    async with stage(workdir, 0.0) as st:
        worker = await st.fleet.worker("worker", LIFTED_INTERVAL_S, log_level="info")
        await worker.ready()
        sent: dict[str, float] = {}
        await _publish(st, WARMUP_N, sent)  # connections, caches and the takeover behind it
        # Polled every 0.5 s: the worker's /metrics costs it CPU (every series rendered).
        await poll(lambda: _settled(worker, WARMUP_N), 60, "the warm-up settled", every=0.5)
        copies0 = await worker.metric("tim_recall_copies_published_total")
        broker = broker_pid()
        cpu0, own0, broker0 = worker.cpu_s(), time.process_time(), cpu_of(broker)
        started = time.monotonic()
        await _publish(st, n, sent)
        calls = WARMUP_N + n
        await poll(lambda: len(st.sandbox.calls) >= calls, 300, "every call", every=0.02)
        await poll(lambda: _settled(worker, calls), 30, "every request settled", every=0.1)
        seconds = time.monotonic() - started
        cpu = worker.cpu_s() - cpu0
        own, broker_cpu = time.process_time() - own0, cpu_of(broker) - broker0
        copies = await worker.metric("tim_recall_copies_published_total") - copies0
        latencies = await _publish_to_event_ms(st, sent)
        calls = st.calls()
    return {
        "requests": n,
        "recalls_per_s": round(n / seconds, 1),
        "cpu_ms_per_recall": round(cpu * 1000 / n, 3),
        "cpu_s_per_1000": round(cpu / (n / 1000), 3),
        "copies_per_request": round(copies / n, 4),
        "calls_per_request": round(len(calls) / (WARMUP_N + n), 4),
        "codes": stats.codes(calls),
        # Under saturation: mostly the time a request waited behind the others.
        "publish_to_event_ms_saturated": {
            "p50": round(stats.percentile(latencies, 50), 1),
            "p99": round(stats.percentile(latencies, 99), 1),
        },
        # This process meanwhile: the producer publishing and the sandbox answering.
        "producer_and_sandbox_cpu_s_per_1000": round(own / (n / 1000), 3),
        "broker_cpu_s_per_1000": round(broker_cpu / (n / 1000), 3) if broker else None,
        "log_level": "info",
    }


async def _settled(worker: Any, n: int) -> bool:
    return bool(await worker.settled() >= n)


async def _publish_to_event_ms(st: Stage, sent: dict[str, float]) -> list[float]:
    """From each request's publish (wall clock) to its results event's settled_at, in ms."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        found = [
            (event.settled_at.timestamp() - sent[event.message_id]) * 1000
            async for event in read_results(connection, f"{st.queue}.results", "first")
            if event.message_id in sent
        ]
    finally:
        await connection.close()
    return found


async def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tim-recall-e2e-"))
    figures = await end_to_end(workdir)
    json.dump(figures, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    asyncio.run(main())
