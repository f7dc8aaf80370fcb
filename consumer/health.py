"""HTTP endpoints for operators: /metrics, /healthz (liveness), /readyz (readiness)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.metrics import Metrics


def health_app(metrics: Metrics, ready: Callable[[], dict[str, bool]]) -> Starlette:
    """The operator endpoints; `ready` reports each readiness condition by name."""

    async def healthz(_: Request) -> Response:
        # Liveness only: the event loop answers. A broker outage must not restart every replica.
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks = ready()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ]
    )
