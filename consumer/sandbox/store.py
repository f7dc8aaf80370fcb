"""The sandbox's tasks: TaskIds made as Tencent makes them, each of one app, and their verdicts."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from consumer.sandbox.records import U32
from schemas.api import meaning


@dataclass
class _Task:
    task_id: str
    sdkappid: int  # the app that pushed it: only that app can recall it
    online_only: bool
    started_at: float
    recalled_at: float | None = None


class TaskStore:
    """Tasks by TaskId (unique across apps) on the sandbox's wall clock, and the recall order."""

    def __init__(self, clock: Callable[[], float], lock: threading.RLock) -> None:
        self._clock = clock
        self._lock = lock
        self._rng = random.Random()
        self._seq = 0
        self._tasks: dict[str, _Task] = {}
        self._recalled: list[str] = []

    def now(self) -> float:
        """The sandbox's wall clock (unix seconds)."""
        return self._clock()

    def create_task(
        self, *, sdkappid: int, online_only: bool = False, started_at: float | None = None
    ) -> str:
        """Register an app's task with a Tencent-shaped TaskId (first part: start time in hex)."""
        start = self._clock() if started_at is None else started_at
        with self._lock:
            while True:
                self._seq += 1
                r = self._rng.getrandbits
                task_id = (
                    f"{max(0, int(start)) & U32:08x}_{r(32):08x}_{r(60):015x}"
                    f"_{r(32):08x}_{self._seq & 0xFFFFFF:06x}"
                )
                if task_id not in self._tasks:
                    self._tasks[task_id] = _Task(task_id, sdkappid, online_only, start)
                    return task_id

    def add_task(
        self,
        task_id: str,
        *,
        sdkappid: int,
        online_only: bool = False,
        started_at: float | None = None,
    ) -> None:
        """Register an app's task under a TaskId chosen by the caller; ValueError if it exists."""
        start = self._clock() if started_at is None else started_at
        with self._lock:
            if task_id in self._tasks:
                raise ValueError(f"task {task_id!r} already exists")
            self._tasks[task_id] = _Task(task_id, sdkappid, online_only, start)

    def backdate(self, task_id: str, seconds: float) -> None:
        """Move a task's start `seconds` into the past; KeyError if unknown."""
        with self._lock:
            self._tasks[task_id].started_at -= seconds

    def mark_recalled(self, task_id: str) -> None:
        """Recall a task behind the worker's back (another client did it); KeyError if unknown."""
        now = self._clock()
        with self._lock:
            task = self._tasks[task_id]
            if task.recalled_at is None:
                task.recalled_at = now
                self._recalled.append(task_id)

    def is_recalled(self, task_id: str) -> bool:
        """Whether the task has been recalled."""
        task = self._tasks.get(task_id)
        return task is not None and task.recalled_at is not None

    def recalled_task_ids(self, sdkappid: int | None = None) -> list[str]:
        """TaskIds recalled so far (of one app, when given), in recall order."""
        with self._lock:
            return [t for t in self._recalled if sdkappid in (None, self._tasks[t].sdkappid)]

    def task_records(self, sdkappid: int | None = None) -> list[dict[str, Any]]:
        """Every task (of one app, if given) as a JSON-ready dict, with whether it was recalled."""
        with self._lock:
            tasks = [t for t in self._tasks.values() if sdkappid in (None, t.sdkappid)]
        return [asdict(t) | {"recalled": t.recalled_at is not None} for t in tasks]

    def rehome(self, old: int, new: int) -> None:
        """Give app `old`'s tasks to app `new` (the default app's SDKAppID was changed)."""
        with self._lock:
            for task in self._tasks.values():
                if task.sdkappid == old:
                    task.sdkappid = new

    def judge(
        self,
        doc: dict[str, Any] | None,
        task_id: str | None,
        opi: bool,
        recall_window: float,
        sdkappid: int | None,
    ) -> tuple[int, str]:
        """A revoke call's answer from the task records; a recall that passes is recorded."""
        if doc is None:
            return 90001, meaning(90001)
        now = self._clock()
        with self._lock:
            task = self._tasks.get(task_id) if task_id is not None else None
            # Another app's task is one this app never pushed: no push record, as for a TaskId
            # nobody pushed (Tencent keys push records by app).
            if task is None or task.sdkappid != sdkappid:
                return 90049, meaning(90049)
            if now > task.started_at + recall_window:
                return 90052, meaning(90052)
            if task.recalled_at is not None:
                return 90050, meaning(90050)
            if not task.online_only and not opi:
                return 90053, meaning(90053)
            task.recalled_at = now
            self._recalled.append(task.task_id)
        return 0, ""

    def clear(self) -> None:
        """Forget every task."""
        with self._lock:
            self._tasks.clear()
            self._recalled.clear()
