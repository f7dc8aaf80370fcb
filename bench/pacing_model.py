"""What a pacing rule can reach over a jittery link: the link and the server as arithmetic, the
worker's own `Pacer` on a fake clock, many backlogs in seconds.

The link is the sandbox link's (consumer/sandbox/link.py): each way half the round trip, ± j
(uniform); the server counts a call on arrival and answers
90051 to one less than the interval after the one before (as the sandbox's limiter: a refused
call counts too). `overhead` is the worker's own time from the pacer's go to the request's last
byte. `held` is load ahead of the counter: a share of calls held up to `held_max` on their way
up (a busy gateway), which the link's jitter bound does not cover; `early_calls` are the first
calls of a backlog all held `early_held_s` (a load that then eases, as the fault suite met it).

Besides `send` and `finish` (the real Pacer), two rules the issue's arithmetic suggests:

- `min-floor`: the next send one interval after the previous send plus that call's round trip
  in excess of the smallest round trip seen so far, plus a margin (the floor taken as the
  smallest round trip, which is above the link's floor until a round trip at its very floor);
- `per_way_cap`: `send`, but the excess capped at 2j, which is safe when every trip up is within
  2j of its own floor: true of the sandbox link, not of a queue ahead of the counter.

`python -m bench.pacing_model [--runs N]` prints the table and writes pacing_model.json; the
figures are reported, not asserted (the model's `send` and `finish` match the link benchmark's
measured medians within 0.003: the README's Performance).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from bench import outputs
from consumer.core.pacing import FLOOR_SAMPLES, Pacer, PacingRule

T = 1.0
JITTER_S = 0.010
RTTS_S = (0.05, 0.15, 0.30)
BACKLOG = 40
RUNS = 200  # backlogs per rule, link and scenario


@dataclasses.dataclass(frozen=True)
class Link:
    """A link and the worker's side of a call (see the module docstring)."""

    rtt_s: float
    jitter_s: float = JITTER_S
    overhead_s: float = 0.0035  # measured on a quiet machine: 0.9 ms timer, 2.6 ms httpx
    held_share: float = 0.0
    held_max_s: float = 0.0
    early_calls: int = 0  # the first calls of a backlog, all held ahead of the counter ...
    early_held_s: float = 0.0  # ... by this much (a load that then eases)

    def trips(self, rng: random.Random, call: int) -> tuple[float, float]:
        """Call number `call`'s trip up (to the counter) and down."""
        one_way, j = self.rtt_s / 2, self.jitter_s
        up = one_way + rng.uniform(-j, j)
        if self.held_share and rng.random() < self.held_share:
            up += rng.uniform(0, self.held_max_s)
        if call < self.early_calls:
            up += self.early_held_s
        return up, one_way + rng.uniform(-j, j)


@dataclasses.dataclass
class Backlog:
    """What the server saw of one backlog."""

    arrivals: list[float] = dataclasses.field(default_factory=list)
    refused: int = 0

    def arrive(self, at: float) -> bool:
        """Count an arrival; True when it is refused (90051)."""
        refused = bool(self.arrivals) and at - self.arrivals[-1] < T
        self.arrivals.append(at)
        self.refused += refused
        return refused

    def utilization(self) -> float:
        """Answered calls per interval over the span, as bench/stats.py counts it."""
        ok = len(self.arrivals) - self.refused
        return (ok - 1) * T / (self.arrivals[-1] - self.arrivals[0])


class _FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


async def _paced(rule: PacingRule, link: Link, n: int, rng: random.Random) -> Backlog:
    """One backlog paced by the worker's own Pacer."""
    time = _FakeTime()
    pacer = Pacer(T, clock=time.now, sleep=time.sleep, rule=rule, jitter_s=link.jitter_s)
    seen = Backlog()
    for call in range(n):
        async with pacer.slot() as slot:
            time.t += link.overhead_s
            slot.request_sent()
            up, down = link.trips(rng, call)
            refused = seen.arrive(time.t + up)
            time.t += up + down
            slot.answer_received()
            slot.answered()
            if refused:
                slot.too_frequent()
    return seen


# A placing rule of the model's own: (previous send, previous round trip, the smallest and the
# recent round trips) -> the earliest next send, before the worker's overhead.
Placing = Callable[[float, float, float, list[float]], float]


def min_floor(margin_s: float) -> Placing:
    """The smallest round trip seen so far taken as the link's floor."""
    return lambda sent, rtt, smallest, recent: sent + T + (rtt - smallest) + margin_s


def per_way_cap(link: Link, margin_s: float = 0.002) -> Placing:
    """`send`'s floor, the excess capped at 2j (the trip up within 2j of its floor)."""
    band = 4 * link.jitter_s

    def place(sent: float, rtt: float, smallest: float, recent: list[float]) -> float:
        inside = sorted(r for r in recent if r <= min(recent) + band)
        if len(inside) < 2:
            return sent + T + 2 * link.jitter_s + margin_s
        excess = rtt - (inside[-2] - band)
        return sent + T + min(excess, 2 * link.jitter_s) + margin_s

    return place


def _placed(place: Placing, link: Link, n: int, rng: random.Random) -> Backlog:
    seen, recent, go = Backlog(), deque[float](maxlen=FLOOR_SAMPLES), 0.0
    smallest = float("inf")
    for call in range(n):
        sent = go + link.overhead_s
        up, down = link.trips(rng, call)
        seen.arrive(sent + up)
        recent.append(up + down)
        smallest = min(smallest, up + down)
        placed = place(sent, up + down, smallest, list(recent))
        go = min(placed, sent + up + down + T)  # never after `finish`
    return seen


def figures(backlogs: list[Backlog]) -> dict[str, Any]:
    """Median and worst utilization, and the share of backlogs with a 90051."""
    used = [b.utilization() for b in backlogs]
    return {
        "utilization": round(statistics.median(used), 4),
        "utilization_min": round(min(used), 4),
        "backlogs_with_90051": round(sum(b.refused > 0 for b in backlogs) / len(backlogs), 4),
    }


def rules(link: Link) -> dict[str, Callable[[int, random.Random], Backlog]]:
    """Every rule the model compares, by name."""
    found: dict[str, Callable[[int, random.Random], Backlog]] = {
        rule.value: lambda n, rng, rule=rule: asyncio.run(_paced(rule, link, n, rng))
        for rule in PacingRule
    }
    for margin_ms in (2, 10, 20):
        place = min_floor(margin_ms / 1000)
        found[f"min-floor+{margin_ms}ms"] = lambda n, rng, p=place: _placed(p, link, n, rng)
    cap = per_way_cap(link)
    found["per_way_cap"] = lambda n, rng: _placed(cap, link, n, rng)
    return found


# key: (what it is, backlog, the link's extras)
SCENARIOS: dict[str, tuple[str, int, dict[str, float]]] = {
    "cold_40": ("a cold backlog of 40 (the link benchmark's)", BACKLOG, {}),
    "backlog_200": ("a backlog of 200: the floor learned, then kept", 200, {}),
    "held_ahead": (
        "a cold backlog of 40, 2 % of calls held up to 20 ms ahead of the counter",
        BACKLOG,
        {"held_share": 0.02, "held_max_s": 0.020},
    ),
    "eased": (
        "a cold backlog of 40, its first 3 calls held 80 ms ahead of the counter (a takeover "
        "next to a busy server), then none",
        BACKLOG,
        {"early_calls": 3, "early_held_s": 0.080},
    ),
}


def run(backlogs: int) -> dict[str, Any]:
    """Every scenario, link and rule over `backlogs` seeded backlogs each."""
    results: dict[str, Any] = {"backlogs": backlogs, "jitter_each_way_s": JITTER_S}
    for scenario, (_, n, extra) in SCENARIOS.items():
        for rtt in RTTS_S:
            link = Link(rtt, **extra)
            for name, drain in rules(link).items():
                done = [drain(n, random.Random(seed)) for seed in range(backlogs)]
                results.setdefault(scenario, {}).setdefault(f"{round(rtt * 1000)}ms", {})[name] = (
                    figures(done)
                )
    return results


def _cell(c: dict[str, Any]) -> str:
    used, worst, refused = c["utilization"], c["utilization_min"], c["backlogs_with_90051"]
    return f"{used:>9.4f} ({worst:.4f}) {refused:>5.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="backlogs per rule and link")
    args = parser.parse_args()
    results = run(args.runs)
    for scenario, links in results.items():
        if not isinstance(links, dict):
            continue
        what = SCENARIOS[scenario][0]
        print(f"\n{what}, {args.runs} each: utilization median (worst), backlogs with a 90051")
        names = list(next(iter(links.values())))
        print(f"{'rule':<18}" + "".join(f"{rtt:>24}" for rtt in links))
        for name in names:
            cells = [links[rtt][name] for rtt in links]
            print(f"{name:<18}" + "".join(_cell(c) for c in cells))
    path = outputs.output_dir() / "pacing_model.json"
    recorded = {"source": outputs.source(), **results}
    path.write_text(json.dumps(recorded, indent=2) + "\n")
    print(f"\nwritten: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
