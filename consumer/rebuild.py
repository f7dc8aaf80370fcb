"""Rebuild the 24-hour memory from the results stream, bounded in time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractConnection

from consumer.memory import RECALL_WINDOW_S, RecallMemory
from consumer.settle import SETTLE_ERRORS
from consumer.stream import read_results


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild read and kept."""

    events: int
    entries: int
    seconds: float
    complete: bool
    error: str | None = None

    def as_log(self) -> dict[str, Any]:
        """Fields for the memory_rebuilt event."""
        fields: dict[str, Any] = {
            "events": self.events,
            "recalled": self.entries,
            "seconds": round(self.seconds, 3),
        }
        if self.error is not None:
            fields["error"] = self.error
        return fields


async def rebuild_memory(
    connection: AbstractConnection,
    stream: str,
    memory: RecallMemory,
    now: float,
    *,
    budget_s: float = 60.0,
) -> RebuildReport:
    """Clear `memory` and read the last 24 h of `stream` into it, within `budget_s`."""
    started = time.monotonic()
    since = datetime.fromtimestamp(now - RECALL_WINDOW_S, UTC)
    memory.clear()
    count = 0

    async def read() -> None:
        nonlocal count
        async for event in read_results(connection, stream, since):
            count += 1
            memory.remember_event(event, now)

    try:
        await asyncio.wait_for(read(), budget_s)
    except (TimeoutError, *SETTLE_ERRORS) as exc:
        # Without the memory we may spend a call on a duplicate; the API still answers 90050.
        return RebuildReport(
            count, len(memory), time.monotonic() - started, False, type(exc).__name__
        )
    return RebuildReport(count, len(memory), time.monotonic() - started, True)
