"""The event loop's lag: how late a timer fires. Every lane shares the loop, so a loop kept busy
delays every app's next call; the histogram says by how much (`tim_recall_event_loop_lag_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import Histogram

from consumer.core.metrics import Metrics

TICK_S = 0.05
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def lag_histogram(metrics: Metrics) -> Histogram:
    """The histogram, registered in the worker's registry."""
    return Histogram(
        "tim_recall_event_loop_lag_seconds",
        "How late a 50 ms timer of the worker's event loop fired.",
        buckets=LAG_BUCKETS,
        registry=metrics.registry,
    )


async def _watch(histogram: Histogram) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        histogram.observe(max(0.0, loop.time() - due))


@contextlib.asynccontextmanager
async def watching_loop_lag(metrics: Metrics) -> AsyncIterator[None]:
    """Measure the loop's lag while inside."""
    task = asyncio.create_task(_watch(lag_histogram(metrics)), name="loop-lag")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
