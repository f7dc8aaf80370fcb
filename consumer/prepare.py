"""Before a call: suppress duplicates, refuse expired tasks, add the default overwrite. Pure."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.recall import OfflinePushInfo, RecallRequest

RECALL_WINDOW_S = 24 * 3600.0
PLAUSIBLE_PAST_S = 30 * 86400.0  # a TaskId time older than this is not believed
PLAUSIBLE_FUTURE_S = 300.0  # nor one more than this in the future


def task_start_time(task_id: str, now: float) -> float | None:
    """The task's start as encoded in its TaskId's first part (hex unix seconds), if plausible."""
    head = task_id.split("_", 1)[0]
    if len(head) != 8:
        return None
    try:
        started = float(int(head, 16))
    except ValueError:
        return None
    if now - PLAUSIBLE_PAST_S <= started <= now + PLAUSIBLE_FUTURE_S:
        return started
    return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class RecallMemory:
    """TaskIds recalled in the last 24 hours, oldest first; bounded by the window."""

    def __init__(self, window_s: float = RECALL_WINDOW_S) -> None:
        self._window_s = window_s
        self._recalled: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._recalled)

    def remember(self, task_id: str, recalled_at: float, now: float) -> None:
        """Note that `task_id` was recalled at `recalled_at` (unix seconds)."""
        if recalled_at < now - self._window_s:
            return
        known = self._recalled.get(task_id)
        if known is None or recalled_at < known:
            # A new key goes to the end; an earlier time for a known key keeps its place, so
            # `prune` may keep it a little longer than the window (lookups check the time).
            self._recalled[task_id] = recalled_at
        self.prune(now)

    def recalled_at(self, task_id: str, now: float) -> float | None:
        """When `task_id` was recalled, if within the window."""
        at = self._recalled.get(task_id)
        if at is None or at < now - self._window_s:
            return None
        return at

    def prune(self, now: float) -> None:
        """Forget what fell out of the window (entries arrive roughly in time order)."""
        horizon = now - self._window_s
        while self._recalled:
            task_id, at = next(iter(self._recalled.items()))
            if at >= horizon:
                break
            del self._recalled[task_id]

    def clear(self) -> None:
        """Forget everything (before a rebuild)."""
        self._recalled.clear()


@dataclass(frozen=True)
class Proceed:
    """Call the API with this request."""

    request: RecallRequest


@dataclass(frozen=True)
class Refuse:
    """Dead-letter without a call; the worker's own decision (source `local`)."""

    code: int
    info: str
    reason: str  # low-cardinality, for metrics and logs


@dataclass(frozen=True)
class PrepareRules:
    """The settings `prepare` follows."""

    expiry_check: bool = True
    expiry_margin_s: float = 300.0
    default_offline_push_info: OfflinePushInfo | None = None


def window_closed(
    task_id: str, first_seen: float, rules: PrepareRules, now: float
) -> Refuse | None:
    """A local 90052 when the 24-hour window surely closed more than the margin ago."""
    # The window opens at the task's start, which is no later than our first sight of the request.
    started = first_seen
    if rules.expiry_check:
        decoded = task_start_time(task_id, now)
        if decoded is not None:
            started = min(started, decoded)
    closed_at = started + RECALL_WINDOW_S
    if now <= closed_at + rules.expiry_margin_s:
        return None
    return Refuse(
        90052,
        f"recall window closed at {_iso(closed_at)} (task started by {_iso(started)})",
        "expired",
    )


def prepare(
    request: RecallRequest,
    first_seen: float,
    memory: RecallMemory,
    rules: PrepareRules,
    now: float,
) -> Proceed | Refuse:
    """Decide whether a call can succeed, and with what body."""
    recalled_at = memory.recalled_at(request.task_id, now)
    if recalled_at is not None:
        return Refuse(90050, f"already recalled by tim-recall at {_iso(recalled_at)}", "duplicate")
    closed = window_closed(request.task_id, first_seen, rules, now)
    if closed is not None:
        return closed
    if rules.default_offline_push_info is not None:
        request = request.with_default_overwrite(rules.default_offline_push_info)
    return Proceed(request)
