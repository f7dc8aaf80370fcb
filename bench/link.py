"""Pacing over a link: a backlog behind 0, 50, 150 and 300 ms round trips (±10 ms per direction),
with the `send` rule and the old `finish` rule side by side, each run with its own sandbox.

The eight runs of a round go side by side. Every worker is started and ready before any backlog
is published, so that no run is measured while the others' workers are starting next to the
sandboxes (a busy sandbox stamps arrivals late: load the pacer cannot tell from the link).
Rounds go one after the other (`RUNS`, at least two: the machine is shared and noisy); the
figures per link are the median and the worst of the rounds.

`python -m bench.link [--runs N]` runs this scenario alone and prints its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bench import outputs, stats
from bench.procs import Fleet
from bench.report import machine
from bench.stage import body, stage
from bench.timeline import Panel, Row, plot
from consumer.sandbox import CallRecord
from consumer.sandbox.link import LinkConfig, sandbox_link

LIMIT_S = 1.0
BACKLOG = 40
JITTER_S = 0.01  # each way
RTTS_MS = (0, 50, 150, 300)
RULES = ("send", "finish")
RUNS = 2
SETTLED_AFTER = (
    10  # calls: `steady_utilization` leaves out the first ones, where the link is learned
)


class _RuleFleet(Fleet):
    """A fleet whose workers use one pacing rule."""

    def __init__(self, workdir: Path, st: Any, url: str, rule: str) -> None:
        super().__init__(workdir, st.sandbox, url, st.queue)
        self.rule = rule

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        return super()._env(extra) | {"RECALL_PACING": self.rule}


@contextlib.asynccontextmanager
async def _through(url: str, rtt_ms: int) -> AsyncIterator[str]:
    if rtt_ms == 0:  # loopback: no proxy at all, as today
        yield url
        return
    config = LinkConfig(one_way_s=rtt_ms / 2000, jitter_s=JITTER_S)
    async with sandbox_link(url, config) as linked:
        yield linked


def _drained(backlog: int) -> Callable[[list[CallRecord]], bool]:
    return lambda calls: len({c.task_id for c in calls if c.code in (0, 90050)}) >= backlog


def key(rtt_ms: int) -> str:
    """The results key of a link."""
    return "loopback" if rtt_ms == 0 else f"{rtt_ms}ms"


async def one_run(
    workdir: Path, rtt_ms: int, rule: str, ready: asyncio.Barrier, backlog: int = BACKLOG
) -> tuple[dict[str, Any], list[CallRecord]]:
    """A backlog of `backlog` requests drained by one worker using `rule` behind the link; the
    backlog is published once every run of the round has its worker ready (`ready`)."""
    async with stage(workdir, LIMIT_S) as st:
        base_url = str(st.fleet._url)  # the stage's own sandbox
        async with _through(base_url, rtt_ms) as url, _RuleFleet(workdir, st, url, rule) as fleet:
            tasks = [st.sandbox.create_task() for _ in range(backlog)]
            child = await fleet.worker(f"{key(rtt_ms)}-{rule}", LIMIT_S)
            await child.ready()
            await ready.wait()
            await st.backlog([body(t) for t in tasks])
            await st.wait_calls(_drained(backlog), timeout=backlog * 2 + 30)
            calls = st.calls()
    figures = {
        "utilization": stats.utilization(calls, 1 / LIMIT_S),
        "steady_utilization": stats.utilization(calls[SETTLED_AFTER:], 1 / LIMIT_S),
        "too_frequent": stats.too_frequent(calls),
        "min_gap_s": stats.min_gap(calls),
        "calls": len(calls),
        "codes": stats.codes(calls),
    }
    return figures, calls


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One rule on one link over the rounds: the median and the worst, and every round."""
    utilizations = [r["utilization"] for r in runs if r["utilization"] is not None]
    steady = [r["steady_utilization"] for r in runs if r["steady_utilization"] is not None]
    gaps = [r["min_gap_s"] for r in runs if r["min_gap_s"] is not None]
    return {
        "utilization": round(statistics.median(utilizations), 4) if utilizations else None,
        "utilization_min": min(utilizations, default=None),
        "steady_utilization": round(statistics.median(steady), 4) if steady else None,
        "too_frequent": sum(r["too_frequent"] for r in runs),
        "min_gap_s": min(gaps, default=None),
        "runs": runs,
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def links(
    workdir: Path, rounds: int = RUNS, backlog: int = BACKLOG
) -> tuple[dict[str, Any], list[Panel]]:
    """Every link with both rules, `rounds` times; figures per link and one panel each."""
    runs = [(rtt, rule) for rtt in RTTS_MS for rule in RULES]
    done: dict[tuple[int, str], list[tuple[dict[str, Any], list[CallRecord]]]] = {
        run: [] for run in runs
    }
    load = {"before": _load()}
    for _ in range(rounds):
        ready = asyncio.Barrier(len(runs))
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one_run(workdir, *run, ready, backlog)) for run in runs]
        for run, task in zip(runs, tasks, strict=True):
            done[run].append(task.result())
    load["after"] = _load()
    results: dict[str, Any] = {
        "backlog": backlog,
        "jitter_each_way_s": JITTER_S,
        "rounds": rounds,
        "load_avg_1_5_15": load,
    }
    panels = []
    for rtt in RTTS_MS:
        new, old = (summary([f for f, _ in done[(rtt, rule)]]) for rule in RULES)
        ratio = None
        if new["utilization"] and old["utilization"]:
            ratio = round(new["utilization"] / old["utilization"], 4)
        results[key(rtt)] = new | {"rule": "send", "finish": old, "ratio": ratio}
        title = (
            f"link {key(rtt)} (±{JITTER_S * 1000:g} ms each way): {backlog} requests, 1 call/s, "
            f"send rule {new['utilization']} vs finish rule {old['utilization']} "
            f"(median of {rounds})"
        )
        rows = []
        for n in range(rounds):
            for rule in RULES:
                rows.append(Row(f"{rule} #{n + 1}", _from_first(done[(rtt, rule)][n][1])))
        panels.append(Panel(title, 0.0, rows))
    return results, panels


def _from_first(calls: list[CallRecord]) -> list[CallRecord]:
    start = calls[0].arrived if calls else 0.0
    return [dataclasses.replace(c, arrived=c.arrived - start) for c in calls]


def render(results: dict[str, Any]) -> str:
    """A table: both rules side by side per link (median, worst round, the median after the first
    SETTLED_AFTER calls, 90051s, smallest gap)."""
    head = "rule    util med  util min  steady  90051  min gap"
    lines = [f"link       {head}  |  {head}"]
    for rtt in RTTS_MS:
        r = results[key(rtt)]
        cells = []
        for rule, f in (("send", r), ("finish", r["finish"])):
            cells.append(
                f"{rule:<7} {f['utilization']!s:<8}  {f['utilization_min']!s:<8}  "
                f"{f['steady_utilization']!s:<6}  {f['too_frequent']:<5}  {f['min_gap_s']!s:<7}"
            )
        lines.append(f"{key(rtt):<10} " + "  |  ".join(cells))
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.link")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"rounds (default {RUNS})")
    parser.add_argument("--backlog", type=int, default=BACKLOG, help=f"default {BACKLOG}")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tim-recall-link-"))
    began = time.monotonic()
    results, panels = await links(workdir, args.runs, args.backlog)
    out = outputs.output_dir()
    results = {"source": outputs.source(), "machine": machine(), **results}
    (out / "link.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(panels, out / "link_timeline.png")
    print(render(results))
    load = results["load_avg_1_5_15"]
    print(f"load average before {load['before']}, after {load['after']}")
    took = time.monotonic() - began
    print(f"took {took:.1f} s; {out / 'link.json'}, {out / 'link_timeline.png'}")
    print(f"process logs in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
