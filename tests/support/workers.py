"""Workers for the tests: settings against the sandbox, one in this event loop, or `tim-recall run`
as a child process, and which replica is active."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import consumer.core.verdict as verdict_module
from consumer.core.metrics import Metrics
from consumer.core.settings import Settings, load_settings
from consumer.core.worker import Worker
from consumer.ops.reload import AppsReloader
from consumer.sandbox import Sandbox
from schemas.events import ResultEvent
from schemas.recall import RecallRequest, parse_request
from tests.support.broker import Names, wait_until


def worker_settings(
    amqp_url: str, sandbox: Sandbox, sandbox_url: str, names: Names, **overrides: Any
) -> Settings:
    """Settings for a worker against the sandbox, on the test's queues, at a short interval."""
    values: dict[str, Any] = {
        "sdkappid": sandbox.config.sdkappid,
        "secret_key_value": sandbox.config.secret_key,
        "base_url": sandbox_url,
        "amqp_url": amqp_url,
        "queue": names.queue,
        "interval_s": sandbox.config.min_interval,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
        "retry_budget_s": 10.0,
        "halt_probe_initial_s": 0.2,
        "halt_probe_max_s": 0.5,
        "http_port": 0,
        "read_timeout_s": 2.0,
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class RunningWorker:
    """A worker running in this test's event loop, and what it settled."""

    worker: Worker
    settled: list[ResultEvent]
    metrics: Metrics
    reloader: AppsReloader | None = None

    async def reload_apps(self) -> None:
        """Read RECALL_APPS_FILE again now, as SIGHUP does."""
        assert self.reloader is not None
        await self.reloader.reload()

    def outcomes(self) -> dict[str | None, tuple[str, int]]:
        return {e.message_id: (e.outcome, e.error_code) for e in self.settled}

    async def wait_settled(self, count: int, timeout: float = 20.0) -> None:
        await wait_until(lambda: len(self.settled) >= count, timeout, f"{count} settled requests")


WorkerFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningWorker]]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    """`tim-recall run` as a child process, with its HTTP endpoints on `port`."""

    process: asyncio.subprocess.Process
    port: int
    log_path: Path

    async def ready(self, timeout: float = 20.0) -> None:
        """Wait until /readyz answers 200."""

        async def check() -> bool:
            if self.process.returncode is not None:
                raise AssertionError(f"worker exited {self.process.returncode}: {self.log()}")
            try:
                async with httpx.AsyncClient(timeout=1.0) as http:
                    answer = await http.get(f"http://127.0.0.1:{self.port}/readyz")
            except httpx.HTTPError:
                return False
            return answer.status_code == 200

        await wait_until(check, timeout, "the worker's /readyz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events the process wrote."""
        found = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    found.append(doc)
        return found

    async def exit_code(self, timeout: float = 30.0) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    def assert_json_lines(self) -> None:
        """Every complete non-empty line of the log is one JSON object (RECALL_LOG_FORMAT=json)."""
        # What follows the last newline may be a line cut short by a SIGKILL: not counted.
        for number, line in enumerate(self.log().split("\n")[:-1], 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                raise AssertionError(
                    f"{self.log_path.name} line {number} is not a JSON object: {line[:500]!r}"
                )


SpawnWorker = Callable[..., Awaitable[WorkerProcess]]


async def active_replica(*workers: WorkerProcess, timeout: float = 15.0) -> WorkerProcess:
    """The replica that settled a request (the queue's single active consumer)."""

    def settled_any(worker: WorkerProcess) -> bool:
        return any(e.get("event") == "request_recalled" for e in worker.events())

    await wait_until(lambda: any(settled_any(w) for w in workers), timeout, "a replica to settle")
    (active,) = [w for w in workers if settled_any(w)]  # never two: single active consumer
    return active


def raising_for(monkeypatch: pytest.MonkeyPatch, task_id: str, times: int) -> list[int]:
    """Make the worker's parsing of the request for `task_id` raise `times` times (a bug, a
    library fault), in this process's workers; the list grows by one per raise."""
    raised: list[int] = []

    def parse(raw: bytes, max_bytes: int) -> RecallRequest:
        if task_id.encode() in raw and len(raised) < times:
            raised.append(1)
            raise RuntimeError("a bug for this body")
        return parse_request(raw, max_bytes)

    monkeypatch.setattr(verdict_module, "parse_request", parse)
    return raised
