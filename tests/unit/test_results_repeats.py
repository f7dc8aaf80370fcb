"""consumer/ops/reports.py's Repeats: each chain's results event shown once, in bounded memory."""

from __future__ import annotations

from consumer.ops.reports import Repeats
from schemas.events import ResultEvent
from tests.support.events import event


def of(lineage: str | None) -> ResultEvent:
    """An event of the chain `lineage` (None: an older version's event, with no lineage)."""
    return event(task_id="t", at=0).model_copy(update={"lineage": lineage})


def test_a_chain_published_twice_is_shown_once() -> None:
    repeats = Repeats()
    shown = [e for e in map(of, ["a", "b", "a", "c"]) if not repeats.repeated(e)]
    assert [e.lineage for e in shown] == ["a", "b", "c"]
    assert repeats.count == 1


def test_events_without_a_lineage_are_all_shown() -> None:
    repeats = Repeats()
    assert not any(repeats.repeated(of(None)) for _ in range(3))
    assert repeats.count == 0


def test_the_window_forgets_the_oldest_lineage_first() -> None:
    repeats = Repeats(window=2)
    for lineage in ("a", "b", "a", "c"):  # "a" seen again: it is now newer than "b"
        repeats.repeated(of(lineage))
    assert repeats.repeated(of("a"))  # kept
    assert not repeats.repeated(of("b"))  # forgotten when "c" came
