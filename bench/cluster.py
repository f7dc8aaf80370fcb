"""Node loss under a backlog (results under `cluster`): a three-node cluster of the host's RabbitMQ,
started by scripts/cluster.sh on free ports for this run and torn down after; two worker replicas
with RECALL_AMQP_URL as the list of its nodes; a backlog at the real 1 call/s; after a few calls,
kill -9 of the node leading the recall queue (and the results stream: both are declared through
it), or of the node the replicas are connected to (the list names it first).

`pause_s` is the longest gap between accepted calls (answered 0), as the sandbox saw them, from the
last one before the kill to the end of the run. Each kill runs ROUNDS times on the one cluster (the
killed node started again between runs); `pause_s` is the median, with the min and the max beside.
Counts are summed over the runs: `settled` (the workers' own counters), `calls`, `too_frequent`
(90051), `lost` (neither recalled nor dead-lettered) and `results_missing` (no results event).

Needs root (the nodes run as user rabbitmq); without a cluster the figures say why they are
missing instead. `python -m bench.cluster` runs this scenario alone and prints its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika

from bench import stats
from bench.procs import Child, Fleet
from bench.stage import body
from bench.timeline import Panel, Row
from consumer.core.stream import read_results
from consumer.core.topology import Topology, declare
from consumer.ops.publish import Outgoing, amqp_message
from consumer.sandbox import CallRecord, Sandbox, SandboxConfig, serve_sandbox

# The tests' cluster helper (scripts/cluster.sh behind a small class), not a copy of it.
from tests.support.cluster import NODES, Cluster, ClusterError

KILLS = ("leader", "connected")
LIMIT_S = 1.0
BACKLOG = 20
KILL_AFTER = 6  # accepted calls before the kill
ROUNDS = int(os.environ.get("BENCH_CLUSTER_ROUNDS", "3"))
DRAIN_S = BACKLOG * LIMIT_S + 60  # the whole backlog recalled, at worst


@contextlib.asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    """Three clustered nodes on free ports (beside any other cluster), down and removed after."""
    nodes = Cluster.on_free_ports("bench")
    try:
        await nodes.script("up", timeout=420)
        yield nodes
    finally:
        with contextlib.suppress(ClusterError):
            await nodes.script("down", timeout=300)


class _ClusterFleet(Fleet):
    """A fleet whose workers get the cluster's nodes as RECALL_AMQP_URL."""

    def __init__(self, workdir: Path, sandbox: Sandbox, url: str, queue: str, amqp: str) -> None:
        super().__init__(workdir, sandbox, url, queue)
        self.amqp = amqp

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        return super()._env(extra) | {"RECALL_AMQP_URL": self.amqp}


def longest_pause(calls: list[CallRecord], killed_at: float) -> float | None:
    """The longest gap between accepted calls from the last one before the kill onwards."""
    accepted = [c for c in calls if c.code == 0]
    before = [c for c in accepted if c.arrived < killed_at][-1:]
    around = before + [c for c in accepted if c.arrived >= killed_at]
    found = stats.gaps(around)
    return round(max(found), 3) if found else None


def _rows(calls: list[CallRecord], replicas: list[Child]) -> list[Row]:
    """One row per replica: the calls whose TaskId its log names."""
    named = {r.name: r.task_ids() for r in replicas}
    rows = {r.name: Row(r.name, []) for r in replicas}
    for c in calls:
        owner = next((n for n, ids in named.items() if c.task_id in ids), replicas[0].name)
        rows[owner].calls.append(c)
    return list(rows.values())


async def _settled(replicas: list[Child]) -> int | None:
    try:
        return sum([await r.settled() for r in replicas])
    except Exception:  # a replica that is not answering: the ledger still counts
        return None


async def one_run(workdir: Path, nodes: Cluster, kill: str) -> tuple[dict[str, Any], Panel]:
    """One backlog, two replicas, one kill; the killed node is started again after."""
    try:
        return await _one_run(workdir, nodes, kill)
    finally:
        await nodes.heal()


def _accepted(calls: list[CallRecord]) -> int:
    return sum(c.code == 0 for c in calls)


async def _one_run(workdir: Path, nodes: Cluster, kill: str) -> tuple[dict[str, Any], Panel]:
    sandbox = Sandbox(SandboxConfig(min_interval=LIMIT_S))
    queue = f"bench-cluster-{uuid.uuid4().hex[:12]}"
    topology = Topology(queue, f"{queue}.dead", f"{queue}.results")
    tasks = [sandbox.create_task() for _ in range(BACKLOG)]
    requests = [Outgoing(body(t), str(uuid.uuid4())) for t in tasks]
    async with serve_sandbox(sandbox) as sandbox_url:
        # Declared through c1: it leads the recall queue and the results stream.
        async with await aio_pika.connect(nodes.url(NODES[0]), timeout=15) as first:
            await declare(first, topology)
        leader = await nodes.leader(queue)
        connected, spare = (n for n in NODES if n != leader)
        victim = leader if kill == "leader" else connected
        amqp = ",".join(nodes.url(n) for n in (connected, spare, leader))
        connection = await aio_pika.connect(nodes.url(spare), timeout=15)  # survives the kill
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            for item in requests:
                await channel.default_exchange.publish(amqp_message(item), queue, mandatory=True)
            async with _ClusterFleet(workdir, sandbox, sandbox_url, queue, amqp) as fleet:
                replicas = [await fleet.worker(f"{kill}-{x}", LIMIT_S, "info") for x in "ab"]
                for replica in replicas:
                    await replica.ready(timeout=40)
                t0 = time.monotonic()
                await sandbox.wait_for(lambda calls: _accepted(calls) >= KILL_AFTER, 60)
                killed_at = time.monotonic()
                await nodes.script("kill", victim)
                with contextlib.suppress(TimeoutError):  # what is missing is counted below
                    await sandbox.wait_for(lambda calls: _accepted(calls) >= BACKLOG, DRAIN_S)
                await asyncio.sleep(2 * LIMIT_S)  # a call after the last recall would show
                calls = sandbox.revoke_calls()
                settled = await _settled(replicas)
                rows = _rows(calls, replicas)
            look = await connection.channel()
            dead = await look.declare_queue(topology.dead_letter_queue, passive=True)
            left = await look.declare_queue(queue, passive=True)
            told = {
                e.message_id
                async for e in read_results(connection, topology.results_stream, "first")
            }
            for name in (queue, topology.dead_letter_queue, topology.results_stream):
                await look.queue_delete(name)
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
    recalled = len(set(sandbox.recalled_task_ids()) & set(tasks))
    dead_lettered = dead.declaration_result.message_count or 0
    figures: dict[str, Any] = {
        "victim": victim,
        "pause_s": longest_pause(calls, killed_at),
        "first_call_after_kill_s": next(
            (round(c.arrived - killed_at, 3) for c in calls if c.arrived >= killed_at), None
        ),
        "requests": BACKLOG,
        "settled": settled,
        "recalled": recalled,
        "dead_lettered": dead_lettered,
        "left": left.declaration_result.message_count or 0,
        "lost": max(0, BACKLOG - recalled - dead_lettered),
        "results_missing": sum(r.message_id not in told for r in requests),
        "calls": len(calls),
        "too_frequent": stats.too_frequent(calls),
        "min_gap_s": stats.min_gap(calls),
        "codes": stats.codes(calls),
    }
    what = "leading the recall queue" if kill == "leader" else "the replicas are connected to"
    title = (
        f"cluster: {BACKLOG} requests, 2 replicas, kill -9 of the node {what} ({victim}) "
        f"after {KILL_AFTER} calls; longest pause {figures['pause_s']} s"
    )
    return figures, Panel(title, t0, rows, [(killed_at, f"kill -9 {victim}")])


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of ROUNDS runs of one kill: pauses as median, min, max; counts summed."""
    pauses = [r["pause_s"] for r in runs if r["pause_s"] is not None]
    settled = [r["settled"] for r in runs]
    return {
        "pause_s": round(statistics.median(pauses), 3) if pauses else None,
        "pause_s_min": min(pauses, default=None),
        "pause_s_max": max(pauses, default=None),
        "settled": None if None in settled else sum(settled),
        "requests": sum(r["requests"] for r in runs),
        "calls": sum(r["calls"] for r in runs),
        "too_frequent": sum(r["too_frequent"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "results_missing": sum(r["results_missing"] for r in runs),
        "min_gap_s": min((r["min_gap_s"] for r in runs if r["min_gap_s"]), default=None),
        "runs": runs,
    }


async def node_loss(workdir: Path) -> tuple[dict[str, Any], list[Panel]]:
    """Both kills, ROUNDS runs each, on one cluster; the first run of each kill as a panel."""
    results: dict[str, Any] = {
        "nodes": len(NODES),
        "replicas": 2,
        "backlog": BACKLOG,
        "kill_after_calls": KILL_AFTER,
        "rounds": ROUNDS,
    }
    panels: list[Panel] = []
    began = time.monotonic()
    try:
        async with cluster() as nodes:
            results["up_s"] = round(time.monotonic() - began, 1)
            for kill in KILLS:
                runs = []
                for _ in range(ROUNDS):
                    figures, panel = await one_run(workdir, nodes, kill)
                    runs.append(figures)
                    if len(runs) == 1:
                        panels.append(panel)
                results[kill] = summary(runs)
    except ClusterError as exc:  # no root, no RabbitMQ: say so instead of the figures
        results["skipped"] = str(exc).splitlines()[-1][:300]
    results["total_s"] = round(time.monotonic() - began, 1)
    return results, panels


def render(results: dict[str, Any]) -> str:
    if "skipped" in results:
        return f"cluster: skipped ({results['skipped']})"
    lines = ["kill       pause_s median (min-max)  settled  calls  90051  lost  results missing"]
    for kill in KILLS:
        r = results[kill]
        lines.append(
            f"{kill:<10} {r['pause_s']!s:>6} ({r['pause_s_min']}-{r['pause_s_max']}){'':<8} "
            f"{r['settled']!s:<8} {r['calls']:<6} {r['too_frequent']:<6} {r['lost']:<5} "
            f"{r['results_missing']}"
        )
    return "\n".join(lines)


async def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tim-recall-cluster-"))
    results, _ = await node_loss(workdir)
    print(json.dumps(results, indent=2))
    print(render(results))
    print(f"process logs in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
