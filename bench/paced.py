"""Scenarios at the real 1 call/s limit: a backlog (pacing) and a SIGKILL of the active consumer
(failover), each for the worker and for the baseline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import stats
from bench.procs import Child, poll
from bench.stage import Stage, body, stage
from bench.timeline import Panel, Row
from consumer.sandbox import CallRecord

LIMIT_S = 1.0
PACING_N = 60
FAILOVER_N = 30
KILL_AFTER = 8  # calls seen before the active consumer is killed


async def _spawn(st: Stage, name: str, baseline: bool, log_level: str = "warning") -> Child:
    if baseline:
        return await st.fleet.baseline(name)
    return await st.fleet.worker(name, LIMIT_S, log_level)


def _done(n: int, baseline: bool) -> Any:
    # The worker retries until each task is recalled; the baseline acks whatever the answer, so
    # it is done once every task was called once.
    if baseline:
        return lambda calls: len({c.task_id for c in calls}) >= n
    return lambda calls: len({c.task_id for c in calls if c.code in (0, 90050)}) >= n


def _paced_figures(st: Stage, calls: list[CallRecord], n: int) -> dict[str, Any]:
    return {
        "utilization": stats.utilization(calls, 1 / LIMIT_S),
        "too_frequent": stats.too_frequent(calls),
        "min_gap_s": stats.min_gap(calls),
        "calls": len(calls),
        "requests": n,
        "recalled": len(st.sandbox.recalled_task_ids()),
        "span_s": round(calls[-1].arrived - calls[0].arrived, 3),
        "codes": stats.codes(calls),
    }


async def pacing(workdir: Path, *, baseline: bool = False) -> tuple[dict[str, Any], Panel]:
    """A backlog of PACING_N requests drained by one consumer at the real limit."""
    async with stage(workdir, LIMIT_S, baseline=baseline) as st:
        tasks = [st.sandbox.create_task() for _ in range(PACING_N)]
        await st.backlog([body(t) for t in tasks])
        st.t0 = time.monotonic()
        child = await _spawn(st, "baseline" if baseline else "worker", baseline)
        await child.ready()
        await st.wait_calls(_done(PACING_N, baseline), timeout=PACING_N * 1.5 + 20)
        calls = st.calls()
        figures = _paced_figures(st, calls, PACING_N)
    name = "baseline (sleep 1 s after each call)" if baseline else "tim-recall worker"
    title = f"pacing: {PACING_N} requests backlog, 1 call/s limit, {name}"
    return figures, Panel(title, st.t0, [Row(child.name, calls)])


async def _owner(calls: list[CallRecord], children: list[Child]) -> Child:
    """The child whose log names the latest call's TaskId (it logs right after the answer)."""
    task_id = calls[-1].task_id
    found: list[Child] = []

    def named() -> bool:
        found[:] = [c for c in children if task_id in c.task_ids()]
        return bool(found)

    await poll(named, 5.0, f"a log naming {task_id}")
    return found[0]


def attribute(
    calls: list[CallRecord], victim: Child, survivor: Child
) -> dict[str, list[CallRecord]]:
    """Which process made each call: after the kill only the survivor can have; before it, the
    survivor if only its log names the TaskId, else the victim (it may die before logging)."""
    assert victim.killed_at is not None
    own = survivor.task_ids() - victim.task_ids()
    rows: dict[str, list[CallRecord]] = {victim.name: [], survivor.name: []}
    for c in calls:
        by_survivor = c.arrived >= victim.killed_at or c.task_id in own
        rows[survivor.name if by_survivor else victim.name].append(c)
    return rows


async def failover(workdir: Path, *, baseline: bool = False) -> tuple[dict[str, Any], Panel]:
    """Two consumers on one queue with a backlog; the one calling is SIGKILLed after a few calls."""
    async with stage(workdir, LIMIT_S, baseline=baseline) as st:
        prefix = "baseline" if baseline else "worker"
        # Info level: the worker logs each request's TaskId, which tells who made which call.
        children = [await _spawn(st, f"{prefix}-{x}", baseline, "info") for x in "ab"]
        for child in children:
            await child.ready()
        tasks = [st.sandbox.create_task() for _ in range(FAILOVER_N)]
        st.t0 = time.monotonic()
        await st.backlog([body(t) for t in tasks])
        await st.wait_calls(lambda calls: len(calls) >= KILL_AFTER, timeout=30)
        victim = await _owner(st.calls(), children)
        survivor = children[1] if victim is children[0] else children[0]
        killed_at = victim.kill()
        await victim.process.wait()
        await st.wait_calls(_done(FAILOVER_N, baseline), timeout=FAILOVER_N * 1.5 + 20)
        calls = st.calls()
        rows = attribute(calls, victim, survivor)
    after = [c for c in calls if c.arrived >= killed_at]
    first_after = round(after[0].arrived - killed_at, 3) if after else None
    figures = _paced_figures(st, calls, FAILOVER_N)
    del figures["utilization"]
    figures |= {
        # With the baseline both consumers were calling all along: nobody takes over.
        "takeover_s": None if baseline else first_after,
        "first_call_after_kill_s": first_after,
        "killed_after_calls": len(calls) - len(after),
        "survivor_calls_before_kill": sum(c.arrived < killed_at for c in rows[survivor.name]),
        "too_frequent_after_kill": stats.too_frequent(after),
        "min_gap_across_kill_s": stats.min_gap(
            [c for c in calls if c.arrived < killed_at][-1:] + after[:1]
        ),
    }
    title = (
        f"failover: {FAILOVER_N} requests, 2 {prefix} processes on one queue, "
        f"the calling one SIGKILLed after {KILL_AFTER} calls"
    )
    panel_rows = [
        Row(f"{victim.name} (killed)", rows[victim.name]),
        Row(survivor.name, rows[survivor.name]),
    ]
    return figures, Panel(title, st.t0, panel_rows, [(killed_at, "SIGKILL")])
