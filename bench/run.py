"""`python -m bench.run` (`make bench`): every scenario, a table, results.json and timeline.png.

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest). The sandbox runs in this process; every worker
and baseline runs as a process of its own. Targets are reported, not asserted.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aio_pika

from bench import load, paced, report, waste
from bench.procs import AMQP_URL
from bench.timeline import plot

HERE = Path(__file__).parent
T = TypeVar("T")


class Clock:
    """Prints each scenario's start and duration on stderr."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    async def time(self, label: str, work: Awaitable[T]) -> T:
        began = time.monotonic()
        print(f"[{began - self.start:6.1f} s] {label} ...", file=sys.stderr, flush=True)
        result = await work
        print(f"         {label}: {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
        return result


async def _check_broker() -> None:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
    except Exception as exc:
        raise SystemExit(
            f"RabbitMQ is not answering on {AMQP_URL} ({exc}); try `make broker`"
        ) from None
    await connection.close()


async def scenarios(workdir: Path, clock: Clock) -> tuple[dict[str, Any], list[Any]]:
    results: dict[str, Any] = {"machine": report.machine()}
    results["idle_latency_ms"] = await clock.time("idle latency", load.idle_latency(workdir))
    results["overhead"], results["memory"] = await clock.time(
        "overhead and memory", load.overhead(workdir)
    )
    results["waste"] = await clock.time("waste", waste.waste(workdir))
    # The paced runs make 1 or 2 calls/s each: the worker's and the baseline's run side by side,
    # each with its own sandbox (its own rate limiter) and queue.
    (pacing, pacing_panel), (base_pacing, base_pacing_panel) = await clock.time(
        "pacing (worker and baseline)",
        asyncio.gather(paced.pacing(workdir), paced.pacing(workdir, baseline=True)),
    )
    (failover, failover_panel), (base_failover, base_failover_panel) = await clock.time(
        "failover (worker and baseline)",
        asyncio.gather(paced.failover(workdir), paced.failover(workdir, baseline=True)),
    )
    results["pacing"], results["failover"] = pacing, failover
    results["baseline"] = {"pacing": base_pacing, "failover": base_failover}
    panels = [pacing_panel, base_pacing_panel, failover_panel, base_failover_panel]
    return results, panels


async def main() -> None:
    clock = Clock()
    await _check_broker()
    workdir = Path(tempfile.mkdtemp(prefix="tim-recall-bench-"))
    try:
        results, panels = await scenarios(workdir, clock)
    except BaseException:
        print(f"bench failed; process logs kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    results["total_s"] = round(time.monotonic() - clock.start, 1)
    report.write(results, HERE / "results.json")
    plot(panels, HERE / "timeline.png")
    print(report.render(results))
    print(
        f"\nresults in {HERE / 'results.json'}, timeline in {HERE / 'timeline.png'}; "
        f"total {results['total_s']} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
