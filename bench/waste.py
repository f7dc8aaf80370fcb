"""Calls spent on a mixed workload: valid recalls, duplicates, expired TaskIds, invalid bodies."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import stats
from bench.procs import Child, poll
from bench.stage import OVERWRITE, body, stage

INTERVAL_S = 0.05
FIRST_N = 10  # recalled first; their duplicates come later
IN_BACKLOG_DUPS = 3  # duplicates of the first ones, in the same backlog
SECOND_N = 25
SECOND_DUPS = 2
EXPIRED_N = 8
THREE_DAYS_S = 3 * 86400

INVALID = [
    b"this is not json",
    b"\xff\xfe not utf-8",
    b"[1, 2, 3]",
    json.dumps({"OfflinePushInfo": OVERWRITE}).encode(),  # no TaskId
    json.dumps({"TaskId": "has a space", "OfflinePushInfo": OVERWRITE}).encode(),
    json.dumps({"TaskId": "660cc447_537ed82a_0_0_1", "OfflinePushinfo": OVERWRITE}).encode(),
]


def _expired_task_ids(rng: random.Random, now: float) -> list[str]:
    start = int(now - THREE_DAYS_S)
    return [
        f"{start:08x}_{rng.getrandbits(32):08x}_{rng.getrandbits(60):015x}"
        f"_{rng.getrandbits(32):08x}_{i:06x}"
        for i in range(EXPIRED_N)
    ]


async def _settled(worker: Child, n: int, timeout: float) -> None:
    async def check() -> bool:
        return await worker.settled() >= n

    await poll(check, timeout, f"{n} settled requests", every=0.1)


def _outcomes(worker: Child) -> dict[str, int]:
    counted = Counter(
        f"{e['event'].removeprefix('request_')} {e.get('code')} {e.get('source')} {e.get('reason')}"
        for e in worker.events()
        if e.get("event") in ("request_recalled", "request_dead_lettered")
    )
    return dict(sorted(counted.items()))


async def waste(workdir: Path) -> dict[str, Any]:
    """Two backlogs at a short interval; API calls per request against the least possible."""
    rng = random.Random(20240601)
    async with stage(workdir, INTERVAL_S) as st:
        first = [st.sandbox.create_task() for _ in range(FIRST_N)]
        backlog_a = [body(t) for t in first] + [body(t) for t in first[:IN_BACKLOG_DUPS]]
        await st.backlog(backlog_a)
        worker = await st.fleet.worker("worker", INTERVAL_S, log_level="info")
        await worker.ready()
        await _settled(worker, len(backlog_a), timeout=30)

        second = [st.sandbox.create_task() for _ in range(SECOND_N)]
        now = time.time()
        expired = _expired_task_ids(rng, now)
        for task_id in expired:
            st.sandbox.add_task(task_id, started_at=now - THREE_DAYS_S)
        mixed = [body(t) for t in first + second + expired] + INVALID
        rng.shuffle(mixed)
        backlog_b = mixed + [body(t) for t in second[:SECOND_DUPS]]  # after their originals
        await st.backlog(backlog_b)
        requests = len(backlog_a) + len(backlog_b)
        await _settled(worker, requests, timeout=60)
        calls = st.calls()
        outcomes = _outcomes(worker)

    valid = set(first) | set(second)
    duplicates = IN_BACKLOG_DUPS + FIRST_N + SECOND_DUPS
    minimum = requests - duplicates - len(expired) - len(INVALID)
    per_task = Counter(c.task_id for c in calls)
    return {
        "calls_per_request": round(len(calls) / requests, 3),
        "requests": requests,
        "calls": len(calls),
        "minimum_calls": minimum,
        "excess_calls": len(calls) - minimum,
        "mix": {
            "valid": len(valid),
            "duplicates_after_recall": FIRST_N,
            "duplicates_in_backlog": IN_BACKLOG_DUPS + SECOND_DUPS,
            "expired": len(expired),
            "invalid": len(INVALID),
        },
        "calls_by_kind": {
            "valid_first": sum(1 for t in valid if per_task[t]),
            "valid_repeat": sum(max(0, per_task[t] - 1) for t in valid),
            "expired": sum(per_task[t] for t in expired),
            "other": sum(n for t, n in per_task.items() if t not in valid and t not in expired),
        },
        "codes": stats.codes(calls),
        "outcomes": outcomes,
    }
