"""HTTP endpoints for operators: /metrics, /healthz (liveness), /readyz (readiness)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.core.metrics import Metrics


def health_app(
    metrics: Metrics,
    ready: Callable[[], dict[str, bool]],
    live: Callable[[], dict[str, bool]] = dict,
    details: Callable[[], dict[str, Any]] = dict,
    *,
    apps: Callable[[], list[dict[str, Any]]] = list,
) -> Starlette:
    """The operator endpoints; `ready` and `live` report each condition by name, `details`
    what /readyz shows beside them (the age of the delivery in hand and of the last settle)."""

    async def healthz(_: Request) -> Response:
        # Liveness: the event loop answers and every task the worker needs is alive (a halted
        # worker whose probe died would never resume: an orchestrator must restart it). A
        # broker outage is not a liveness failure: it must not restart every replica.
        checks = live()
        if all(checks.values()):
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unhealthy", **checks}, status_code=503)

    async def readyz(_: Request) -> Response:
        checks = ready()
        ok = all(checks.values())
        body = {"ready": ok, **checks, **details()}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def apps_endpoint(_: Request) -> Response:
        # Each app served here: active or standby, halted and why.
        return JSONResponse({"apps": apps()})

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/apps", apps_endpoint),
            Route("/metrics", metrics_endpoint),
        ]
    )
