"""The `tim-recall sandbox` command's body: one sandbox, one app or many, until interrupted."""

from __future__ import annotations

import uvicorn

from consumer.core.serving import base_url, bind
from consumer.sandbox.app import Sandbox
from consumer.sandbox.records import SandboxApp, SandboxConfig


def run_sandbox(config: SandboxConfig, host: str, port: int, *, apps: int = 1) -> None:
    """Run the sandbox serving `apps` apps until interrupted (the `tim-recall sandbox` command)."""
    if apps < 1:
        raise ValueError("apps must be at least 1")
    sandbox = Sandbox(config)
    # The added apps' SDKAppIDs follow the config's, so one can be told from the next.
    added = sandbox.add_apps(apps - 1, first=config.sdkappid + 1)
    sock = bind(host, port)
    print(f"tim-recall sandbox at {base_url(sock)} {_app_line(config.app())}", flush=True)
    for app in added:
        print(_app_line(app), flush=True)
    uvicorn_config = uvicorn.Config(
        sandbox.app(), http="httptools", log_level="warning", access_log=False, lifespan="off"
    )
    uvicorn.Server(uvicorn_config).run(sockets=[sock])


def _app_line(app: SandboxApp) -> str:
    admin = min(app.admins, default="")
    return f"sdkappid={app.sdkappid} identifier={admin} secret_key={app.secret_key}"
