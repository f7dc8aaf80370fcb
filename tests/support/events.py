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


def crashed_recall(task_id: str, message_id: str, lineage: str) -> ResultEvent:
    """The event a worker published for its recall of `task_id` just before it crashed, the
    delivery (`message_id` of the chain `lineage`) still unacked."""
    now = time.time()
    return ResultEvent(
        task_id=task_id,
        outcome="recalled",
        error_code=0,
        source="api",
        attempts=1,
        message_id=message_id,
        lineage=lineage,
        first_seen=datetime.fromtimestamp(now - 1, UTC),
        settled_at=datetime.fromtimestamp(now, UTC),
        has_offline_push_info=True,
    )
