"""What was settled in the last 24 hours: the memory that keeps calls from being wasted."""

from __future__ import annotations

from schemas.events import ResultEvent

RECALL_WINDOW_S = 24 * 3600.0


class _Window:
    """Keys with a time, oldest first, forgotten once older than the window.

    At the API's 1 call/s a day holds up to 86,400 keys: each is kept as its 64-bit hash, not
    as the string (about 90 bytes an entry instead of 200). Two TaskIds sharing a hash within
    a day, about 1 in 5 * 10^9 at that rate, would suppress one recall as a duplicate.
    """

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._at: dict[int, float] = {}  # insertion order: roughly oldest first

    def __len__(self) -> int:
        return len(self._at)

    def add(self, key: str, at: float, now: float) -> None:
        if at < now - self._window_s:
            return
        h = hash(key)
        known = self._at.get(h)
        if known is None or at < known:
            # A new key goes to the end; an earlier time for a known key keeps its place, so
            # `prune` may keep it a little longer than the window (lookups check the time).
            self._at[h] = at
        self.prune(now)

    def get(self, key: str, now: float) -> float | None:
        at = self._at.get(hash(key))
        return None if at is None or at < now - self._window_s else at

    def prune(self, now: float) -> None:
        horizon = now - self._window_s
        while self._at:
            h = next(iter(self._at))
            if self._at[h] >= horizon:
                break
            del self._at[h]

    def clear(self) -> None:
        self._at.clear()


class RecallMemory:
    """What was settled in the last 24 hours: TaskIds recalled, message_ids told; bounded."""

    def __init__(self, window_s: float = RECALL_WINDOW_S) -> None:
        self._recalled = _Window(window_s)
        self._expired = _Window(window_s)
        self._told = _Window(window_s)

    def __len__(self) -> int:
        return len(self._recalled)

    def remember(self, task_id: str, recalled_at: float, now: float) -> None:
        """Note that `task_id` was recalled at `recalled_at` (unix seconds)."""
        self._recalled.add(task_id, recalled_at, now)

    def recalled_at(self, task_id: str, now: float) -> float | None:
        """When `task_id` was recalled, if within the window."""
        return self._recalled.get(task_id, now)

    def remember_expired(self, task_id: str, answered_at: float, now: float) -> None:
        """Note that `task_id` was answered 90052 (its window closed) at `answered_at`."""
        self._expired.add(task_id, answered_at, now)

    def expired_at(self, task_id: str, now: float) -> float | None:
        """When `task_id` was answered 90052, if within the window."""
        return self._expired.get(task_id, now)

    def remember_told(self, message_id: str, settled_at: float, now: float) -> None:
        """Note that the request with `message_id` was settled and its result told."""
        self._told.add(message_id, settled_at, now)

    def was_told(self, message_id: str, now: float) -> bool:
        """Whether the request with `message_id` was settled and told within the window."""
        return self._told.get(message_id, now) is not None

    def prune(self, now: float) -> None:
        """Forget what fell out of the window."""
        self._recalled.prune(now)
        self._expired.prune(now)
        self._told.prune(now)

    def clear(self) -> None:
        """Forget everything (before a rebuild)."""
        self._recalled.clear()
        self._expired.clear()
        self._told.clear()

    def remember_event(self, event: ResultEvent, now: float) -> None:
        """What a told event means for later requests: a recalled TaskId, a told message."""
        at = event.settled_at.timestamp()
        if event.outcome == "recalled" and event.task_id is not None:
            self.remember(event.task_id, at, now)
        if event.error_code == 90052 and event.task_id is not None:
            self.remember_expired(event.task_id, at, now)
        if event.lineage is not None:
            self.remember_told(event.lineage, at, now)
