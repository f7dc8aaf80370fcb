"""consumer/core/verdict.py: the pure decisions of a lane, as tables (like test_policy's)."""

from __future__ import annotations

import json

import pytest

from consumer.core.envelope import Envelope
from consumer.core.policy import Decision, History, Outcome, Reason
from consumer.core.prepare import PrepareRules
from consumer.core.recaller import RecallState
from consumer.core.results import ApiAnswer
from consumer.core.verdict import Verdict, before_call, decide, halting
from schemas.recall import RecallRequest, parse_request

NOW = 1_790_000_000.0
TASK = "6a6f8a80_537ed82a_200000cd7ee17f5_84035729_bc614e"  # started 2026-09-22
DAY = 86_400.0


def envelope(**changes: object) -> Envelope:
    base = Envelope(
        attempts=0, first_seen=NOW, may_have_reached=False, message_id="m", correlation_id=None
    )
    return Envelope(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def request(task_id: str = TASK) -> RecallRequest:
    return parse_request(json.dumps({"TaskId": task_id}).encode())


@pytest.mark.parametrize(
    ("count", "raw", "expected"),
    [
        (0, b'{"TaskId":"t"}', None),  # a request: call for it
        (18, b'{"TaskId":"t"}', None),  # returned often, but not yet at the last chance
        (19, b'{"TaskId":"t"}', (99997, Reason.DELIVERY_LIMIT)),  # one return from the limit
        (19, b"not json", (99997, Reason.DELIVERY_LIMIT)),  # the limit goes first
        (0, b"not json", (90001, Reason.INVALID)),
        (0, b'{"TaskId":""}', (90001, Reason.INVALID)),
        (0, b"x" * 70_000, (90001, Reason.INVALID)),  # over the size limit, unread
    ],
)
def test_before_call(count: int, raw: bytes, expected: tuple[int, Reason] | None) -> None:
    got = before_call(envelope(delivery_count=count), raw, delivery_limit=20, max_body_bytes=65536)
    if expected is None:
        assert isinstance(got, RecallRequest)
    else:
        assert isinstance(got, Verdict)
        assert (got.code, got.reason, got.outcome, got.source) == (
            *expected,
            Outcome.DEAD_LETTER,
            "local",
        )


def state(
    outcome: Outcome, reason: Reason, *, sent: int, code: int | None = None, calls: int = 0
) -> RecallState:
    return RecallState(
        history=History(calls=calls, may_have_reached=calls > 0),
        last=ApiAnswer(code, "info") if code is not None else None,
        decision=Decision(outcome, reason),
        sent=sent,
    )


@pytest.mark.parametrize(
    ("given", "stopping", "first_seen", "expected"),
    [
        # What the calls came to, as the last decision says.
        (state(Outcome.RECALLED, Reason.RECALLED, sent=1, code=0, calls=1), False, NOW,
         (Outcome.RECALLED, Reason.RECALLED, 0, "api")),
        (state(Outcome.DEAD_LETTER, Reason.PERMANENT, sent=1, code=90049, calls=1), False, NOW,
         (Outcome.DEAD_LETTER, Reason.PERMANENT, 90049, "api")),
        (state(Outcome.HALT, Reason.CONFIGURATION, sent=1, code=70003, calls=1), False, NOW,
         (Outcome.HALT, Reason.CONFIGURATION, 70003, "api")),
        # No call made: released, saying why.
        (state(Outcome.RETRY, Reason.NOT_CALLED, sent=0), True, NOW,
         (Outcome.RELEASED, Reason.SHUTDOWN, None, "local")),
        (state(Outcome.RETRY, Reason.NOT_CALLED, sent=0), False, NOW,
         (Outcome.RELEASED, Reason.DISCONNECTED, None, "local")),
        # Retries spent: re-published, unless the window surely closed meanwhile.
        (state(Outcome.RETRY, Reason.TRANSIENT, sent=3, code=91000, calls=3), False, NOW,
         (Outcome.RETRY, Reason.TRANSIENT, 91000, "api")),
        (state(Outcome.RETRY, Reason.TRANSIENT, sent=3, code=91000, calls=3), False, NOW - 2 * DAY,
         (Outcome.DEAD_LETTER, Reason.EXPIRED, 90052, "local")),
    ],
)  # fmt: skip
def test_decide(
    given: RecallState, stopping: bool, first_seen: float, expected: tuple[object, ...]
) -> None:
    rules = PrepareRules(expiry_check=False)
    verdict = decide(
        request(), envelope(first_seen=first_seen), given, rules, NOW, stopping=stopping
    )
    assert (verdict.outcome, verdict.reason, verdict.code, verdict.source) == expected
    assert verdict.task_id == TASK


@pytest.mark.parametrize(
    ("halted_at", "probe_passed_at", "outcome"),
    [
        (None, None, Outcome.HALT),  # its first halt
        (None, NOW, Outcome.HALT),
        (NOW - 10, NOW - 60, Outcome.HALT),  # our probe passed before its own halt
        (NOW - 60, NOW - 10, Outcome.DEAD_LETTER),  # a probe passed since: its own fault
    ],
)
def test_halting_is_judged_on_the_request(
    halted_at: float | None, probe_passed_at: float | None, outcome: Outcome
) -> None:
    halt = Verdict(Outcome.HALT, 403, "HTTP 403", "api", 1, Reason.HTTP_STATUS, False, TASK)
    got = halting(halt, envelope(halted_at=halted_at), probe_passed_at)
    assert got.outcome is outcome
    assert got.reason is (Reason.HALTED_AGAIN if outcome is Outcome.DEAD_LETTER else halt.reason)
    recalled = Verdict(Outcome.RECALLED, 0, "", "api", 1, Reason.RECALLED, True, TASK)
    assert halting(recalled, envelope(halted_at=NOW - 60), NOW) is recalled
