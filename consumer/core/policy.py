"""What an API result means for a request: the outcome table, pure and tested as a table."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from consumer.core.results import ApiAnswer, ApiResult, FailureKind, TransportFailure
from schemas.api import ErrorCode


class Outcome(StrEnum):
    """What becomes of the request after one attempt."""

    RECALLED = "recalled"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    HALT = "halt"
    # Its chain was settled and told before (a crash took the ack, or a copy of it was
    # settled elsewhere): only the ack is owed.
    ALREADY_SETTLED = "already_settled"
    # Handed back with no call of this delivery (shutdown, halt, an unexpected error).
    RELEASED = "released"


class Reason(StrEnum):
    """Why a request came to its outcome: one snake_case word, a metric label and a log field."""

    # What an answer said
    RECALLED = "recalled"
    RECALLED_EARLIER = "recalled_earlier"  # 90050 after a call of ours that may have reached it
    PERMANENT = "permanent"
    TOO_FREQUENT = "too_frequent"
    TRANSIENT = "transient"
    USERSIG_RENEWAL = "usersig_renewal"
    USERSIG_REJECTED_AFTER_RENEWAL = "usersig_rejected_after_renewal"
    USERSIG_LOCKOUT = "usersig_lockout"
    CONFIGURATION = "configuration"
    UNKNOWN_CODE = "unknown_code"
    # What went wrong below the API (the first five are FailureKind's values)
    CONNECT = "connect"
    TIMEOUT = "timeout"
    NETWORK = "network"
    HTTP_STATUS = "http_status"  # a 3xx or 4xx: a wrong base URL, proxy or path
    BAD_BODY = "bad_body"
    HTTP_4XX = "http_4xx"  # 408 and 429: retried
    HTTP_5XX = "http_5xx"
    # Decided here, with no call
    NOT_CALLED = "not_called"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"
    HANDLING_FAILED = "handling_failed"
    HALTED_AGAIN = "halted_again"
    ALREADY_SETTLED = "already_settled"
    EXPIRATION_PASSED = "expiration_passed"  # the producer's `expiration` ran out
    DELIVERY_LIMIT = "delivery_limit"  # one more return and the broker would drop it unseen
    # Why a delivery was released to the queue's tail
    SHUTDOWN = "shutdown"
    HALTED = "halted"
    ERROR = "error"
    DISCONNECTED = "disconnected"


class ReplyResult(StrEnum):
    """What became of a results event sent to a request's reply_to."""

    SENT = "sent"
    UNROUTABLE = "unroutable"  # nobody listens there (any more)
    FAILED = "failed"  # the publish failed or timed out; the stream still holds the event


# The label sets the metrics initialise at 0, derived from the vocabulary rather than copied.
RETRY_REASONS = (
    Reason.TOO_FREQUENT,
    Reason.TRANSIENT,
    Reason.USERSIG_RENEWAL,
    Reason.USERSIG_LOCKOUT,
    Reason.TIMEOUT,
    Reason.CONNECT,
    Reason.NETWORK,
    Reason.BAD_BODY,
    Reason.HTTP_5XX,
    Reason.HTTP_4XX,
)
RELEASE_REASONS = (Reason.SHUTDOWN, Reason.HALTED, Reason.ERROR, Reason.DISCONNECTED)

E = ErrorCode
QUOTA_CODES = frozenset(
    {E.RECALL_TOO_FREQUENT, E.FREQUENCY_LIMIT, E.FREQUENCY_LIMIT_2}
    | {E.FREQUENCY_LIMIT_3, E.FREQUENCY_LIMIT_4}
)
TRANSIENT_CODES = frozenset(
    {E.INTERNAL_ERROR, E.SERVICE_TIMEOUT, E.INTERNAL_TIMEOUT, E.INTERNAL_ERROR_2}
)
RENEW_SIG_CODES = frozenset({E.USERSIG_EXPIRED, E.USERSIG_NO_LONGER_VALID})
SIG_LOCKOUT_CODE = E.TOO_MANY_SIG_FAILURES
SIG_LOCKOUT_WAIT_S = 60.0
ALREADY_RECALLED = E.ALREADY_RECALLED
PERMANENT_CODES = frozenset(
    {E.TASK_ID_ILLEGAL, E.WINDOW_PASSED, E.NEEDS_OFFLINE_PUSH_INFO, E.INVALID_JSON}
)
# tim-recall's own codes (source `local`), not Tencent's, so not ErrorCodes: a request whose
# handling raised twice (the dead letter's info names the error); one whose producer-set
# `expiration` ran out while it waited; one the broker was about to dead-letter on its own
# (its delivery limit), told here so that no request ends without its results event.
HANDLING_FAILED = 99999
EXPIRATION_PASSED = 99998
DELIVERY_LIMIT_REACHED = 99997
HALT_CODES = frozenset(
    {E.NOT_ADMIN, E.IDENTIFIER_OR_SIG_WRONG, E.IDENTIFIER_OR_SIG_WRONG_2, E.SDKAPPID_INVALID}
    | {E.IDENTIFIER_NOT_ADMIN, E.SDKAPPID_MISSING, E.SDKAPPID_DISABLED, E.PACKAGE_EXPIRED}
    | {E.IP_NOT_ALLOWED, E.USERSIG_EMPTY, E.USERSIG_INVALID, E.USERSIG_UNPARSABLE}
    | {E.KEY_NOT_OF_APP, E.IDENTIFIER_MISMATCH, E.SDKAPPID_MISMATCH, E.KEY_NOT_FOUND}
    | {E.SDKAPPID_NOT_FOUND}
)


# Answers that say the call was refused before it could take effect: a later 90050 for the
# same request is then not ours.
NO_EFFECT_CODES = (
    QUOTA_CODES
    | RENEW_SIG_CODES
    | PERMANENT_CODES
    | HALT_CODES
    | {SIG_LOCKOUT_CODE, E.ALREADY_RECALLED}
)


def may_have_taken_effect(result: ApiResult) -> bool:
    """Whether a call may have recalled the task (a success, an internal error, no answer)."""
    if isinstance(result, ApiAnswer):
        return result.code not in NO_EFFECT_CODES
    return result.may_have_arrived


@dataclass(frozen=True)
class History:
    """What is known of earlier attempts for this request, across deliveries."""

    calls: int = 0  # API calls already made for it, by any delivery
    # an earlier call (or a delivery before a crash) may have recalled it
    may_have_reached: bool = False
    renewed_usersig: bool = False  # the previous answer already made us renew the UserSig


@dataclass(frozen=True)
class Decision:
    """The outcome of one attempt and how to go on."""

    outcome: Outcome
    reason: Reason
    min_wait_s: float = 0.0  # no retry before this
    backoff: bool = False  # exponential backoff with jitter on top of min_wait_s
    renew_usersig: bool = False


def classify(result: ApiResult, history: History, interval_s: float = 1.0) -> Decision:
    """Decide what an API result means, given what earlier attempts may have done."""
    if isinstance(result, TransportFailure):
        return _classify_failure(result)
    return _classify_answer(result, history, interval_s)


def _classify_failure(failure: TransportFailure) -> Decision:
    if failure.kind is FailureKind.HTTP_STATUS:
        status = failure.http_status or 0
        if status >= 500 or status in (408, 429):
            return Decision(Outcome.RETRY, _http_reason(status), backoff=True)
        # 3xx/4xx from the endpoint means a wrong base URL, proxy or path: our own configuration.
        return Decision(Outcome.HALT, Reason.HTTP_STATUS)
    return Decision(Outcome.RETRY, Reason(failure.kind.value), backoff=True)


def _http_reason(status: int) -> Reason:
    return Reason.HTTP_5XX if status >= 500 else Reason.HTTP_4XX


def _classify_answer(answer: ApiAnswer, history: History, interval_s: float) -> Decision:
    code = answer.code
    if code == E.OK:
        return Decision(Outcome.RECALLED, Reason.RECALLED)
    if code == ALREADY_RECALLED:
        # Ours if an earlier attempt may have reached the server; else someone else recalled it.
        if history.may_have_reached:
            return Decision(Outcome.RECALLED, Reason.RECALLED_EARLIER)
        return Decision(Outcome.DEAD_LETTER, Reason.PERMANENT)
    if code in QUOTA_CODES:
        # Someone else shares the app's quota (another system, a replica's probe): back off
        # with jitter, never sooner than the interval, so neither side starves the other.
        return Decision(
            Outcome.RETRY, Reason.TOO_FREQUENT, min_wait_s=max(1.0, interval_s), backoff=True
        )
    if code in TRANSIENT_CODES:
        return Decision(Outcome.RETRY, Reason.TRANSIENT, backoff=True)
    if code in RENEW_SIG_CODES:
        if history.renewed_usersig:
            # A fresh signature rejected again: the clock or the key is wrong, not the signature.
            return Decision(Outcome.HALT, Reason.USERSIG_REJECTED_AFTER_RENEWAL)
        return Decision(Outcome.RETRY, Reason.USERSIG_RENEWAL, renew_usersig=True)
    if code == SIG_LOCKOUT_CODE:
        return Decision(Outcome.RETRY, Reason.USERSIG_LOCKOUT, min_wait_s=SIG_LOCKOUT_WAIT_S)
    if code in PERMANENT_CODES:
        return Decision(Outcome.DEAD_LETTER, Reason.PERMANENT)
    if code in HALT_CODES:
        return Decision(Outcome.HALT, Reason.CONFIGURATION)
    # Unknown codes are never retried forever: a person looks at them in the dead-letter queue.
    return Decision(Outcome.DEAD_LETTER, Reason.UNKNOWN_CODE)


class Action(StrEnum):
    """What settling a delivery does with it; carried out only by the worker's `settle`."""

    ACK = "ack"  # recalled: tell, then ack
    DEAD_LETTER = "dead_letter"  # publish the dead letter (confirmed), tell, then ack
    REPUBLISH = "republish"  # budget spent: a copy to the queue's tail, then ack
    # Handed back unsettled (halting, stopping, an error): a copy to the queue's tail, then ack.
    # A copy rather than `nack(requeue)`: the broker's delivery counting differs by version
    # (4.3 counts reject but not nack) and a redelivery cannot carry what we know (no call was
    # sent). Releases count in our own x-recall-releases header, the same on 3.x and 4.x.
    RELEASE = "release"
    ACK_ONLY = "ack_only"  # already settled and told: ack, publish nothing again


_ACTIONS = {
    Outcome.RECALLED: Action.ACK,
    Outcome.DEAD_LETTER: Action.DEAD_LETTER,
    Outcome.RETRY: Action.REPUBLISH,
    Outcome.HALT: Action.RELEASE,
    Outcome.ALREADY_SETTLED: Action.ACK_ONLY,
    Outcome.RELEASED: Action.RELEASE,
}


def action_for(outcome: Outcome) -> Action:
    """The one mapping from an outcome to what happens to the delivery."""
    return _ACTIONS[outcome]


def halted_again(halted_at: float | None, probe_passed_at: float | None) -> bool:
    """Whether a request that halts a worker now had halted one before and a probe passed since
    that halt of its own: then the fault is its own (a gateway refusing its body), not ours.

    Judged on the request, not on the replica: a probe that passed before the request's latest
    halt (an earlier key rotation, another request's halt) says nothing of it.
    """
    return halted_at is not None and probe_passed_at is not None and probe_passed_at > halted_at


def probe_passed(result: ApiResult) -> bool:
    """Whether a halted worker's probe proves its identity and signature are accepted again.

    The probe is made with a fresh UserSig, so an "expired" answer is a clock or key fault.
    An answer about the TaskId itself (90049 for the probe's) proves the configuration works,
    and so does 90051: the revoke service counts a call only once it has passed the checks of
    identity and signature, so "too frequent" means another replica (or system) is busy on the
    same app with a working configuration. Waiting for a quiet second instead could keep a
    replica halted as long as a backlog lasts. A 91000, a 600xx limit or a 502 proves nothing.
    """
    if isinstance(result, ApiAnswer) and result.code == E.RECALL_TOO_FREQUENT:
        return True
    decision = classify(result, History(renewed_usersig=True))
    return decision.outcome in (Outcome.DEAD_LETTER, Outcome.RECALLED)
