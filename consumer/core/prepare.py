"""Before a call: suppress duplicates, refuse expired tasks, add the default overwrite. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from consumer.core.memory import RECALL_WINDOW_S
from consumer.core.policy import Reason
from schemas.api import ErrorCode
from schemas.recall import OfflinePushInfo, RecallRequest

PLAUSIBLE_PAST_S = 30 * 86400.0  # a start time older than this is not believed
PLAUSIBLE_FUTURE_S = 300.0  # nor one more than this in the future


def plausible(at: float, now: float) -> bool:
    """Whether a time a message claims (a TaskId's start, an AMQP timestamp) can be believed."""
    return now - PLAUSIBLE_PAST_S <= at <= now + PLAUSIBLE_FUTURE_S


def task_start_time(task_id: str, now: float) -> float | None:
    """The task's start as encoded in its TaskId's first part (hex unix seconds), if plausible."""
    head = task_id.split("_", 1)[0]
    if len(head) != 8:
        return None
    try:
        started = float(int(head, 16))
    except ValueError:
        return None
    if plausible(started, now):
        return started
    return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Recalls(Protocol):
    """What `prepare` asks of the memory of recalls (one app's view of it)."""

    def recalled_at(self, task_id: str, now: float) -> float | None:
        """When `task_id` was recalled, if within the window."""

    def expired_at(self, task_id: str, now: float) -> float | None:
        """When `task_id` was answered 90052, if within the window."""


@dataclass(frozen=True)
class Proceed:
    """Call the API with this request."""

    request: RecallRequest


@dataclass(frozen=True)
class Refuse:
    """Dead-letter without a call; the worker's own decision (source `local`)."""

    code: int  # an ErrorCode, or tim-recall's own HANDLING_FAILED
    info: str
    reason: Reason


@dataclass(frozen=True)
class PrepareRules:
    """The settings `prepare` follows."""

    expiry_check: bool = True
    expiry_margin_s: float = 300.0
    default_offline_push_info: OfflinePushInfo | None = None


def window_closed(
    task_id: str,
    first_seen: float,
    rules: PrepareRules,
    now: float,
    published_at: float | None = None,
) -> Refuse | None:
    """A local 90052 when the 24-hour window surely closed more than the margin ago."""
    # The window opens at the task's start, which is no later than our first sight of the
    # request, nor than its publication (the AMQP timestamp, when plausible).
    started = first_seen if published_at is None else min(first_seen, published_at)
    if rules.expiry_check:
        decoded = task_start_time(task_id, now)
        if decoded is not None:
            started = min(started, decoded)
    closed_at = started + RECALL_WINDOW_S
    if now <= closed_at + rules.expiry_margin_s:
        return None
    return Refuse(
        ErrorCode.WINDOW_PASSED,
        f"recall window closed at {_iso(closed_at)} (task started by {_iso(started)})",
        Reason.EXPIRED,
    )


def prepare(
    request: RecallRequest,
    first_seen: float,
    memory: Recalls,
    rules: PrepareRules,
    now: float,
    *,
    published_at: float | None = None,
) -> Proceed | Refuse:
    """Decide whether a call can succeed, and with what body (whether the chain was told
    already is consumer/core/identity.py's question, asked before)."""
    recalled_at = memory.recalled_at(request.task_id, now)
    if recalled_at is not None:
        info = f"already recalled by tim-recall at {_iso(recalled_at)}"
        return Refuse(ErrorCode.ALREADY_RECALLED, info, Reason.DUPLICATE)
    expired_at = memory.expired_at(request.task_id, now)
    if expired_at is not None:
        info = f"the API answered 90052 for this TaskId at {_iso(expired_at)}"
        return Refuse(ErrorCode.WINDOW_PASSED, info, Reason.EXPIRED)
    closed = window_closed(request.task_id, first_seen, rules, now, published_at)
    if closed is not None:
        return closed
    if rules.default_offline_push_info is not None:
        request = request.with_default_overwrite(rules.default_offline_push_info)
    return Proceed(request)
