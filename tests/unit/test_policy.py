"""consumer/core/policy.py: the outcome table, one row per answer."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.core.policy import (
    Action,
    History,
    Outcome,
    action_for,
    classify,
    may_have_taken_effect,
    probe_passed,
)
from consumer.core.results import ApiAnswer, ApiResult, FailureKind, TransportFailure

FRESH = History()
RENEWED = History(calls=1, renewed_usersig=True)
REACHED = History(calls=1, may_have_reached=True)


def fail(kind: FailureKind, status: int | None = None) -> TransportFailure:
    return TransportFailure(kind, "detail", http_status=status)


def row(
    result: ApiResult | int,
    outcome: Outcome,
    *,
    history: History = FRESH,
    interval: float = 1.0,
    **expect: Any,
) -> Any:
    answer = ApiAnswer(result, "info") if isinstance(result, int) else result
    if isinstance(result, TransportFailure):
        name = f"{result.kind}-{result.http_status}"
    else:
        name = str(result)
    if history is not FRESH:
        name += "-renewed" if history.renewed_usersig else "-reached"
    if interval != 1.0:
        name += f"-interval{interval}"
    return pytest.param(answer, history, interval, outcome, expect, id=name)


HALT_CODES = [90009, 60004, 60005, 60006, 60010, 60012, 60016, 60020, 60021]
HALT_CODES += [70002, 70003, 70005, 70009, 70013, 70014, 70016, 70020]
RETRY_BACKOFF: dict[str, Any] = {"backoff": True}
AT_ONCE_RENEW: dict[str, Any] = {"min_wait_s": 0.0, "backoff": False, "renew_usersig": True}

TABLE = [
    row(0, Outcome.RECALLED, renew_usersig=False),
    # Quota codes back off with jitter (another system shares the app), never below 1 s.
    *(
        row(c, Outcome.RETRY, min_wait_ge=1.0, backoff=True)
        for c in (90051, 60007, 60011, 60018, 60019)
    ),
    row(90051, Outcome.RETRY, interval=2.5, min_wait_ge=2.5),
    row(60019, Outcome.RETRY, interval=0.5, min_wait_ge=1.0),
    *(row(c, Outcome.RETRY, **RETRY_BACKOFF) for c in (91000, 60008, 70169, 70500)),
    *(
        row(fail(k), Outcome.RETRY, **RETRY_BACKOFF)
        for k in FailureKind
        if k is not FailureKind.HTTP_STATUS
    ),
    *(row(fail(FailureKind.HTTP_STATUS, s), Outcome.RETRY, **RETRY_BACKOFF) for s in (500, 502)),
    *(row(fail(FailureKind.HTTP_STATUS, s), Outcome.RETRY, **RETRY_BACKOFF) for s in (503, 429)),
    *(row(fail(FailureKind.HTTP_STATUS, s), Outcome.HALT) for s in (400, 403, 404)),
    row(70001, Outcome.RETRY, **AT_ONCE_RENEW),
    row(70052, Outcome.RETRY, **AT_ONCE_RENEW),
    row(70001, Outcome.HALT, history=RENEWED, renew_usersig=False),
    row(70052, Outcome.HALT, history=RENEWED, renew_usersig=False),
    row(70050, Outcome.RETRY, min_wait_ge=60.0),
    *(row(c, Outcome.DEAD_LETTER) for c in (90049, 90052, 90053, 90001)),
    row(90049, Outcome.DEAD_LETTER, history=REACHED),
    row(90050, Outcome.DEAD_LETTER),
    row(90050, Outcome.RECALLED, history=REACHED),
    *(row(c, Outcome.HALT, renew_usersig=False) for c in HALT_CODES),
    row(12345, Outcome.DEAD_LETTER, reason="unknown_code"),
    row(90099, Outcome.DEAD_LETTER, reason="unknown_code"),
]


@pytest.mark.parametrize(("result", "history", "interval", "outcome", "expect"), TABLE)
def test_outcome_table(
    result: ApiResult, history: History, interval: float, outcome: Outcome, expect: dict[str, Any]
) -> None:
    decision = classify(result, history, interval)
    assert decision.outcome is outcome
    assert decision.reason
    if outcome is not Outcome.RETRY:
        assert decision.min_wait_s == 0.0
        assert decision.backoff is False
    if "min_wait_ge" in expect:
        assert decision.min_wait_s >= expect["min_wait_ge"]
    for field in ("min_wait_s", "backoff", "renew_usersig", "reason"):
        if field in expect:
            assert getattr(decision, field) == expect[field], field


@pytest.mark.parametrize(
    ("outcome", "action"),
    [
        (Outcome.RECALLED, Action.ACK),
        (Outcome.DEAD_LETTER, Action.DEAD_LETTER),
        (Outcome.RETRY, Action.REPUBLISH),
        (Outcome.HALT, Action.RELEASE),
        (Outcome.RELEASED, Action.RELEASE),
        (Outcome.ALREADY_SETTLED, Action.ACK_ONLY),
    ],
)
def test_action_for(outcome: Outcome, action: Action) -> None:
    assert action_for(outcome) is action


@pytest.mark.parametrize("kind", list(FailureKind))
def test_may_have_arrived_false_only_for_connect(kind: FailureKind) -> None:
    assert fail(kind).may_have_arrived is (kind is not FailureKind.CONNECT)


@pytest.mark.parametrize(
    ("result", "passed"),
    [
        (ApiAnswer(90049, "no such task"), True),
        (ApiAnswer(0, ""), True),
        (ApiAnswer(70003, "bad sig"), False),
        (ApiAnswer(70001, "expired again, with a fresh signature"), False),
        (ApiAnswer(90009, "not admin"), False),
        # Counted by the revoke service only after identity and signature passed: a busy fleet.
        (ApiAnswer(90051, "too frequent"), True),
        (ApiAnswer(60019, "gateway limit, may come before auth"), False),
        (ApiAnswer(91000, "internal"), False),
        (TransportFailure(FailureKind.HTTP_STATUS, "HTTP 502", http_status=502), False),
        (TransportFailure(FailureKind.TIMEOUT, "timeout"), False),
    ],
)
def test_probe_passes_only_on_an_answer_past_the_identity_checks(
    result: ApiResult, passed: bool
) -> None:
    assert probe_passed(result) is passed


@pytest.mark.parametrize(
    ("result", "effect"),
    [
        (ApiAnswer(0, ""), True),
        (ApiAnswer(91000, "internal: may have recalled before failing"), True),
        (ApiAnswer(70500, "internal"), True),
        (ApiAnswer(12345, "unknown"), True),
        *((ApiAnswer(c, "refused"), False) for c in (90049, 90050, 90051, 90052, 90053, 90001)),
        *((ApiAnswer(c, "refused"), False) for c in (70001, 70003, 70050, 90009, 60020)),
        (TransportFailure(FailureKind.CONNECT, "refused"), False),
        (TransportFailure(FailureKind.TIMEOUT, "sent, no answer"), True),
        (TransportFailure(FailureKind.HTTP_STATUS, "HTTP 502", http_status=502), True),
    ],
)
def test_may_have_taken_effect(result: ApiResult, effect: bool) -> None:
    # A call refused before it could act must not make a later 90050 count as ours.
    assert may_have_taken_effect(result) is effect
