"""consumer/core/memory.py: windows, lineages told, expired TaskIds, the ceiling and what goes
first."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumer.core.memory import RANKS, RecallMemory
from schemas.events import ResultEvent

NOW = 1_800_000_000.0
DAY = 24 * 3600.0


def event(
    outcome: str = "recalled",
    code: int = 0,
    source: str = "api",
    task_id: str | None = "T",
    lineage: str | None = "L",
    at: float = NOW,
) -> ResultEvent:
    when = datetime.fromtimestamp(at, UTC)
    return ResultEvent(
        task_id=task_id,
        outcome=outcome,  # type: ignore[arg-type]
        error_code=code,
        source=source,  # type: ignore[arg-type]
        attempts=1 if source == "api" else 0,
        lineage=lineage,
        first_seen=when,
        settled_at=when,
    )


def test_window_of_24_hours() -> None:
    memory = RecallMemory()
    memory.remember("T", NOW, NOW)
    memory.remember_told("L", NOW, NOW)
    assert memory.recalled_at("T", NOW + DAY - 1) == NOW
    assert memory.was_told("L", NOW + DAY - 1)
    assert memory.recalled_at("T", NOW + DAY + 1) is None
    assert not memory.was_told("L", NOW + DAY + 1)
    memory.remember("too-old", NOW - DAY - 1, NOW)  # never held
    assert len(memory) == 2
    memory.prune(NOW + DAY + 1)
    assert len(memory) == 0


def test_told_is_keyed_on_the_lineage_not_the_message_id() -> None:
    memory = RecallMemory()
    memory.remember_event(event("dead_lettered", 90053, lineage="L-dead"), NOW)
    assert memory.for_app(None).was_told("L-dead", NOW)
    assert not memory.for_app(None).was_told("L-replay", NOW)
    assert memory.for_app(None).recalled_at("T", NOW) is None


def test_an_event_without_a_lineage_records_no_told_entry() -> None:
    memory = RecallMemory()
    memory.remember_event(event(lineage=None), NOW)
    assert memory.sizes() == {**dict.fromkeys(RANKS, 0), "recalled": 1}


@pytest.mark.parametrize(("source", "rank"), [("api", "expired"), ("local", "expired_local")])
def test_a_90052_is_remembered_like_a_recall(source: str, rank: str) -> None:
    memory = RecallMemory()
    memory.remember_event(event("dead_lettered", 90052, source, task_id="gone"), NOW)
    assert memory.for_app(None).expired_at("gone", NOW + 10) == NOW
    assert memory.for_app(None).recalled_at("gone", NOW + 10) is None
    assert memory.sizes()[rank] == 1
    assert memory.for_app(None).expired_at("gone", NOW + DAY + 1) is None


def test_other_dead_letters_remember_no_task_id() -> None:
    memory = RecallMemory()
    memory.remember_event(event("dead_lettered", 90049, task_id="unknown"), NOW)
    assert memory.for_app(None).expired_at("unknown", NOW) is None
    assert memory.for_app(None).recalled_at("unknown", NOW) is None
    assert len(memory) == 1  # the told lineage


def test_the_ceiling_holds_and_evicts_oldest_first() -> None:
    memory = RecallMemory(max_entries=3)
    for i in range(5):
        memory.remember_told(f"L{i}", NOW + i, NOW + i)
    assert len(memory) == 3
    assert [memory.was_told(f"L{i}", NOW + 5) for i in range(5)] == [False] * 2 + [True] * 3
    assert memory.evicted["told"] == 2


def test_a_flood_of_refusals_never_evicts_a_recall_while_refusals_remain() -> None:
    memory = RecallMemory(max_entries=1000)
    for i in range(100):
        memory.remember(f"recalled-{i}", NOW, NOW)
        memory.remember_told(f"called-{i}", NOW, NOW)
        memory.remember_expired(f"expired-{i}", NOW, NOW)
    for i in range(100_000):  # duplicates and invalid bodies, all refused locally
        at = NOW + i * 0.001
        memory.remember_event(
            event("dead_lettered", 90001, "local", task_id=None, lineage=f"flood-{i}", at=at),
            at,
        )
    later = NOW + 100
    assert all(memory.recalled_at(f"recalled-{i}", later) == NOW for i in range(100))
    assert all(memory.was_told(f"called-{i}", later) for i in range(100))
    assert all(memory.expired_at(f"expired-{i}", later) == NOW for i in range(100))
    assert len(memory) == 1000
    assert memory.sizes()["told_local"] == 700
    flood = memory.for_app(None)
    assert flood.was_told("flood-99999", later)  # the newest refusals are the ones kept
    assert not memory.for_app(None).was_told("flood-0", later)
    assert memory.evicted == {**dict.fromkeys(RANKS, 0), "told_local": 100_000 - 700}


def test_the_eviction_order_of_the_ranks() -> None:
    memory = RecallMemory(max_entries=5)
    memory.remember("recalled", NOW, NOW)
    memory.remember_expired("expired", NOW, NOW)
    memory.remember_told("told", NOW, NOW)
    memory.remember_expired("expired-local", NOW, NOW, local=True)
    memory.remember_told("told-local", NOW, NOW, local=True)
    order = []
    for i in range(5):
        memory.remember(f"new-{i}", NOW, NOW)  # only recalls left to add
        order.append(next(r for r, n in memory.evicted.items() if n and r not in order))
    assert order == list(RANKS)
    assert memory.sizes() == {**dict.fromkeys(RANKS, 0), "recalled": 5}


def test_a_known_key_does_not_grow_or_evict() -> None:
    memory = RecallMemory(max_entries=2)
    memory.remember("T", NOW, NOW)
    memory.remember_told("L", NOW, NOW)
    for _ in range(10):
        memory.remember("T", NOW + 1, NOW + 1)
    assert len(memory) == 2
    assert sum(memory.evicted.values()) == 0
    assert memory.recalled_at("T", NOW + 1) == NOW  # the first time is kept


def test_clear_forgets_entries_but_keeps_the_counts() -> None:
    memory = RecallMemory(max_entries=1)
    memory.remember_told("a", NOW, NOW)
    memory.remember_told("b", NOW, NOW)
    memory.clear()
    assert len(memory) == 0
    assert memory.evicted["told"] == 1
    assert memory.approx_bytes() == 0


def test_each_app_has_its_own_keys_and_an_unnamed_event_is_the_default_apps() -> None:
    memory = RecallMemory(default_app=1400000001)
    a, b = memory.for_app(1400000001), memory.for_app(1400000002)
    memory.remember_event(
        event(task_id="same", lineage="L").model_copy(update={"sdkappid": 1400000002}), NOW
    )
    assert b.recalled_at("same", NOW) == NOW
    assert b.was_told("L", NOW)
    assert a.recalled_at("same", NOW) is None  # the same TaskId in another app is another task
    assert not a.was_told("L", NOW)
    memory.remember_event(event(task_id="old", lineage="L-old"), NOW)  # written before apps
    assert a.recalled_at("old", NOW) == NOW
    assert b.recalled_at("old", NOW) is None


def test_the_next_slot_follows_the_latest_settle_told() -> None:
    memory = RecallMemory()
    view = memory.for_app(None)
    memory.remember_event(event(at=NOW), NOW, next_call=NOW + 1.0)
    assert (view.last_told_at(), view.next_call_at()) == (NOW, NOW + 1.0)
    memory.remember_event(event(at=NOW - 5), NOW, next_call=NOW - 4.0)  # read late: older
    assert (view.last_told_at(), view.next_call_at()) == (NOW, NOW + 1.0)
    memory.note_call(None, NOW + 2, next_call=NOW + 3.0)  # a call record, later
    assert (view.last_told_at(), view.next_call_at()) == (NOW + 2, NOW + 3.0)
    # A later settle told without a slot (an older replica): the slot we knew is no bound.
    memory.remember_event(event(at=NOW + 4), NOW)
    assert (view.last_told_at(), view.next_call_at()) == (NOW + 4, None)
