"""A flood of local refusals: RSS of the 24-hour memory, and a takeover's rebuild from the stream.

Each figure is measured in a child process of its own (`python -m bench.memory_flood CHILD`),
so its RSS is that of a process holding the memory and nothing else of the benchmark:
- `flood`: 1,000,000 local refusals (a told lineage each, as invalid bodies or duplicates make
  them) fed to a RecallMemory at the default ceiling, and once without a ceiling (as before);
- `rebuild`: `rebuild_memory` from a results stream of up to 1,000,000 such events (1 % of them
  recalls). Publishing stops after PUBLISH_BUDGET_S; the rebuild time is then extrapolated
  linearly to 1,000,000 events, and the report says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from pamqp.commands import Basic

from bench.procs import AMQP_URL

TARGET_N = 1_000_000
FLOOD_N = int(os.environ.get("BENCH_FLOOD_N", TARGET_N))  # smaller for a smoke run
PUBLISH_BUDGET_S = 180.0
PUBLISH_BATCH = 5_000
K8S_LIMIT_MB = 256  # deploy/kubernetes/tim-recall.yaml: resources.limits.memory


def _rss_mb() -> tuple[float, float]:
    """(current, peak) RSS of this process in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _event_json(i: int, at: float, recalled: bool) -> bytes:
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + "Z"
    doc = {
        "task_id": f"task-{i:09d}" if recalled else None,
        "outcome": "recalled" if recalled else "dead_lettered",
        "error_code": 0 if recalled else 90001,
        "error_info": "" if recalled else "body is not JSON",
        "source": "api" if recalled else "local",
        "attempts": 1 if recalled else 0,
        "message_id": str(uuid.uuid4()),
        "correlation_id": None,
        "lineage": str(uuid.uuid4()),
        "first_seen": when,
        "settled_at": when,
        "has_offline_push_info": False,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def child_flood(max_entries: int | None) -> dict[str, Any]:
    """RSS after FLOOD_N local refusals through remember_event."""
    from datetime import UTC, datetime  # noqa: PLC0415 - the child's own imports

    import consumer.ops.app  # noqa: F401, PLC0415 - the worker's modules, for a comparable base
    from consumer.core.memory import RecallMemory  # noqa: PLC0415
    from schemas.events import ResultEvent  # noqa: PLC0415

    memory = RecallMemory() if max_entries is None else RecallMemory(max_entries=max_entries)
    base, _ = _rss_mb()
    now = time.time()
    started = time.monotonic()
    for i in range(FLOOD_N):
        at = now - FLOOD_N * 0.05 + i * 0.05  # spread over the last 14 hours
        event = ResultEvent(
            task_id=None,
            outcome="dead_lettered",
            error_code=90001,
            source="local",
            attempts=0,
            lineage=uuid.uuid4().hex,
            first_seen=datetime.fromtimestamp(at, UTC),
            settled_at=datetime.fromtimestamp(at, UTC),
        )
        memory.remember_event(event, now)
    rss, peak = _rss_mb()
    return {
        "base_rss_mb": round(base, 1),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
        "entries": len(memory),
        "max_entries": memory.max_entries,
        "evicted": sum(memory.evicted.values()),
        "bytes_per_entry": round((rss - base) * 1024 * 1024 / max(len(memory), 1)),
        "seconds": round(time.monotonic() - started, 1),
    }


async def child_rebuild(stream: str) -> dict[str, Any]:
    """A rebuild at the default ceiling and an unbounded budget: its time and RSS."""
    import consumer.ops.app  # noqa: F401, PLC0415
    from consumer.core.memory import RecallMemory  # noqa: PLC0415
    from consumer.core.rebuild import rebuild_memory  # noqa: PLC0415

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        memory = RecallMemory()
        base, _ = _rss_mb()
        report = await rebuild_memory(connection, stream, memory, time.time(), budget_s=3600)
    rss, peak = _rss_mb()
    return {
        "base_rss_mb": round(base, 1),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
        "events": report.events,
        "entries": report.entries,
        "evicted": report.evicted,
        "recalled_kept": report.sizes["recalled"],
        "seconds": round(report.seconds, 1),
        "complete": report.complete,
    }


async def _run_child(*args: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.memory_flood",
        *args,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"bench.memory_flood {' '.join(args)} exited {process.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _publish_flood(connection: aio_pika.abc.AbstractConnection, stream: str) -> int:
    """Up to FLOOD_N events, in confirmed batches, for at most PUBLISH_BUDGET_S; the count."""
    from consumer.core.stream import RESULT_TYPE  # noqa: PLC0415

    channel = await connection.channel(publisher_confirms=True)
    raw = await channel.get_underlay_channel()
    properties = Basic.Properties(
        message_type=RESULT_TYPE, content_type="application/json", delivery_mode=2
    )
    started, now, sent = time.monotonic(), time.time(), 0
    try:
        while sent < FLOOD_N and time.monotonic() - started < PUBLISH_BUDGET_S:
            batch = [
                raw.basic_publish(
                    _event_json(i, now - 3600 + i * 0.001, i % 100 == 0),
                    routing_key=stream,
                    properties=properties,
                )
                for i in range(sent, sent + PUBLISH_BATCH)
            ]
            await asyncio.gather(*batch)
            sent += PUBLISH_BATCH
    finally:
        await channel.close()
    return sent


async def memory_flood(workdir: Path) -> dict[str, Any]:
    """The flood's RSS with and without the ceiling, and the rebuild from a flooded stream."""
    bounded = await _run_child("flood")
    unbounded = await _run_child("flood", "--unbounded")
    stream = f"bench-flood-{uuid.uuid4().hex[:12]}.results"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            stream, durable=True, arguments={"x-queue-type": "stream", "x-max-age": "1h"}
        )
        try:
            began = time.monotonic()
            published = await _publish_flood(connection, stream)
            publish_s = time.monotonic() - began
            rebuild = await _run_child("rebuild", stream)
        finally:
            await channel.queue_delete(stream)
            await channel.close()
    per_s = rebuild["events"] / max(rebuild["seconds"], 0.001)
    return {
        "refusals": FLOOD_N,
        "rss_mb_after_flood": bounded["rss_mb"],
        "rss_mb_after_flood_unbounded": unbounded["rss_mb"],
        "flood": bounded,
        "flood_unbounded": unbounded,
        "stream_events": published,
        "publish_s": round(publish_s, 1),
        "rebuild": rebuild,
        "rebuild_events_per_s": round(per_s),
        "rebuild_s_projected_1m": round(TARGET_N / per_s, 1),
        "projected": published < TARGET_N,
        "k8s_limit_mb": K8S_LIMIT_MB,
        "within_k8s_limit": max(bounded["peak_rss_mb"], rebuild["peak_rss_mb"]) < K8S_LIMIT_MB,
    }


def _child(args: list[str]) -> None:
    if args[0] == "flood":
        result = child_flood(10**9 if "--unbounded" in args else None)
    else:
        result = asyncio.run(child_rebuild(args[1]))
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _child(sys.argv[1:])
    else:  # the whole scenario alone: python -m bench.memory_flood
        print(json.dumps(asyncio.run(memory_flood(Path(os.getcwd()))), indent=2))
