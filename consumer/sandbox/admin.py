"""The sandbox's /sandbox/ admin endpoints: apps, tasks, faults, latency, outages, the calls.

No auth: the sandbox listens on 127.0.0.1 by default and holds no real secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.sandbox.apps import DEFAULT_ADMINS, AppRegistry
from consumer.sandbox.calls import CallLog
from consumer.sandbox.checks import json_object
from consumer.sandbox.faults import Fault, Faults
from consumer.sandbox.records import SandboxApp
from consumer.sandbox.store import TaskStore


class _Strict(BaseModel):
    """Bodies of the admin endpoints: unknown fields are a mistake, answered 400."""

    model_config = ConfigDict(extra="forbid")


class _NewApp(_Strict):
    sdkappid: int
    secret_key: str | None = None
    admins: list[str] = sorted(DEFAULT_ADMINS)
    min_interval: float | None = None


class _NewTask(_Strict):
    online_only: bool = False
    task_id: str | None = None
    backdate_s: float = 0.0
    sdkappid: int | None = None  # None: the default app


class _Seconds(_Strict):
    seconds: float


class _FaultIn(_Strict):
    n: int
    task_id: str | None = None
    code: int | None = None
    http_status: int | None = None
    hang: float | None = None
    sdkappid: int | None = None


class _OutageIn(_Strict):
    seconds: float
    http_status: int = 502
    hang: float | None = None


# An admin action takes the request and its JSON body; None answers {"ok": true}.
_AdminAction = Callable[[Request, dict[str, Any]], Any]


def _app_record(app: SandboxApp) -> dict[str, Any]:
    return {
        "sdkappid": app.sdkappid,
        "secret_key": app.secret_key,  # a sandbox key, made to be handed to the worker under test
        "admins": sorted(app.admins),
        "min_interval": app.min_interval,
    }


def _new_app(apps: AppRegistry, doc: dict[str, Any]) -> dict[str, Any]:
    new = _NewApp.model_validate(doc)
    app = apps.create(
        new.sdkappid, secret_key=new.secret_key, admins=new.admins, min_interval=new.min_interval
    )
    return _app_record(app)


def _new_task(apps: AppRegistry, tasks: TaskStore, doc: dict[str, Any]) -> dict[str, str]:
    new = _NewTask.model_validate(doc)
    start = tasks.now() - new.backdate_s
    appid = apps.resolve(new.sdkappid).sdkappid  # ValueError (400) for an app not served
    if new.task_id is None:
        task_id = tasks.create_task(sdkappid=appid, online_only=new.online_only, started_at=start)
        return {"TaskId": task_id}
    tasks.add_task(new.task_id, sdkappid=appid, online_only=new.online_only, started_at=start)
    return {"TaskId": new.task_id}


def _fault(doc: dict[str, Any]) -> Fault:
    f = _FaultIn(**doc)
    return Fault(f.n, f.task_id, f.code, f.http_status, f.hang, f.sdkappid)


def _app_filter(request: Request) -> int | None:
    """The `?sdkappid=` a listing is narrowed to, or None; ValueError (400) if not a number."""
    value = request.query_params.get("sdkappid")
    return None if value is None else int(value)


def admin_routes(
    apps: AppRegistry,
    tasks: TaskStore,
    faults: Faults,
    calls: CallLog,
    reset: Callable[[], None],
) -> list[Route]:
    """The /sandbox/ routes that control a sandbox's parts from another process."""

    def call_records(request: Request) -> list[dict[str, Any]]:
        appid = _app_filter(request)
        return [asdict(c) for c in calls.snapshot() if appid in (None, c.sdkappid)]

    actions: dict[tuple[str, str], _AdminAction] = {
        ("GET", "health"): lambda r, d: {"ok": True},
        ("GET", "apps"): lambda r, d: [_app_record(a) for a in apps.apps()],
        ("POST", "apps"): lambda r, d: _new_app(apps, d),
        ("GET", "tasks"): lambda r, d: tasks.task_records(_app_filter(r)),
        ("POST", "tasks"): lambda r, d: _new_task(apps, tasks, d),
        ("POST", "tasks/{task_id:path}/backdate"): lambda r, d: tasks.backdate(
            r.path_params["task_id"], _Seconds(**d).seconds
        ),
        ("POST", "faults"): lambda r, d: faults.plan(_fault(d)),
        ("DELETE", "faults"): lambda r, d: faults.clear(),
        ("POST", "latency"): lambda r, d: faults.set_latency(_Seconds(**d).seconds),
        ("POST", "outage"): lambda r, d: faults.outage(**_OutageIn(**d).model_dump()),
        ("GET", "calls"): lambda r, d: call_records(r),
        ("POST", "reset"): lambda r, d: reset(),
    }
    return [
        Route(f"/sandbox/{path}", _admin_endpoint(action), methods=[method])
        for (method, path), action in actions.items()
    ]


def _admin_endpoint(action: _AdminAction) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            doc = json_object(await request.body() or b"{}")
            if doc is None:
                raise ValueError("body must be a JSON object")
            result = action(request, doc)
        except (ValidationError, ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        except KeyError as exc:
            return JSONResponse({"error": f"unknown task {exc}"}, 404)
        return JSONResponse({"ok": True} if result is None else result)

    return endpoint
