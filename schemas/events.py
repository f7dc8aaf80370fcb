"""Dead-letter headers and the results event: what tim-recall tells about each request."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Headers tim-recall sets on a dead letter (and, for attempts and first-seen, on a re-publish).
H_ERROR_CODE = "x-recall-error-code"
H_ERROR_INFO = "x-recall-error-info"
H_ERROR_SOURCE = "x-recall-error-source"
H_ATTEMPTS = "x-recall-attempts"
H_FIRST_SEEN = "x-recall-first-seen"  # unix seconds (int) when a worker first took the request
H_MAY_HAVE_REACHED = "x-recall-may-have-reached"  # an earlier call may have recalled it
H_DEAD_LETTERED_AT = "x-recall-dead-lettered-at"  # unix seconds (int)
# The chain a copy of ours continues (a release, a re-publish after the retry budget): see
# consumer/core/identity.py. Never on a dead letter: a dead letter moved back is a new chain.
H_LINEAGE = "x-recall-lineage"
H_RELEASES = "x-recall-releases"  # times handed back with no call (shutdown, halt)
H_FAILURES = "x-recall-failures"  # times its handling raised unexpectedly
H_TRACEPARENT = (
    "traceparent"  # W3C trace context, as OpenTelemetry's messaging conventions carry it
)
H_HALTS = "x-recall-halts"  # times its call halted the worker (handed back, not settled)
# Times in unix milliseconds (integers: AMQP clients encode a float header as a 32-bit float,
# which keeps unix seconds only to about two minutes).
H_HALTED_AT = "x-recall-halted-at-ms"  # its latest halt (a release copy)
H_EXPIRES_AT = "x-recall-expires-at-ms"  # when the producer's `expiration` runs out
# A fresh id on every request `dlq replay` publishes and on every dead letter: no two of them
# are the same bytes, so each is a chain of its own (see consumer/core/identity.py).
H_REPLAY = "x-recall-replay"
H_DEAD_LETTER_ID = "x-recall-dead-letter-id"
H_SDKAPPID = "x-recall-sdkappid"  # the app a dead letter was for
# On a results event or `called` record: its replica's next slot for the app (unix ms). A header,
# not a field: subscribers that read the event alone are unchanged.
H_NEXT_CALL_MS = "x-recall-next-call-ms"
RECALL_ERROR_HEADERS = (
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_DEAD_LETTERED_AT,
    H_DEAD_LETTER_ID,
    H_SDKAPPID,
)
# What only a copy of ours carries about its chain: dropped from a dead letter, ignored on
# anything that is not a copy.
CHAIN_HEADERS = (
    H_LINEAGE,
    H_RELEASES,
    H_FAILURES,
    H_HALTS,
    H_HALTED_AT,
    H_MAY_HAVE_REACHED,
    H_EXPIRES_AT,
)
# Set by the broker when it dead-letters a message itself (delivery limit, expiry).
BROKER_DEATH_HEADERS = (
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
)

Source = Literal["api", "local"]
SettledOutcome = Literal["recalled", "dead_lettered"]


class ResultEvent(BaseModel):
    """One settled request, as published to the results stream."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="RecallResultEvent")

    sdkappid: int | None = Field(
        default=None, description="The Chat app the request was for (its queue's app)."
    )
    task_id: str | None = Field(
        description="The TaskId; null when the body was not a valid request."
    )
    outcome: SettledOutcome
    error_code: int = Field(
        description="The API's ErrorCode (0 when recalled); 90001 for bad input."
    )
    error_info: str = ""
    source: Source = Field(
        description="'api' when Tencent answered, 'local' when the worker decided."
    )
    attempts: int = Field(ge=0, description="API calls made for this request, across deliveries.")
    message_id: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = Field(
        default=None,
        description="The W3C trace id of the request's `traceparent` header, when it had one.",
    )
    lineage: str | None = Field(
        default=None,
        description="The request chain this event settles (`<root>#<n>`, see "
        "consumer/core/identity.py): a replayed or re-published request is a new chain with "
        "its own event.",
    )
    first_seen: datetime
    settled_at: datetime
    has_offline_push_info: bool = False

    def to_json_bytes(self) -> bytes:
        """The event as the UTF-8 JSON published to the stream."""
        return self.model_dump_json().encode()


LaneState = Literal["active", "halted", "resumed", "stopped", "called"]


class LaneEvent(BaseModel):
    """A replica's lane for one app changed state (on the results stream, for `tim-recall apps`:
    who serves each app, and whether it is halted and why)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="RecallLaneEvent")

    sdkappid: int
    replica: str
    state: LaneState = Field(
        description="active: this replica took the app's queue over (its first delivery); "
        "halted: the app's configuration is refused (reason says why); resumed: a probe "
        "passed; stopped: the replica stopped serving the app; called: a call that counted "
        "against the app's limit and that no results event tells (its request went back to "
        "the queue), at `at`."
    )
    reason: str | None = None
    at: datetime

    def to_json_bytes(self) -> bytes:
        """The record as the UTF-8 JSON published to the stream."""
        return self.model_dump_json().encode()


def result_event_json_schema() -> dict[str, Any]:
    """The JSON Schema of the results event, for subscribers."""
    return ResultEvent.model_json_schema()
