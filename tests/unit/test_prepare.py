"""consumer/core/prepare.py: duplicate suppression, the local 24-hour check, the default
overwrite."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumer.core.memory import RecallMemory
from consumer.core.prepare import (
    PrepareRules,
    Proceed,
    Refuse,
    prepare,
    task_start_time,
)
from schemas.recall import OfflinePushInfo, RecallRequest

TASK_ID = "660cc447_537ed82a_200000cd7ee17f5_84035729_bc614e"
START = float(0x660CC447)  # 2024-04-03
DAY = 86400.0
MARGIN = 300.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def request(task_id: str = TASK_ID, info: OfflinePushInfo | None = None) -> RecallRequest:
    return RecallRequest.model_validate(
        {"TaskId": task_id, **({"OfflinePushInfo": info} if info else {})}
    )


@pytest.mark.parametrize(
    ("task_id", "now", "expected"),
    [
        (TASK_ID, START + 3600, START),
        (TASK_ID, START, START),
        (TASK_ID, START + 29 * DAY, START),
        (TASK_ID, START - 299, START),
        (TASK_ID, START - 301, None),
        (TASK_ID, START + 31 * DAY, None),
        ("660cc44_537ed82a", START, None),
        ("660cc4470_537ed82a", START, None),
        ("660cc447", START, START),
        ("660CC447_x", START, START),
        ("zz0cc447_537ed82a", START, None),
        ("", START, None),
        ("00000000_1", START, None),
    ],
)
def test_task_start_time(task_id: str, now: float, expected: float | None) -> None:
    assert task_start_time(task_id, now) == expected


def test_recalled_in_memory_is_refused_as_90050_naming_the_time() -> None:
    memory = RecallMemory()
    now = START + 3600
    memory.remember(TASK_ID, START + 60, now)
    result = prepare(request(), now - 10, memory, PrepareRules(), now)
    assert isinstance(result, Refuse)
    assert result.code == 90050
    assert iso(START + 60) in result.info
    assert isinstance(prepare(request("other_task"), now, memory, PrepareRules(), now), Proceed)


def test_a_task_answered_90052_is_refused_locally_within_the_window() -> None:
    memory = RecallMemory()
    now = START + 3600
    memory.remember_expired("opaque", START + 60, now)
    result = prepare(request("opaque"), now - 10, memory, PrepareRules(), now)
    assert isinstance(result, Refuse)
    assert (result.code, result.reason) == (90052, "expired")
    assert iso(START + 60) in result.info
    later = now + DAY  # the memory forgot it: the API decides again
    assert isinstance(prepare(request("opaque"), later, memory, PrepareRules(), later), Proceed)


def test_the_amqp_timestamp_bounds_the_window_check() -> None:
    # An undecodable TaskId first seen just now, but published more than a day ago.
    now = START + 40 * DAY
    old = now - DAY - MARGIN - 1
    result = prepare(request("opaque"), now, RecallMemory(), PrepareRules(), now, published_at=old)
    assert isinstance(result, Refuse)
    assert result.code == 90052
    recent = prepare(
        request("opaque"), now, RecallMemory(), PrepareRules(), now, published_at=now - 60
    )
    assert isinstance(recent, Proceed)


def test_told_messages_are_forgotten_after_24_hours() -> None:
    memory = RecallMemory()
    memory.remember_told("m-1", START, START)
    assert memory.was_told("m-1", START + DAY - 1)
    assert not memory.was_told("m-1", START + DAY + 1)
    memory.prune(START + DAY + 1)
    memory.remember_told("m-2", START + DAY + 1, START + DAY + 1)
    assert not memory.was_told("m-1", START + DAY + 1)


@pytest.mark.parametrize(
    ("rules", "first_seen_ago", "since_start", "refused"),
    [
        (PrepareRules(), 10, DAY + MARGIN + 1, True),
        (PrepareRules(), 10, DAY + MARGIN, False),
        (PrepareRules(), 10, DAY + MARGIN - 1, False),
        (PrepareRules(expiry_margin_s=0), 10, DAY + 1, True),
        (PrepareRules(expiry_check=False), 10, DAY + MARGIN + 3600, False),
        (PrepareRules(expiry_check=False), DAY + MARGIN + 1, DAY + MARGIN + 3600, True),
        (PrepareRules(), DAY + MARGIN + 1, 3600, True),
    ],
    ids=[
        "past-margin",
        "at-margin",
        "within-margin",
        "no-margin",
        "no-expiry-check",
        "no-expiry-check-but-first-seen-old",
        "first-seen-earlier-than-taskid-time",
    ],
)
def test_local_window_check(
    rules: PrepareRules, first_seen_ago: float, since_start: float, refused: bool
) -> None:
    now = START + since_start
    result = prepare(request(), now - first_seen_ago, RecallMemory(), rules, now)
    if refused:
        assert isinstance(result, Refuse)
        assert result.code == 90052
        opened = min(now - first_seen_ago, START) if rules.expiry_check else now - first_seen_ago
        assert iso(opened + DAY) in result.info
    else:
        assert isinstance(result, Proceed)


def test_undecodable_task_id_proceeds() -> None:
    now = START + 10 * DAY
    result = prepare(request("not-a-time_x"), now - 60, RecallMemory(), PrepareRules(), now)
    assert isinstance(result, Proceed)


@pytest.mark.parametrize(
    ("own", "expected_title"), [(None, "default"), (OfflinePushInfo(Title="own"), "own")]
)
def test_default_overwrite_only_when_none_given(
    own: OfflinePushInfo | None, expected_title: str
) -> None:
    rules = PrepareRules(default_offline_push_info=OfflinePushInfo(Title="default"))
    now = START + 60
    result = prepare(request(info=own), now, RecallMemory(), rules, now)
    assert isinstance(result, Proceed)
    assert result.request.api_body()["OfflinePushInfo"] == {"Title": expected_title}


def test_no_default_leaves_the_request_alone() -> None:
    now = START + 60
    result = prepare(request(), now, RecallMemory(), PrepareRules(), now)
    assert isinstance(result, Proceed)
    assert result.request.api_body() == {"TaskId": TASK_ID}


def test_memory_forgets_after_24_hours_and_stays_bounded() -> None:
    memory = RecallMemory()
    t0 = START
    memory.remember("a", t0, t0)
    memory.remember("b", t0 + 10, t0 + 10)
    assert memory.recalled_at("a", t0 + DAY) == t0
    now = t0 + DAY + 5
    assert memory.recalled_at("a", now) is None
    assert memory.recalled_at("b", now) == t0 + 10
    memory.prune(now)
    assert len(memory) == 1
    # one recall every 10 minutes for 3 days: never more than a day's worth remembered
    for i in range(3 * 144):
        at = t0 + 2 * DAY + i * 600
        memory.remember(f"task-{i}", at, at)
        assert len(memory) <= 145


def test_memory_keeps_the_earliest_time_and_ignores_stale_entries() -> None:
    memory = RecallMemory()
    now = START + 1000
    memory.remember("a", START + 200, now)
    memory.remember("a", START + 100, now)
    memory.remember("a", START + 300, now)
    assert memory.recalled_at("a", now) == START + 100
    memory.remember("old", now - DAY - 1, now)
    assert memory.recalled_at("old", now) is None
    assert len(memory) == 1
