"""The commands that run something: the worker, the demo, the API sandbox."""

from __future__ import annotations

import asyncio
import sys

import click

from consumer.core.broker import check
from consumer.core.settings import load_settings
from consumer.ops.app import event_loop_factory, run_worker
from consumer.ops.cli.console import EXIT_FAILURE, logging_for, quiet_libraries
from consumer.ops.demo import run_demo
from consumer.ops.lanes import fleet_apps
from consumer.sandbox import SandboxConfig, run_sandbox


@click.command()
def run() -> None:
    """Run the worker until SIGTERM or SIGINT."""

    settings = load_settings()
    apps = fleet_apps(settings)  # exits 2 naming the variable or the apps file's entry
    logging_for(settings, secrets=[app.keys() for app in apps])
    with asyncio.Runner(loop_factory=event_loop_factory(settings)) as runner:
        runner.run(run_worker(settings, apps))


@click.command()
def demo() -> None:
    """Start a sandbox, run the worker against it, and show every outcome (under 30 s)."""

    settings = load_settings()
    quiet_libraries()
    asyncio.run(check(settings.amqp_url.get_secret_value()))  # one line, not a wait, if down
    quiet_libraries(False)
    logging_for(settings)
    ok = asyncio.run(run_demo(settings))
    sys.exit(0 if ok else EXIT_FAILURE)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--min-interval", default=1.0, show_default=True, help="The API's frequency limit, s."
)
@click.option(
    "--apps",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Chat apps to serve, each with its own key and limit; SDKAppIDs consecutive.",
)
def sandbox(host: str, port: int, min_interval: float, apps: int) -> None:
    """Serve a local sandbox of the revoke API (no credentials needed)."""

    run_sandbox(SandboxConfig(min_interval=min_interval), host, port, apps=apps)
