"""What one delivery comes to: `Verdict`, and the pure decisions a lane makes about it.

`before_call` decides what needs no call (a body that is no request, a delivery the broker would
drop at its next return); `decide` what the calls came to (tested as a table, like `classify`);
`halting` whether a halt answer halts the lane or is the request's own fault.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from consumer.core.envelope import Envelope
from consumer.core.policy import (
    DELIVERY_LIMIT_REACHED,
    Outcome,
    Reason,
    halted_again,
)
from consumer.core.prepare import PrepareRules, Refuse, window_closed
from consumer.core.recaller import RecallState
from schemas.api import ErrorCode
from schemas.recall import InvalidRequest, RecallRequest, parse_request


@dataclass(frozen=True)
class Verdict:
    """What one delivery came to, ready to be settled and told."""

    outcome: Outcome
    code: int | None
    info: str
    source: Literal["api", "local"]
    attempts: int
    reason: Reason
    may_have_reached: bool
    task_id: str | None
    has_offline_push_info: bool = False


def local(refusal: Refuse, envelope: Envelope, request: RecallRequest | None) -> Verdict:
    """A dead letter decided here, with no call (source `local`), with the refusal's code."""
    return replace(
        no_call(Outcome.DEAD_LETTER, refusal.reason, envelope, request),
        code=refusal.code,
        info=refusal.info,
    )


def no_call(
    outcome: Outcome, reason: Reason, envelope: Envelope, request: RecallRequest | None
) -> Verdict:
    """An outcome with no call and no answer (source `local`): nothing to say but the reason."""
    return Verdict(
        outcome=outcome,
        code=None,
        info=reason,
        source="local",
        attempts=envelope.attempts,
        reason=reason,
        may_have_reached=envelope.may_have_reached,
        task_id=request.task_id if request else None,
        has_offline_push_info=bool(request and request.offline_push_info is not None),
    )


def before_call(
    envelope: Envelope, body: bytes, *, delivery_limit: int, max_body_bytes: int
) -> Verdict | RecallRequest:
    """The request to call for, or what is decided before anything is copied or called."""
    if envelope.delivery_count >= delivery_limit - 1:
        info = (
            f"returned to the queue {envelope.delivery_count} times (delivery limit "
            f"{delivery_limit}): dead-lettered before the broker drops it unseen; see the "
            "delivery_failed and settle_failed events"
        )
        return local(Refuse(DELIVERY_LIMIT_REACHED, info, Reason.DELIVERY_LIMIT), envelope, None)
    try:
        return parse_request(body, max_body_bytes)
    except InvalidRequest as exc:
        return local(Refuse(ErrorCode.INVALID_JSON, exc.info, Reason.INVALID), envelope, None)


def decide(
    request: RecallRequest,
    envelope: Envelope,
    state: RecallState,
    rules: PrepareRules,
    now: float,
    *,
    stopping: bool,
) -> Verdict:
    """What a delivery's calls came to: the last decision, or a release when no call was made,
    or a local 90052 when the retries ran out after the recall window surely closed."""
    decision = state.decision
    if decision.outcome is Outcome.RETRY:
        if state.sent == 0:  # stopping, or the broker went away, before any call
            reason = Reason.SHUTDOWN if stopping else Reason.DISCONNECTED
            return no_call(Outcome.RELEASED, reason, envelope, request)
        # Budget spent or shutting down. A recall whose window surely closed is not sent back.
        closed = window_closed(
            request.task_id, envelope.first_seen, rules, now, envelope.published_at
        )
        if closed is not None:
            history = state.history
            spent = replace(
                envelope, attempts=history.calls, may_have_reached=history.may_have_reached
            )
            return local(closed, spent, request)
    return Verdict(
        outcome=decision.outcome,
        code=state.answer_code,
        info=state.info,
        source="api",
        attempts=state.history.calls,
        reason=decision.reason,
        may_have_reached=state.history.may_have_reached,
        task_id=request.task_id,
        has_offline_push_info=request.offline_push_info is not None,
    )


def halting(verdict: Verdict, envelope: Envelope, probe_passed_at: float | None) -> Verdict:
    """A HALT verdict stays a halt of the lane, unless a probe passed after this request's own
    latest halt: then the answer is the request's own (a gateway's 403 or 413 for one body),
    and it is dead-lettered rather than going round until the broker's limit drops it."""
    if verdict.outcome is not Outcome.HALT:
        return verdict
    if not halted_again(envelope.halted_at, probe_passed_at):
        return verdict
    return replace(verdict, outcome=Outcome.DEAD_LETTER, reason=Reason.HALTED_AGAIN)
