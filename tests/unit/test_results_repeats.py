"""consumer/ops/reports.py's Repeats: each chain's results event shown once, in bounded memory."""

from __future__ import annotations

from datetime import UTC, datetime

from consumer.ops.reports import Repeats
from schemas.events import ResultEvent

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def event(lineage: str | None, task_id: str = "t") -> ResultEvent:
    return ResultEvent(
        task_id=task_id,
        outcome="recalled",
        error_code=0,
        source="api",
        attempts=1,
        lineage=lineage,
        first_seen=NOW,
        settled_at=NOW,
    )


def test_a_chain_published_twice_is_shown_once() -> None:
    repeats = Repeats()
    shown = [e for e in (event("a"), event("b"), event("a"), event("c")) if not repeats.repeated(e)]
    assert [e.lineage for e in shown] == ["a", "b", "c"]
    assert repeats.count == 1


def test_events_without_a_lineage_are_all_shown() -> None:
    repeats = Repeats()
    assert not any(repeats.repeated(event(None)) for _ in range(3))
    assert repeats.count == 0


def test_the_window_forgets_the_oldest_lineage_first() -> None:
    repeats = Repeats(window=2)
    for lineage in ("a", "b", "a", "c"):  # "a" seen again: it is now newer than "b"
        repeats.repeated(event(lineage))
    assert repeats.repeated(event("a"))  # kept
    assert not repeats.repeated(event("b"))  # forgotten when "c" came
