"""The sandbox: its parts composed into the revoke/push HTTP app, served in the current loop."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive

from consumer.core.serving import serve_app
from consumer.core.usersig import UserSigVerifier
from consumer.sandbox.admin import admin_routes
from consumer.sandbox.apps import DEFAULT_ADMINS, AppRegistry
from consumer.sandbox.calls import CallLog
from consumer.sandbox.checks import check_request, json_object, random_param, sdkappid_param
from consumer.sandbox.faults import Fault, Faults
from consumer.sandbox.front import Front, Handler, read_body
from consumer.sandbox.pauses import Pauses
from consumer.sandbox.records import (
    PUSH_PATH,
    REVOKE_PATH,
    CallRecord,
    SandboxApp,
    SandboxConfig,
)
from consumer.sandbox.store import TaskStore
from schemas.api import meaning


class Sandbox:
    """In-memory revoke/push service for one app or many, with faults and a record of every call."""

    def __init__(
        self, config: SandboxConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._config = config or SandboxConfig()
        self._clock = clock
        # One lock for all parts, so reset forgets everything in one step. A threading lock, so
        # the control methods are safe from another thread too. Critical sections never await,
        # so in one event loop they are atomic and never contend. Reentrant: reset holds it
        # across the parts' own clears.
        self._lock = threading.RLock()
        self._tasks = TaskStore(clock, self._lock)
        self._apps = AppRegistry(self._config.app(), self._lock)
        self._faults = Faults(self._lock)
        self._log = CallLog(self._lock)
        self.calls: list[CallRecord] = self._log.calls
        self._pauses = Pauses()  # serve_sandbox ends them at exit
        # Keyed by the app's key too: a key changed (config, a re-added SDKAppID) just misses.
        self._usersigs = UserSigVerifier()
        self._app: Front | None = None

    # --- apps --------------------------------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        """The default app and the API's limits."""
        return self._config

    @config.setter
    def config(self, config: SandboxConfig) -> None:
        # Tests swap the config of a sandbox already made: the default app follows it, keeping
        # its tasks and its limiter's memory, as when the sandbox served only that one app.
        with self._lock:
            old = self._apps.replace_default(config.app())
            self._tasks.rehome(old, config.sdkappid)
            self._config = config

    def add_app(
        self,
        sdkappid: int,
        *,
        secret_key: str | None = None,
        admins: Collection[str] = DEFAULT_ADMINS,
        min_interval: float | None = None,
    ) -> SandboxApp:
        """Serve one more app (default: a random key, the config's interval); ValueError: taken."""
        return self._apps.create(
            sdkappid, secret_key=secret_key, admins=admins, min_interval=min_interval
        )

    def add_apps(
        self, n: int, *, first: int | None = None, min_interval: float | None = None
    ) -> list[SandboxApp]:
        """Serve n more apps, SDKAppIDs consecutive from `first` (default: past the highest)."""
        return self._apps.create_many(n, first=first, min_interval=min_interval)

    def apps(self) -> list[SandboxApp]:
        """Every app served, the config's first, then in the order they were added."""
        return self._apps.apps()

    # --- tasks -------------------------------------------------------------------------------

    def create_task(
        self,
        *,
        online_only: bool = False,
        started_at: float | None = None,
        sdkappid: int | None = None,
    ) -> str:
        """Register a task of an app (default: the config's) with a Tencent-shaped TaskId."""
        app = self._apps.resolve(sdkappid)
        return self._tasks.create_task(
            sdkappid=app.sdkappid, online_only=online_only, started_at=started_at
        )

    def add_task(
        self,
        task_id: str,
        *,
        online_only: bool = False,
        started_at: float | None = None,
        sdkappid: int | None = None,
    ) -> None:
        """Register an app's task under a TaskId chosen by the caller; ValueError if it exists."""
        app = self._apps.resolve(sdkappid)
        self._tasks.add_task(
            task_id, sdkappid=app.sdkappid, online_only=online_only, started_at=started_at
        )

    def backdate(self, task_id: str, seconds: float) -> None:
        """Move a task's start `seconds` into the past; KeyError if unknown."""
        self._tasks.backdate(task_id, seconds)

    def mark_recalled(self, task_id: str) -> None:
        """Recall a task behind the worker's back (another client did it); KeyError if unknown."""
        self._tasks.mark_recalled(task_id)

    def is_recalled(self, task_id: str) -> bool:
        """Whether the task has been recalled."""
        return self._tasks.is_recalled(task_id)

    def recalled_task_ids(self, sdkappid: int | None = None) -> list[str]:
        """TaskIds recalled so far (of one app, when given), in recall order."""
        return self._tasks.recalled_task_ids(sdkappid)

    def task_records(self, sdkappid: int | None = None) -> list[dict[str, Any]]:
        """Every task (of one app, if given) as a JSON-ready dict, with whether it was recalled."""
        return self._tasks.task_records(sdkappid)

    def now(self) -> float:
        """The sandbox's wall clock (unix seconds)."""
        return self._clock()

    # --- faults ------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        *,
        task_id: str | None = None,
        code: int | None = None,
        http_status: int | None = None,
        hang: float | None = None,
        sdkappid: int | None = None,
    ) -> None:
        """Fail the next n revoke calls (for task_id, to sdkappid, or any); default 91000."""
        self._faults.plan(Fault(n, task_id, code, http_status, hang, sdkappid))

    def set_latency(self, seconds: float) -> None:
        """Delay every API answer by `seconds`, after the call has been processed."""
        self._faults.set_latency(seconds)

    def outage(self, seconds: float, *, http_status: int = 502, hang: float | None = None) -> None:
        """For `seconds`, answer every revoke call with `http_status` (or hang, then 504)."""
        self._faults.outage(seconds, http_status=http_status, hang=hang)

    def clear_faults(self) -> None:
        """Drop pending failures, any outage and the added latency."""
        self._faults.clear()

    def reset(self) -> None:
        """Forget tasks, calls, faults and every app's rate limiter memory; keep the apps."""
        self.clear_faults()
        with self._lock:
            self._tasks.clear()
            self._log.clear()
            self._apps.forget()

    # --- calls -------------------------------------------------------------------------------

    def revoke_calls(self, sdkappid: int | None = None) -> list[CallRecord]:
        """Only the revoke calls (to one app, when given), in arrival order."""
        return self._log.revoke_calls(sdkappid)

    def call_records(self) -> list[CallRecord]:
        """A copy of every call recorded so far, in arrival order."""
        return self._log.snapshot()

    async def wait_for(
        self,
        predicate: Callable[[list[CallRecord]], bool],
        timeout: float,  # noqa: ASYNC109 - part of the public interface
    ) -> None:
        """Wait until predicate(calls) is true; TimeoutError after `timeout` seconds."""
        await self._log.until(predicate, timeout)

    # --- the API -----------------------------------------------------------------------------

    async def _revoke(self, query: Mapping[str, str], receive: Receive) -> Response:
        arrived, wall = time.monotonic(), time.time()
        # No await between the arrival stamp and the rate decision: calls are judged in the
        # order they arrived, whatever order their bodies finish arriving in.
        appid = sdkappid_param(query)
        app = self._apps.get(appid)
        rejected = check_request(query, app, self._clock, not_admin=90009, usersigs=self._usersigs)
        if rejected is None and app is not None:  # the checks pass only for a served app
            rejected = self._apps.arrive(app.sdkappid, arrived)
        doc = json_object(await read_body(receive))
        task_id = doc.get("TaskId") if doc is not None else None
        task_id = task_id if isinstance(task_id, str) else None
        opi = doc is not None and isinstance(doc.get("OfflinePushInfo"), dict)
        rnd = random_param(query)

        def record(code: int | None, status: int = 200) -> None:
            # Made once, when the answer is known (a replace() per call showed in profiles).
            call = CallRecord(
                arrived, wall, REVOKE_PATH, task_id, code, status, rnd, opi, doc, appid
            )
            self._log.record(call)

        fault = self._faults.take(arrived, task_id, appid) if rejected is None else None
        if fault is not None and fault.code is None:  # a bare HTTP error or a hang: no JSON
            status = fault.http_status or 504
            record(None, status)
            await self._pauses.pause(self._faults.latency + (fault.hang or 0.0))
            return _gateway_error(status)
        if fault is not None and fault.code is not None:
            rejected = fault.code, meaning(fault.code)
        window = self._config.recall_window
        code, info = rejected or self._tasks.judge(doc, task_id, opi, window, appid)
        record(code)
        return await self._answer(code, info)

    async def _push(self, query: Mapping[str, str], receive: Receive) -> Response:
        arrived, wall = time.monotonic(), time.time()
        appid = sdkappid_param(query)
        app = self._apps.get(appid)
        rejected = check_request(query, app, self._clock, not_admin=60010, usersigs=self._usersigs)
        doc = json_object(await read_body(receive))
        flag = doc.get("OnlineOnlyFlag", 0) if doc is not None else None
        if rejected is None and (type(flag) is not int or flag not in (0, 1)):
            rejected = 90001, "body must be a JSON object; OnlineOnlyFlag must be 0 or 1"
        opi = doc is not None and isinstance(doc.get("OfflinePushInfo"), dict)
        task_id = None
        if rejected is None and app is not None:  # the task belongs to the app that pushed it
            task_id = self.create_task(online_only=flag == 1, sdkappid=app.sdkappid)
        code, info = rejected or (0, "")
        rnd = random_param(query)
        self._log.record(
            CallRecord(arrived, wall, PUSH_PATH, task_id, code, 200, rnd, opi, sdkappid=appid)
        )
        return await self._answer(code, info, **({"TaskId": task_id} if task_id else {}))

    async def _answer(self, code: int, info: str, **extra: str) -> Response:
        await self._pauses.pause(self._faults.latency)
        status = "OK" if code == 0 else "FAIL"
        return JSONResponse({"ActionStatus": status, "ErrorInfo": info, "ErrorCode": code, **extra})

    def app(self) -> Front:
        """The ASGI app: the two API paths and the /sandbox/ admin endpoints."""
        if self._app is None:
            admin = admin_routes(self._apps, self._tasks, self._faults, self._log, self.reset)
            handlers: dict[str, Handler] = {REVOKE_PATH: self._revoke, PUSH_PATH: self._push}
            # Starlette routes the API paths too: other methods get its 405, as they always did.
            api = [Route(p, _endpoint(h), methods=["POST"]) for p, h in handlers.items()]
            self._app = Front(handlers, Starlette(routes=api + admin))
        return self._app


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """`handler` as a Starlette endpoint, for a POST Front does not take (under a root_path)."""

    async def endpoint(request: Request) -> Response:
        return await handler(request.query_params, request.receive)

    return endpoint


def _gateway_error(status: int) -> Response:
    # What a load balancer answers: HTML, not the API's JSON.
    return HTMLResponse(f"<html><body><h1>{status} Gateway Error</h1></body></html>", status)


@contextlib.asynccontextmanager
async def serve_sandbox(
    sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve the sandbox in the current event loop; yields its base URL."""
    # Hanging calls are answered at exit rather than keep the shutdown waiting. httptools: with
    # its compiled parser uvicorn spends half the CPU per call it does with h11 (sandbox_cost).
    end = sandbox._pauses.end
    async with serve_app(sandbox.app(), host, port, before_exit=end, http="httptools") as url:
        yield url
