"""Scenarios about cost: latency when idle, throughput and CPU with the limits lifted, memory."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from bench import stats
from bench.procs import Child, poll
from bench.stage import body, stage

IDLE_N = 30
IDLE_SPACING_S = 1.1  # from one call's arrival to the next publish: more than the 1 s interval
OVERHEAD_N = 5_000
MEMORY_N = 20_000
LIFTED_INTERVAL_S = 0.000001  # RECALL_INTERVAL_S must be > 0


async def idle_latency(workdir: Path) -> dict[str, Any]:
    """Requests one at a time, each published IDLE_SPACING_S after the previous call arrived:
    publish (wall clock, right before) to arrival at the sandbox."""
    async with stage(workdir, 1.0) as st:
        worker = await st.fleet.worker("worker", 1.0)
        await worker.ready()
        latencies_ms: list[float] = []
        for i in range(IDLE_N + 1):  # the first is the first delivery after subscribing
            sent = await st.publish(body(st.sandbox.create_task()))
            await st.wait_count(i + 1, timeout=10)
            call = st.calls()[i]
            latencies_ms.append((call.wall - sent) * 1000)
            wait = call.arrived + IDLE_SPACING_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the spacing is the point here
        first, steady = latencies_ms[0], latencies_ms[1:]
    return {
        "p50": round(stats.percentile(steady, 50), 2),
        "p99": round(stats.percentile(steady, 99), 2),
        "max": round(max(steady), 2),
        "mean": round(statistics.fmean(steady), 2),
        "requests": len(steady),
        # The first delivery after subscribing waits one interval by design (a standby taking
        # over must not call right after its predecessor); not counted above.
        "first_after_start_ms": round(first, 1),
    }


async def _keep(message: AbstractIncomingMessage) -> None:
    """Hold the delivery, never ack: a stand-in active consumer."""


async def overhead(workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Limits lifted on both sides; MEMORY_N requests pre-published, the first OVERHEAD_N timed.

    To pre-publish without the worker eating the backlog as it grows, and to read its RSS while
    truly idle, a stand-in consumer holds the single-active-consumer slot first: the worker starts
    as a standby, is measured, the backlog is published, then the stand-in leaves and the broker
    hands the queue to the worker.
    """
    async with stage(workdir, 0.0) as st:
        hold = await st.connection.channel()
        await hold.set_qos(prefetch_count=1)
        await (await hold.get_queue(st.queue, ensure=False)).consume(_keep)
        worker = await st.fleet.worker("worker", LIFTED_INTERVAL_S)
        await worker.ready()
        rss_idle = worker.rss_mb()
        tasks = [st.sandbox.create_task() for _ in range(MEMORY_N)]
        published = time.monotonic()
        await st.backlog([body(t) for t in tasks])
        publish_s = time.monotonic() - published
        cpu0, own0 = worker.cpu_s(), time.process_time()
        await hold.close()  # the worker becomes the active consumer
        await st.wait_count(OVERHEAD_N, timeout=120)
        cpu5, rss5, own5 = worker.cpu_s(), worker.rss_mb(), time.process_time()
        await st.wait_count(MEMORY_N, timeout=300)
        await poll(lambda: _settled_at_least(worker, MEMORY_N), 30, "every request settled")
        cpu20, rss20 = worker.cpu_s(), worker.rss_mb()
        calls = st.calls()
    first = calls[:OVERHEAD_N]
    overhead_figures = {
        "recalls_per_s": round(stats.rate(first) or 0.0, 1),
        "cpu_s_per_1000": round((cpu5 - cpu0) / (OVERHEAD_N / 1000), 3),
        "requests": OVERHEAD_N,
        # This process meanwhile: mostly the sandbox answering (uvicorn, UserSig checks).
        "sandbox_cpu_s_per_1000": round((own5 - own0) / (OVERHEAD_N / 1000), 3),
        "recalls_per_s_all": round(stats.rate(calls) or 0.0, 1),
        "cpu_s_per_1000_all": round((cpu20 - cpu0) / (MEMORY_N / 1000), 3),
        "requests_all": len(calls),
        "codes": stats.codes(calls),
        "publish_backlog_s": round(publish_s, 2),
    }
    growth_kb = (rss20 - rss5) * 1024 / ((MEMORY_N - OVERHEAD_N) / 1000)
    memory_figures = {
        "rss_mb_idle": round(rss_idle, 1),
        "rss_mb_after_5000": round(rss5, 1),
        "rss_mb_after": round(rss20, 1),
        "requests": MEMORY_N,
        "growth_kb_per_1000_after_5000": round(growth_kb, 1),
        # The worker remembers each TaskId recalled in the last 24 h (duplicate suppression):
        # at the real 1 call/s limit that is at most 86,400 of them. A linear projection.
        "rss_mb_projected_86400": round(rss5 + growth_kb * (86_400 - OVERHEAD_N) / 1000 / 1024, 1),
    }
    return overhead_figures, memory_figures


async def _settled_at_least(worker: Child, n: int) -> bool:
    return bool(await worker.settled() >= n)
