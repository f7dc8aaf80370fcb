"""The dead-letter tools on a dead-letter queue of 100,000 messages: time and peak RSS.

Issue 10, point 3: `tim-recall dlq list`, `replay --code` and `purge --code` each run as a
process of their own (`python -m consumer dlq ...`) on a uuid-named dead-letter queue of
DLQ_N dead letters: small ones as the worker writes them, one in a thousand of 64 KiB, and a few
bodies of 100,000 nested brackets; one in ten is replayed, one in ten purged. Each tool's peak
RSS is its own (os.wait4 on that child); the target is under 100 MB. Afterwards the queues are
drained and checked: the scratch queue holds the replayed ones in their original order, the
dead-letter queue the kept ones, in order.

`python -m bench.dlq` runs it alone (BENCH_DLQ_N=10000 for a smoke run).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

from bench.procs import AMQP_URL, ROOT
from consumer.core.topology import Topology
from schemas.events import (
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_FIRST_SEEN,
)

DLQ_N = int(os.environ.get("BENCH_DLQ_N", "100000"))
PUBLISH_BATCH = 2_000  # publishes in flight before waiting for their confirms
TARGET_RSS_MB = 100
REPLAY, KEEP, PURGE = 90053, 90049, 90001
INFO = {
    REPLAY: "the push kept roaming/unread messages and the recall lacks OfflinePushInfo",
    KEEP: "TaskId is illegal or has no push record",
    PURGE: "body is not valid JSON",
}


def code_of(i: int) -> int:
    """1 in 10 is replayed, 1 in 10 purged, the rest kept."""
    return {0: REPLAY, 1: PURGE}.get(i % 10, KEEP)


def dead_letter(i: int) -> aio_pika.Message:
    """Dead letter `i` (see `code_of`); 1 in 1,000 has a 64 KiB body, and 1 in 10,000 (a PURGE)
    is 100,000 nested brackets."""
    code = code_of(i)
    task_id = f"6b0825ad_{i:08x}_c31b6abef14d69f_0c3ca272_{i % 1000:06d}"
    if i % 10_000 == 1:
        body = b"[" * 100_000
    elif i % 1_000 == 5:
        body = json.dumps({"TaskId": task_id, "OfflinePushInfo": {"Desc": "x" * 65_000}}).encode()
    else:
        body = json.dumps({"TaskId": task_id}).encode()
    now = int(time.time())
    return aio_pika.Message(
        body,
        message_id=f"m-{i:06d}",
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={
            H_ERROR_CODE: code,
            H_ERROR_INFO: INFO[code],
            H_ERROR_SOURCE: "api" if code != PURGE else "local",
            H_ATTEMPTS: 1,
            H_FIRST_SEEN: now - 60,
            H_DEAD_LETTERED_AT: now,
        },
    )


async def _fill(channel: AbstractChannel, queue: str) -> float:
    """Publish DLQ_N dead letters in order, confirmed in batches; returns the seconds taken."""
    started = time.monotonic()
    for start in range(0, DLQ_N, PUBLISH_BATCH):
        await asyncio.gather(
            *[
                channel.default_exchange.publish(dead_letter(i), routing_key=queue)
                for i in range(start, min(start + PUBLISH_BATCH, DLQ_N))
            ]
        )
    return time.monotonic() - started


def _run_tool(env: dict[str, str], args: list[str]) -> dict[str, Any]:
    """One tool as a child process: wall time, peak RSS (its own, from wait4), exit code, output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(  # waited for with wait4 below, for its own rusage
            [sys.executable, "-m", "consumer", *args], cwd=ROOT, env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(process.pid, 0)
        took = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        printed, complained = out.read().decode(), err.read().decode()
    return {
        "s": round(took, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        "exit_code": process.returncode,
        "last_line": (printed.strip().splitlines() or [""])[-1],
        "stderr": complained.strip()[-500:],
    }


async def _drain(connection: AbstractConnection, queue: str) -> list[str]:
    """Every message_id in `queue`, in the order the broker hands them out (consumed)."""
    channel = await connection.channel()
    declared = await channel.declare_queue(queue, passive=True)
    expected = int(declared.declaration_result.message_count or 0)
    ids: list[str] = []
    if expected:
        await channel.set_qos(prefetch_count=1000)
        q = await channel.get_queue(queue, ensure=False)
        async with q.iterator() as messages:
            async for message in messages:
                ids.append(message.message_id or "")
                if len(ids) % 500 == 0 or len(ids) == expected:
                    await message.ack(multiple=True)
                if len(ids) == expected:
                    break
    await channel.close()
    return ids


async def dlq(workdir: Path) -> dict[str, Any]:
    """The scenario: fill, list, replay, purge, check the order; returns the figures."""
    del workdir  # the tools write nothing to disk
    name = f"bench-dlq-{uuid.uuid4().hex[:8]}"
    dead, scratch = f"{name}.dead", f"{name}.scratch"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))}
    env |= {
        "RECALL_AMQP_URL": AMQP_URL,
        "RECALL_QUEUE": scratch,
        "RECALL_DEAD_LETTER_QUEUE": dead,
    }
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    try:
        arguments = Topology(scratch, dead, f"{name}.results").dead_letter_arguments()
        await channel.declare_queue(dead, durable=True, arguments=arguments)
        await channel.declare_queue(scratch, durable=True, arguments={"x-queue-type": "quorum"})
        fill_s = await _fill(channel, dead)
        tools = {
            "list": ["dlq", "list", "--limit", "50"],
            "replay": ["dlq", "replay", "--code", str(REPLAY)],
            "purge": ["dlq", "purge", "--code", str(PURGE), "--yes"],
        }
        figures: dict[str, Any] = {}
        for key, args in tools.items():
            figures[key] = await asyncio.to_thread(_run_tool, env, args)
        replayed = await _drain(connection, scratch)
        kept = await _drain(connection, dead)
    finally:
        for queue in (dead, scratch):
            await channel.queue_delete(queue)
        await connection.close()
    ids = [f"m-{i:06d}" for i in range(DLQ_N)]
    order_kept = replayed == [m for i, m in enumerate(ids) if code_of(i) == REPLAY] and kept == [
        m for i, m in enumerate(ids) if code_of(i) == KEEP
    ]
    return {
        "messages": DLQ_N,
        "fill_s": round(fill_s, 1),
        **figures,
        "replayed": len(replayed),
        "kept": len(kept),
        "order_kept": order_kept,
        "peak_rss_mb": max(f["peak_rss_mb"] for f in figures.values()),
        "rss_target_mb": TARGET_RSS_MB,
        "all_exit_0": all(f["exit_code"] == 0 for f in figures.values()),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(dlq(Path("."))), indent=2))
