"""Build the worker from the settings: the one place where the pieces are wired together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable
from dataclasses import replace

import httpx
import structlog

from consumer.core import tracing
from consumer.core.apps import App
from consumer.core.client import MAX_HTTP_CONNECTIONS, make_http_client
from consumer.core.fence import UnworkableHeartbeat, fence_after_s, heartbeat_of, with_heartbeat
from consumer.core.memory import RecallMemory
from consumer.core.metrics import Metrics
from consumer.core.nodes import split_urls
from consumer.core.prepare import PrepareRules
from consumer.core.recaller import RetryRules
from consumer.core.serving import serve_app
from consumer.core.settings import Settings, SettingsError
from consumer.core.topology import Topology
from consumer.core.worker import Worker, WorkerConfig
from consumer.ops.health import health_app
from consumer.ops.lanes import app_lane, fleet_apps
from consumer.ops.looplag import watching_loop_lag
from consumer.ops.reload import AppsReloader
from schemas.events import ResultEvent


def fence_s(settings: Settings, urls: list[str]) -> float:
    """The fence for the shortest heartbeat of RECALL_AMQP_URL's list; SettingsError naming the
    setting when a heartbeat cannot work (0, or too short for TIM_CONNECT_TIMEOUT_S)."""
    fences = []
    for url in urls:
        named = heartbeat_of(url, -1.0) != -1.0
        heartbeat = heartbeat_of(with_heartbeat(url, settings.heartbeat_s))
        try:
            fences.append(fence_after_s(heartbeat, settings.connect_timeout_s))
        except UnworkableHeartbeat as exc:
            where = "RECALL_AMQP_URL (its heartbeat=)" if named else "RECALL_HEARTBEAT_S"
            raise SettingsError(f"{where}: {exc}") from None
    return min(fences, default=fence_after_s(60.0))


def worker_config(settings: Settings) -> WorkerConfig:
    """The worker's part of the settings."""
    given = split_urls(settings.amqp_url.get_secret_value())
    urls = [with_heartbeat(url, settings.heartbeat_s) for url in given]
    topology = Topology.from_settings(settings)
    return WorkerConfig(
        amqp_url=",".join(urls),
        fence_s=fence_s(settings, given),
        # Every app's queue is bound to the fleet's exchange with its SDKAppID (a fleet of one
        # too: its queue keeps its name, and producers may route by app as well).
        topology=replace(topology, exchange=settings.exchange),
        retry=RetryRules(
            budget_s=settings.retry_budget_s,
            initial_s=settings.retry_initial_s,
            max_s=settings.retry_max_s,
        ),
        prepare=PrepareRules(
            expiry_check=settings.expiry_check,
            expiry_margin_s=settings.expiry_margin_s,
            default_offline_push_info=settings.default_offline_push_info,
        ),
        max_body_bytes=settings.max_body_bytes,
        halt_probe_initial_s=settings.halt_probe_initial_s,
        halt_probe_max_s=settings.halt_probe_max_s,
        rebuild_budget_s=settings.rebuild_budget_s,
        replica_id=settings.replica_id,
    )


def build_worker(
    settings: Settings,
    http: httpx.AsyncClient,
    *,
    metrics: Metrics | None = None,
    on_settled: Callable[[ResultEvent], None] | None = None,
    apps: list[App] | None = None,
) -> Worker:
    """A worker wired from the settings (credentials are checked here: SettingsError)."""
    # Fails now, naming the variable or the entry, not at the first call.
    apps = apps if apps is not None else fleet_apps(settings)
    return Worker(
        worker_config(settings),
        [app_lane(app, settings, http) for app in apps],
        metrics or Metrics(),
        memory=RecallMemory(max_entries=settings.memory_max_entries),
        on_settled=on_settled,
    )


async def run_worker(settings: Settings, apps: list[App] | None = None) -> None:
    """`tim-recall run`: the worker and its HTTP endpoints until SIGTERM or SIGINT; SIGHUP or a
    change of RECALL_APPS_FILE reloads the apps."""
    log = structlog.get_logger()
    tracing.configure_from_env()  # OTEL_*: spans per delivery and call (extra tim-recall[otel])
    apps = apps if apps is not None else fleet_apps(settings)
    # One keep-alive pool for every lane: a few connections per API host in use at once.
    pool = min(max(4, len(apps)), MAX_HTTP_CONNECTIONS)
    async with make_http_client(
        settings.connect_timeout_s,
        settings.read_timeout_s,
        connections=pool,
        transport=settings.http_transport,
    ) as http:
        worker = build_worker(settings, http, apps=apps)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stopper(worker, sig))
        reloader = AppsReloader(worker, settings, http, apps)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(watching_loop_lag(worker.metrics))
            if settings.apps_file is not None:
                loop.add_signal_handler(signal.SIGHUP, reloader.request)
                stack.push_async_callback(reloader.stop)
                reloader.start()
            if settings.http_port:
                app = health_app(
                    worker.metrics,
                    worker.readiness,
                    worker.liveness,
                    worker.progress,
                    apps=worker.apps,
                )
                url = await stack.enter_async_context(
                    serve_app(app, settings.http_host, settings.http_port)
                )
                log.info("http_endpoints_serving", url=url)
            log.info(
                "worker_starting",
                apps=len(apps),
                queues=sorted({a.queue for a in apps})[:10],
                dead_letter_queue=settings.dead_letter_queue,
                results_stream=settings.results_stream,
                exchange=settings.exchange,
                replica_id=settings.replica_id,
                api=sorted({a.api_base_url for a in apps})[:10],
                interval_s=settings.interval_s,
            )
            # Everything made so far (modules, classes, schemas) lives as long as the process:
            # out of the collector's sight, a full collection walks only what came after (a
            # full one walked it all in 200 ms at 200 apps, a stall every app's call waited on).
            gc.collect()
            gc.freeze()
            await worker.run()


def event_loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (RECALL_EVENT_LOOP=uvloop, the default), or asyncio's own."""
    if settings.event_loop == "asyncio":
        return None
    import uvloop  # noqa: PLC0415 (only the worker's process needs it)

    return uvloop.new_event_loop


def _stopper(worker: Worker, sig: signal.Signals) -> Callable[[], None]:
    def stop() -> None:
        structlog.get_logger().info("signal_received", signal=sig.name)
        worker.stop()

    return stop
