"""`python -m bench.run` (`make bench`): every scenario, a table, results.json and timeline.png.

They go to bench/out/ (or bench/ itself with BENCH_UPDATE=1, `make bench-update`): see
bench/README.md for what each scenario measures and how to read the timeline.

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest), and root for the node-loss scenario's own
three-node cluster (bench/cluster.py; without it those figures say why they are missing). The
sandbox runs in this process; every worker and baseline runs as a process of its own. Targets are
reported, not asserted.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aio_pika

from bench import (
    apps,
    cluster,
    e2e,
    floor,
    link,
    load,
    memory_flood,
    outputs,
    paced,
    pacing_model,
    report,
    waste,
)
from bench.procs import AMQP_URL
from bench.stage import BrokerInterrupted
from bench.timeline import plot

T = TypeVar("T")


class Clock:
    """Runs each scenario, printing its start and duration on stderr; once more if the broker
    restarted under it (someone else's fault tests restart the shared broker)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    async def time(self, label: str, work: Callable[[], Awaitable[T]]) -> T:
        for attempt in (1, 2):
            began = time.monotonic()
            print(f"[{began - self.start:6.1f} s] {label} ...", file=sys.stderr, flush=True)
            try:
                result = await work()
            except BrokerInterrupted as exc:
                if attempt == 2:
                    raise
                print(f"         {exc}: once more", file=sys.stderr, flush=True)
                continue
            took = time.monotonic() - began
            print(f"         {label}: {took:.1f} s", file=sys.stderr, flush=True)
            return result
        raise AssertionError("unreachable")


async def together(*work: Coroutine[Any, Any, T]) -> list[T]:
    """Run side by side; on a failure cancel the others and raise the first error itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(w) for w in work]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


async def _check_broker() -> None:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
    except Exception as exc:
        raise SystemExit(
            f"RabbitMQ is not answering on {AMQP_URL} ({exc}); try `make broker`"
        ) from None
    await connection.close()


async def scenarios(workdir: Path, clock: Clock) -> tuple[dict[str, Any], list[Any]]:
    results: dict[str, Any] = {"source": outputs.source(), "machine": report.machine()}
    results["idle_latency_ms"] = await clock.time(
        "idle latency", lambda: load.idle_latency(workdir)
    )
    # A producer publishing into a running worker, INFO logs: what a recall costs end to end.
    results["overhead"] = await clock.time("overhead end to end", lambda: e2e.end_to_end(workdir))
    # The same round trips with nothing of the worker's own: the floor under the figure above.
    results["overhead"]["floor"] = await clock.time("the floor under a recall", floor.floor)
    # Many apps: 200 in one process, one flooded, limits lifted over 50 lanes, and 3 replicas
    # sharing 200 apps on RabbitMQ 4 (scripts/rabbitmq4.sh, port 5680) with a kill and a rejoin.
    results["apps"] = await clock.time("many apps", lambda: apps.run(workdir))
    lanes = results["apps"]["lanes"]
    results["overhead"]["lanes_recalls_per_s"] = lanes["recalls_per_s"]
    results["overhead"]["loop_lag_p99_ms"] = lanes["loop_lag_p99_ms"]
    results["backlog"], results["memory"] = await clock.time(
        "a backlog, and memory", lambda: load.overhead(workdir)
    )
    results["waste"] = await clock.time("waste", lambda: waste.waste(workdir))
    results["memory_flood"] = await clock.time(
        "memory flood", lambda: memory_flood.memory_flood(workdir)
    )
    from bench import dlq  # noqa: PLC0415 (the dead-letter tools on 100,000 dead letters)

    results["dlq"] = await clock.time("dead-letter tools", lambda: dlq.dlq(workdir))
    # The paced runs make 1 or 2 calls/s each: the worker's and the baseline's pacing and
    # failover runs go side by side, each with its own sandbox (its own rate limiter) and queue.
    paced_runs = await clock.time(
        "pacing and failover (worker and baseline)",
        lambda: together(
            paced.pacing(workdir),
            paced.pacing(workdir, baseline=True),
            paced.failover(workdir),
            paced.failover(workdir, baseline=True),
        ),
    )
    (pacing, pacing_panel), (base_pacing, base_pacing_panel) = paced_runs[:2]
    (failover, failover_panel), (base_failover, base_failover_panel) = paced_runs[2:]
    results["pacing"], results["failover"] = pacing, failover
    results["baseline"] = {"pacing": base_pacing, "failover": base_failover}
    panels = [pacing_panel, base_pacing_panel, failover_panel, base_failover_panel]
    # Both pacing rules behind links of 0 to 300 ms, all eight runs side by side.
    results["link"], link_panels = await clock.time("links", lambda: link.links(workdir))
    # The same links as arithmetic, every rule over many backlogs (about 20 s of one core).
    results["pacing_model"] = await clock.time(
        "pacing model", lambda: asyncio.to_thread(pacing_model.run, pacing_model.RUNS)
    )
    # Last and alone: three more RabbitMQ nodes on the 2 cores would disturb the paced runs.
    results["cluster"], cluster_panels = await clock.time(
        "node loss in a three-node cluster", lambda: cluster.node_loss(workdir)
    )
    return results, panels + link_panels + cluster_panels


async def main() -> None:
    # aio-pika logs a traceback when the broker drops a connection; Clock says it in one line.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
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
    out = outputs.output_dir()
    report.write(results, out / "results.json")
    plot(panels, out / "timeline.png")
    print(report.render(results))
    print(
        f"\nresults in {out / 'results.json'}, timeline in {out / 'timeline.png'}; "
        f"total {results['total_s']} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
