"""Results events as a worker publishes them, for tests that put them in a stream themselves."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from schemas.events import ResultEvent


def event(
    outcome: str = "recalled",
    code: int = 0,
    source: str = "api",
    task_id: str | None = None,
    lineage: str | None = None,
    at: float | None = None,
) -> ResultEvent:
    """A results event settled `at` (now), with a TaskId and lineage of its own unless given."""
    when = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return ResultEvent(
        task_id=task_id if task_id is not None else f"task-{uuid.uuid4().hex}",
        outcome=outcome,  # type: ignore[arg-type]
        error_code=code,
        source=source,  # type: ignore[arg-type]
        attempts=1 if source == "api" else 0,
        lineage=lineage or str(uuid.uuid4()),
        first_seen=when,
        settled_at=when,
    )
