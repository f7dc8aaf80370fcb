"""A local sandbox of Tencent Cloud Chat's `v4/timpush/revoke` (and `push`) REST API."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from consumer.core.serving import base_url, bind, serve_app
from consumer.core.usersig import UserSigError, verify_usersig
from consumer.sandbox.admin import admin_routes, json_object
from schemas.api import meaning

REVOKE_PATH = "/v4/timpush/revoke"
PUSH_PATH = "/v4/timpush/push"
_DIGITS = re.compile(r"[0-9]{1,20}")
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SandboxConfig:
    """The sandbox app's identity and the API's limits."""

    sdkappid: int = 1400000000
    secret_key: str = "sandbox-secret-key-0123456789abcdef"  # noqa: S105 - a public sandbox key
    admins: frozenset[str] = frozenset({"administrator"})
    min_interval: float = 1.0  # calls closer than this on arrival get 90051
    recall_window: float = 86400.0  # a task can be recalled this long after its start


@dataclass(frozen=True)
class CallRecord:
    """One API call as the sandbox saw it."""

    arrived: float  # time.monotonic() on arrival, before any added latency
    wall: float  # time.time() on arrival
    path: str
    task_id: str | None  # the body's TaskId (revoke) or the new TaskId (push)
    code: int | None  # None when the answer was a bare HTTP error or a hang
    http_status: int
    random: int | None
    offline_push_info: bool
    body: dict[str, Any] | None = None  # the JSON body as received (revoke)


@dataclass
class _Task:
    task_id: str
    online_only: bool
    started_at: float
    recalled_at: float | None = None


@dataclass
class _Fault:
    remaining: int
    task_id: str | None = None
    code: int | None = None
    http_status: int | None = None
    hang: float | None = None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _gateway_error(status: int) -> Response:
    # What a load balancer answers: HTML, not the API's JSON.
    return HTMLResponse(f"<html><body><h1>{status} Gateway Error</h1></body></html>", status)


class Sandbox:
    """In-memory revoke/push service with fault injection and a record of every call."""

    def __init__(
        self, config: SandboxConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config or SandboxConfig()
        self.calls: list[CallRecord] = []
        self._clock = clock
        # A threading lock, so the control methods are safe from another thread too. Critical
        # sections never await, so in one event loop they are atomic and never contend.
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._seq = 0
        self._tasks: dict[str, _Task] = {}
        self._recalled: list[str] = []
        self._faults: list[_Fault] = []
        self._outage: _Fault | None = None
        self._outage_until = 0.0
        self._latency = 0.0
        self._last_arrival: float | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._pauses: set[asyncio.Future[None]] = set()
        self._app: Starlette | None = None

    # --- tasks -------------------------------------------------------------------------------

    def create_task(self, *, online_only: bool = False, started_at: float | None = None) -> str:
        """Register a task with a Tencent-shaped TaskId (first part: start time in hex)."""
        start = self._clock() if started_at is None else started_at
        with self._lock:
            while True:
                self._seq += 1
                r = self._rng.getrandbits
                task_id = (
                    f"{max(0, int(start)) & _U32:08x}_{r(32):08x}_{r(60):015x}"
                    f"_{r(32):08x}_{self._seq & 0xFFFFFF:06x}"
                )
                if task_id not in self._tasks:
                    self._tasks[task_id] = _Task(task_id, online_only, start)
                    return task_id

    def add_task(
        self, task_id: str, *, online_only: bool = False, started_at: float | None = None
    ) -> None:
        """Register a task under a TaskId chosen by the caller; ValueError if it exists."""
        start = self._clock() if started_at is None else started_at
        with self._lock:
            if task_id in self._tasks:
                raise ValueError(f"task {task_id!r} already exists")
            self._tasks[task_id] = _Task(task_id, online_only, start)

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

    def recalled_task_ids(self) -> list[str]:
        """TaskIds recalled so far, in recall order."""
        with self._lock:
            return list(self._recalled)

    def revoke_calls(self) -> list[CallRecord]:
        """Only the revoke calls, in arrival order."""
        with self._lock:
            return [c for c in self.calls if c.path == REVOKE_PATH]

    # --- faults ------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        *,
        task_id: str | None = None,
        code: int | None = None,
        http_status: int | None = None,
        hang: float | None = None,
    ) -> None:
        """Make the next n revoke calls (for task_id, or any) fail; default ErrorCode 91000."""
        if sum(x is not None for x in (code, http_status, hang)) > 1:
            raise ValueError("give at most one of code, http_status, hang")
        if n < 0 or (hang is not None and hang < 0):
            raise ValueError("n and hang must not be negative")
        if code is None and http_status is None and hang is None:
            code = 91000
        if n:
            with self._lock:
                self._faults.append(_Fault(n, task_id, code, http_status, hang))

    def set_latency(self, seconds: float) -> None:
        """Delay every API answer by `seconds`, after the call has been processed."""
        self._latency = max(0.0, seconds)

    def outage(self, seconds: float, *, http_status: int = 502, hang: float | None = None) -> None:
        """For `seconds`, answer every revoke call with `http_status` (or hang, then 504)."""
        with self._lock:
            self._outage = _Fault(
                0, http_status=None if hang is not None else http_status, hang=hang
            )
            self._outage_until = time.monotonic() + seconds

    def clear_faults(self) -> None:
        """Drop pending failures, any outage and the added latency."""
        with self._lock:
            self._faults.clear()
            self._outage = None
            self._latency = 0.0

    def reset(self) -> None:
        """Forget tasks, calls, faults and the rate limiter's memory."""
        self.clear_faults()
        with self._lock:
            self._tasks.clear()
            self._recalled.clear()
            self.calls.clear()
            self._last_arrival = None

    # --- waiting -----------------------------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[list[CallRecord]], bool],
        timeout: float,  # noqa: ASYNC109 - part of the public interface
    ) -> None:
        """Wait until predicate(calls) is true; TimeoutError after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        waiter = (loop, event)
        with self._lock:
            self._waiters.append(waiter)
        try:
            while True:
                event.clear()  # before the check: a call recorded after it sets it again
                calls = self._snapshot()
                if predicate(calls):
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(self._timeout_message(timeout, calls))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    @staticmethod
    def _timeout_message(timeout: float, calls: list[CallRecord]) -> str:
        lines = [f"sandbox condition still false after {timeout:g}s; {len(calls)} call(s) seen"]
        start = calls[0].arrived if calls else 0.0
        lines += [
            f"  +{c.arrived - start:.3f}s {c.path} task={c.task_id} code={c.code} "
            f"http={c.http_status}"
            for c in calls[-10:]
        ]
        return "\n".join(lines)

    def _snapshot(self) -> list[CallRecord]:
        with self._lock:
            return list(self.calls)

    def _record(self, call: CallRecord) -> None:
        with self._lock:
            # Concurrent calls finish reading their bodies in any order: keep arrival order.
            bisect.insort(self.calls, call, key=lambda c: c.arrived)
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that waiter's loop has closed
                loop.call_soon_threadsafe(event.set)

    async def _pause(self, seconds: float) -> None:
        # A sleep that serve_sandbox can cut short, so shutdown never waits for a long hang.
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, wake)
        self._pauses.add(wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._pauses.discard(wake)

    def _end_pauses(self) -> None:
        loop = asyncio.get_running_loop()
        for wake in list(self._pauses):
            if wake.get_loop() is loop:
                _wake(wake)

    # --- the API -----------------------------------------------------------------------------

    def _check_request(self, request: Request, not_admin: int) -> tuple[int, str] | None:
        """Query parameters, UserSig and admin checks, in the server's order."""
        q, cfg = request.query_params, self.config
        if q.get("contenttype") != "json":
            return 60002, "contenttype must be json"
        appid = q.get("sdkappid", "")
        if not appid:
            return 60012, meaning(60012)
        if not _DIGITS.fullmatch(appid) or int(appid) != cfg.sdkappid:
            return 60006, meaning(60006)
        identifier, usersig = q.get("identifier", ""), q.get("usersig", "")
        if not identifier:
            return 60004, "identifier missing"
        if not usersig:
            return 70002, meaning(70002)
        rnd = q.get("random", "")
        if not _DIGITS.fullmatch(rnd) or int(rnd) > _U32:
            return 60002, "random must be an integer from 0 to 4294967295"
        try:
            verify_usersig(usersig, cfg.sdkappid, identifier, cfg.secret_key, now=self._clock())
        except UserSigError as exc:
            return exc.code, exc.reason
        if identifier not in cfg.admins:
            return not_admin, meaning(not_admin)
        return None

    def _check_rate(self, arrived: float) -> tuple[int, str] | None:
        # Strict on purpose: every call that passed auth is an arrival, including ones answered
        # 90051 and faulted ones, so a client sending faster than the limit keeps being refused
        # until it really slows down. Tencent does not document which calls count; a worker that
        # survives this survives any laxer counting.
        with self._lock:
            last, self._last_arrival = self._last_arrival, arrived
        if last is not None and arrived - last < self.config.min_interval:
            return 90051, meaning(90051)
        return None

    def _take_fault(self, arrived: float, task_id: str | None) -> _Fault | None:
        with self._lock:
            if self._outage is not None and arrived < self._outage_until:
                return self._outage
            for fault in self._faults:
                if fault.task_id is None or fault.task_id == task_id:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _judge(self, doc: dict[str, Any] | None, task_id: str | None, opi: bool) -> tuple[int, str]:
        if doc is None:
            return 90001, meaning(90001)
        now = self._clock()
        with self._lock:
            task = self._tasks.get(task_id) if task_id is not None else None
            if task is None:
                return 90049, meaning(90049)
            if now > task.started_at + self.config.recall_window:
                return 90052, meaning(90052)
            if task.recalled_at is not None:
                return 90050, meaning(90050)
            if not task.online_only and not opi:
                return 90053, meaning(90053)
            task.recalled_at = now
            self._recalled.append(task.task_id)
        return 0, ""

    async def _answer(self, code: int, info: str, **extra: str) -> Response:
        await self._pause(self._latency)
        status = "OK" if code == 0 else "FAIL"
        return JSONResponse({"ActionStatus": status, "ErrorInfo": info, "ErrorCode": code, **extra})

    async def _revoke(self, request: Request) -> Response:
        arrived, wall = time.monotonic(), time.time()
        # No await between the arrival stamp and the rate decision: calls are judged in the
        # order they arrived, whatever order their bodies finish arriving in.
        rejected = self._check_request(request, not_admin=90009)
        if rejected is None:
            rejected = self._check_rate(arrived)
        doc = json_object(await request.body())
        task_id = doc.get("TaskId") if doc is not None else None
        task_id = task_id if isinstance(task_id, str) else None
        opi = doc is not None and isinstance(doc.get("OfflinePushInfo"), dict)
        seen = CallRecord(
            arrived, wall, REVOKE_PATH, task_id, None, 200, _random(request), opi, body=doc
        )

        fault = self._take_fault(arrived, task_id) if rejected is None else None
        if fault is not None and fault.code is None:  # a bare HTTP error or a hang: no JSON
            status = fault.http_status or 504
            self._record(replace(seen, http_status=status))
            await self._pause(self._latency + (fault.hang or 0.0))
            return _gateway_error(status)
        if fault is not None and fault.code is not None:
            rejected = fault.code, meaning(fault.code)
        code, info = rejected or self._judge(doc, task_id, opi)
        self._record(replace(seen, code=code))
        return await self._answer(code, info)

    async def _push(self, request: Request) -> Response:
        arrived, wall = time.monotonic(), time.time()
        rejected = self._check_request(request, not_admin=60010)
        doc = json_object(await request.body())
        flag = doc.get("OnlineOnlyFlag", 0) if doc is not None else None
        if rejected is None and (type(flag) is not int or flag not in (0, 1)):
            rejected = 90001, "body must be a JSON object; OnlineOnlyFlag must be 0 or 1"
        opi = doc is not None and isinstance(doc.get("OfflinePushInfo"), dict)
        task_id = None if rejected else self.create_task(online_only=flag == 1)
        code, info = rejected or (0, "")
        self._record(
            CallRecord(arrived, wall, PUSH_PATH, task_id, code, 200, _random(request), opi)
        )
        return await self._answer(code, info, **({"TaskId": task_id} if task_id else {}))

    # --- for the admin endpoints -------------------------------------------------------------

    def now(self) -> float:
        """The sandbox's wall clock (unix seconds)."""
        return self._clock()

    def call_records(self) -> list[CallRecord]:
        """A copy of every call recorded so far, in arrival order."""
        return self._snapshot()

    def task_records(self) -> list[dict[str, Any]]:
        """Every task as a JSON-ready dict, with whether it was recalled."""
        with self._lock:
            tasks = list(self._tasks.values())
        return [asdict(t) | {"recalled": t.recalled_at is not None} for t in tasks]

    def app(self) -> Starlette:
        """The ASGI app: the two API paths and the /sandbox/ admin endpoints."""
        if self._app is None:
            api = [
                Route(REVOKE_PATH, self._revoke, methods=["POST"]),
                Route(PUSH_PATH, self._push, methods=["POST"]),
            ]
            self._app = Starlette(routes=api + admin_routes(self))
        return self._app


def _random(request: Request) -> int | None:
    rnd = request.query_params.get("random", "")
    return int(rnd) if _DIGITS.fullmatch(rnd) else None


@contextlib.asynccontextmanager
async def serve_sandbox(
    sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve the sandbox in the current event loop; yields its base URL."""
    # Hanging calls are answered at exit rather than keep the shutdown waiting.
    async with serve_app(sandbox.app(), host, port, before_exit=sandbox._end_pauses) as url:
        yield url


def run_sandbox(config: SandboxConfig, host: str, port: int) -> None:
    """Run the sandbox until interrupted (the `tim-recall sandbox` command)."""
    sandbox = Sandbox(config)
    sock = bind(host, port)
    admin = min(config.admins, default="")
    print(
        f"tim-recall sandbox at {base_url(sock)} sdkappid={config.sdkappid} "
        f"identifier={admin} secret_key={config.secret_key}",
        flush=True,
    )
    uvicorn_config = uvicorn.Config(
        sandbox.app(), log_level="warning", access_log=False, lifespan="off"
    )
    uvicorn.Server(uvicorn_config).run(sockets=[sock])
