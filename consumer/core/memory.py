"""What was settled in the last 24 hours: the memory that keeps calls from being wasted.

Bounded by time (24 h) and by count (`max_entries`). When full, the least useful entry goes
first, by rank, oldest first within a rank:

1. `told_local`: lineages told after a local refusal (duplicates, invalid bodies): no call was
   made, forgetting one costs at most a second local refusal and results event;
2. `expired_local`: TaskIds refused locally as past their window: the expiry check usually
   refuses them again by itself;
3. `told`: lineages told after an API answer: a redelivery of that chain could call again;
4. `expired`: TaskIds the API answered 90052: a second request would cost a call;
5. `recalled`: TaskIds recalled: a second request would cost a call and answer 90050.

Only local refusals can come faster than the API's 1 call/s, so a flood of them evicts its own
kind and never a recalled TaskId while a refusal is left.
"""

from __future__ import annotations

from collections import deque

from schemas.events import ResultEvent

RECALL_WINDOW_S = 24 * 3600.0
DEFAULT_MAX_ENTRIES = 500_000
# Measured by bench/memory_flood.py (CPython 3.11, 64-bit): dict slot, key and time objects and
# the order deque, for a memory of a million entries.
BYTES_PER_ENTRY = 130
RANKS = ("told_local", "expired_local", "told", "expired", "recalled")  # evicted first to last


class _Window:
    """Keys with a time, oldest first, forgotten once older than the window or evicted.

    Each key is kept as its 64-bit hash, not as the string. Two TaskIds sharing a hash within
    a day, about 1 in 5 * 10^9 at 1 call/s, would suppress one recall as a duplicate. The
    order is a deque beside the dict: popping a dict's first key again and again is quadratic.
    """

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._at: dict[int, float] = {}
        self._order: deque[int] = deque()  # insertion order: roughly oldest first

    def __len__(self) -> int:
        return len(self._at)

    def add(self, key: str, at: float, now: float) -> bool:
        """Note `key` at `at`; True if it is a new entry."""
        if at < now - self._window_s:
            return False
        h = hash(key)
        known = self._at.get(h)
        if known is None:
            self._at[h] = at
            self._order.append(h)
        elif at < known:
            # An earlier time for a known key keeps its place, so `prune` may keep it a little
            # longer than the window (lookups check the time).
            self._at[h] = at
        self.prune(now)
        return known is None

    def get(self, key: str, now: float) -> float | None:
        at = self._at.get(hash(key))
        return None if at is None or at < now - self._window_s else at

    def prune(self, now: float) -> None:
        horizon = now - self._window_s
        while self._order and self._at[self._order[0]] < horizon:
            del self._at[self._order.popleft()]

    def evict_oldest(self) -> None:
        del self._at[self._order.popleft()]

    def clear(self) -> None:
        self._at.clear()
        self._order.clear()


class RecallMemory:
    """TaskIds recalled or expired, lineages told, in the last 24 hours; at most `max_entries`.

    One memory serves every app of a process, one ceiling for all: each key is kept under its
    app (`AppMemory` is one app's view). An event that names no app (written before apps were
    named) belongs to `default_app`, the app of a fleet of one.
    """

    def __init__(
        self,
        window_s: float = RECALL_WINDOW_S,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        default_app: int | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.default_app = default_app
        # The latest settle told for each app, by any replica: a replica taking an app over
        # places its first call one interval after it (see Lane._take_over). One per app.
        self.last_told: dict[int | None, float] = {}
        # The earliest next call the replica that told it had placed (its pacer's next slot,
        # unix seconds): a redelivery received before it was not called for (Lane._take_over).
        self.next_call: dict[int | None, float] = {}
        self._ranks = {rank: _Window(window_s) for rank in RANKS}
        self.evicted: dict[str, int] = dict.fromkeys(RANKS, 0)  # since start, for a metric

    def __len__(self) -> int:
        return sum(len(w) for w in self._ranks.values())

    def sizes(self) -> dict[str, int]:
        """Entries held, per rank."""
        return {rank: len(w) for rank, w in self._ranks.items()}

    def approx_bytes(self) -> int:
        """An estimate of the memory the entries take."""
        return len(self) * BYTES_PER_ENTRY

    def _add(self, rank: str, key: str, at: float, now: float) -> None:
        if self._ranks[rank].add(key, at, now):
            self._bound()

    def _bound(self) -> None:
        excess = len(self) - self.max_entries
        for rank in RANKS:
            window = self._ranks[rank]
            while excess > 0 and len(window):
                window.evict_oldest()
                self.evicted[rank] += 1
                excess -= 1

    def remember(self, task_id: str, recalled_at: float, now: float) -> None:
        """Note that `task_id` was recalled at `recalled_at` (unix seconds)."""
        self._add("recalled", task_id, recalled_at, now)

    def recalled_at(self, task_id: str, now: float) -> float | None:
        """When `task_id` was recalled, if within the window."""
        return self._ranks["recalled"].get(task_id, now)

    def remember_expired(
        self, task_id: str, answered_at: float, now: float, *, local: bool = False
    ) -> None:
        """Note that `task_id` was answered 90052 (its window closed), by the API or locally."""
        self._add("expired_local" if local else "expired", task_id, answered_at, now)

    def expired_at(self, task_id: str, now: float) -> float | None:
        """When `task_id` was answered 90052, if within the window."""
        found = (self._ranks[r].get(task_id, now) for r in ("expired", "expired_local"))
        return next((at for at in found if at is not None), None)

    def remember_told(
        self, lineage: str, settled_at: float, now: float, *, local: bool = False
    ) -> None:
        """Note that the request of `lineage` was settled and its result told."""
        self._add("told_local" if local else "told", lineage, settled_at, now)

    def was_told(self, lineage: str, now: float) -> bool:
        """Whether the request of `lineage` was settled and told within the window."""
        return any(self._ranks[r].get(lineage, now) is not None for r in ("told", "told_local"))

    def prune(self, now: float) -> None:
        """Forget what fell out of the window."""
        for window in self._ranks.values():
            window.prune(now)

    def clear(self) -> None:
        """Forget everything (before a rebuild); the eviction counts stay."""
        for window in self._ranks.values():
            window.clear()

    def note_call(self, app: int | None, at: float, next_call: float | None = None) -> None:
        """A call for `app` at `at` that no results event tells (a replica recorded it), and
        when that replica would call next."""
        self._note_told(app, at, next_call)

    def _note_told(self, app: int | None, at: float, next_call: float | None) -> None:
        """A settle or call of `app` told at `at`, with its replica's next slot if it said."""
        if at > self.last_told.get(app, float("-inf")):
            self.last_told[app] = at
            if next_call is None:
                self.next_call.pop(app, None)  # a call later than the slot we knew: unknown
        if next_call is not None and at >= self.last_told.get(app, float("-inf")):
            self.next_call[app] = max(next_call, self.next_call.get(app, float("-inf")))

    def for_app(self, app: int | None) -> AppMemory:
        """One app's view of this memory."""
        return AppMemory(self, app)

    def remember_event(
        self, event: ResultEvent, now: float, next_call: float | None = None
    ) -> None:
        """What a told event means for later requests of its app: a recalled or expired TaskId,
        a lineage; and `next_call`, its replica's next slot for the app, when the stream said."""
        app = event.sdkappid if event.sdkappid is not None else self.default_app
        view = self.for_app(app)
        at = event.settled_at.timestamp()
        self._note_told(app, at, next_call)
        local = event.source == "local"
        if event.task_id is not None:
            if event.outcome == "recalled":
                self.remember(view.key(event.task_id), at, now)
            elif event.error_code == 90052:
                self.remember_expired(view.key(event.task_id), at, now, local=local)
        if event.lineage is not None:
            self.remember_told(view.key(event.lineage), at, now, local=local)


class AppMemory:
    """One app's view of the shared memory: its TaskIds and chains, kept under its SDKAppID
    (the same TaskId or the same bytes in two apps are two things)."""

    def __init__(self, memory: RecallMemory, app: int | None) -> None:
        self.memory = memory
        self.app = app
        self._prefix = f"{app}:"

    def key(self, name: str) -> str:
        """A TaskId's or lineage's key in the shared memory."""
        return self._prefix + name

    def recalled_at(self, task_id: str, now: float) -> float | None:
        """When this app's `task_id` was recalled, if within the window."""
        return self.memory.recalled_at(self.key(task_id), now)

    def expired_at(self, task_id: str, now: float) -> float | None:
        """When this app's `task_id` was answered 90052, if within the window."""
        return self.memory.expired_at(self.key(task_id), now)

    def was_told(self, lineage: str, now: float) -> bool:
        """Whether this app's chain `lineage` was settled and told within the window."""
        return self.memory.was_told(self.key(lineage), now)

    def last_told_at(self) -> float | None:
        """When a settle of this app was last told, by any replica (unix seconds)."""
        return self.memory.last_told.get(self.app)

    def next_call_at(self) -> float | None:
        """The next slot the replica of the last told settle had placed (unix seconds)."""
        return self.memory.next_call.get(self.app)
