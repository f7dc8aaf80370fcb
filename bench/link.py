"""Pacing over a link: a backlog behind 0, 50, 150 and 300 ms round trips (±10 ms per direction),
with the `send` rule and the old `finish` rule side by side, each run with its own sandbox.

`python -m bench.link` runs this scenario alone and prints its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
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


def _drained(calls: list[CallRecord]) -> bool:
    return len({c.task_id for c in calls if c.code in (0, 90050)}) >= BACKLOG


def key(rtt_ms: int) -> str:
    """The results key of a link."""
    return "loopback" if rtt_ms == 0 else f"{rtt_ms}ms"


async def one_run(workdir: Path, rtt_ms: int, rule: str) -> tuple[dict[str, Any], Row]:
    """A backlog of BACKLOG requests drained by one worker using `rule` behind the link."""
    async with stage(workdir, LIMIT_S) as st:
        base_url = str(st.fleet._url)  # the stage's own sandbox
        async with _through(base_url, rtt_ms) as url, _RuleFleet(workdir, st, url, rule) as fleet:
            tasks = [st.sandbox.create_task() for _ in range(BACKLOG)]
            await st.backlog([body(t) for t in tasks])
            child = await fleet.worker(f"{key(rtt_ms)}-{rule}", LIMIT_S)
            await child.ready()
            await st.wait_calls(_drained, timeout=BACKLOG * 2 + 30)
            calls = st.calls()
    figures = {
        "utilization": stats.utilization(calls, 1 / LIMIT_S),
        "too_frequent": stats.too_frequent(calls),
        "min_gap_s": stats.min_gap(calls),
        "calls": len(calls),
        "codes": stats.codes(calls),
    }
    shifted = [dataclasses.replace(c, arrived=c.arrived - calls[0].arrived) for c in calls]
    return figures, Row(f"{rule}", shifted)


async def links(workdir: Path) -> tuple[dict[str, Any], list[Panel]]:
    """Every link with both rules, all side by side; figures per link and one panel each."""
    runs = [(rtt, rule) for rtt in RTTS_MS for rule in RULES]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one_run(workdir, rtt, rule)) for rtt, rule in runs]
    done = {run: t.result() for run, t in zip(runs, tasks, strict=True)}
    results: dict[str, Any] = {"backlog": BACKLOG, "jitter_each_way_s": JITTER_S}
    panels = []
    for rtt in RTTS_MS:
        (new, new_row), (old, old_row) = done[(rtt, "send")], done[(rtt, "finish")]
        ratio = None
        if new["utilization"] and old["utilization"]:
            ratio = round(new["utilization"] / old["utilization"], 4)
        results[key(rtt)] = new | {"rule": "send", "finish": old, "ratio": ratio}
        title = (
            f"link {key(rtt)} (±{JITTER_S * 1000:g} ms each way): {BACKLOG} requests, 1 call/s, "
            f"send rule {new['utilization']} vs finish rule {old['utilization']}"
        )
        panels.append(Panel(title, 0.0, [new_row, old_row]))
    return results, panels


def render(results: dict[str, Any]) -> str:
    """A table: both rules side by side per link."""
    head = "rule    utilization  90051  min gap"
    lines = [f"link       {head}    |  {head}"]
    for rtt in RTTS_MS:
        r = results[key(rtt)]
        f = r["finish"]
        lines.append(
            f"{key(rtt):<10} send    {r['utilization']!s:<11}  {r['too_frequent']:<5}  "
            f"{r['min_gap_s']!s:<9}  |  finish  {f['utilization']!s:<11}  {f['too_frequent']:<5}  "
            f"{f['min_gap_s']}"
        )
    return "\n".join(lines)


async def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tim-recall-link-"))
    began = time.monotonic()
    results, panels = await links(workdir)
    out = outputs.output_dir()
    results = {"source": outputs.source(), "machine": machine(), **results}
    (out / "link.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(panels, out / "link_timeline.png")
    print(render(results))
    print(
        f"took {time.monotonic() - began:.1f} s; {out / 'link.json'}, {out / 'link_timeline.png'}"
    )
    print(f"process logs in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
