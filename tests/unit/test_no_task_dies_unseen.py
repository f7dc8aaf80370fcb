"""The halt probe survives its own errors; /healthz says when a task the worker needs is gone."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from consumer.core.client import CallObserver
from consumer.core.halt import HaltProbe
from consumer.core.memory import RecallMemory
from consumer.core.metrics import Metrics
from consumer.core.pacing import Pacer
from consumer.core.results import ApiAnswer, ApiResult
from consumer.ops.health import health_app


class FlakyClient:
    """A probe's client: the first renewal raises (a key file mid-rewrite), then answers."""

    def __init__(self, answers: list[ApiResult]) -> None:
        self.answers = answers
        self.renewals = 0

    def renew_usersig(self) -> None:
        self.renewals += 1
        if self.renewals == 1:
            raise RuntimeError("TIM_SECRET_KEY_FILE is empty")

    async def post(self, body: bytes, observer: CallObserver | None = None) -> ApiResult:
        return self.answers.pop(0)


async def test_a_probe_that_raises_keeps_probing_and_resumes() -> None:
    client = FlakyClient([ApiAnswer(70003, "bad sig"), ApiAnswer(90049, "no such task")])
    resumed = asyncio.Event()

    async def resume() -> None:
        resumed.set()

    probe = HaltProbe(client, Pacer(0.001), 0.01, 0.02)  # type: ignore[arg-type]
    with capture_logs() as logs:
        probe.start(resume, asyncio.Event())
        await asyncio.wait_for(resumed.wait(), 5)
    events = [e["event"] for e in logs]
    assert events == ["halt_probe_error", "halt_probe_failed", "halt_probe_passed"]
    error = logs[0]
    assert error["log_level"] == "error"
    assert error["exc_info"] is True  # the traceback goes with the event
    assert client.renewals == 3


async def test_a_probe_whose_resume_fails_probes_again() -> None:
    client = FlakyClient([ApiAnswer(0, ""), ApiAnswer(90049, ""), ApiAnswer(90049, "")])
    client.renewals = 1  # no renewal error here
    calls = 0

    async def resume() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("broker gone while resuming")

    probe = HaltProbe(client, Pacer(0.001), 0.01, 0.02)  # type: ignore[arg-type]
    with capture_logs() as logs:
        probe.start(resume, asyncio.Event())
        for _ in range(200):
            if calls == 2:
                break
            await asyncio.sleep(0.01)
    assert calls == 2
    assert "halt_probe_error" in [e["event"] for e in logs]
    assert not probe.running()


async def _get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as http:
        return await http.get(path)


async def test_healthz_is_503_when_a_needed_task_is_gone() -> None:
    checks = {"halt_probe": True}
    app = health_app(Metrics(), lambda: {"connected": True}, lambda: dict(checks))
    assert (await _get(app, "/healthz")).status_code == 200
    checks["halt_probe"] = False  # halted, and the probe that would resume it died
    answer = await _get(app, "/healthz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unhealthy", "halt_probe": False}


def test_memory_is_exported_by_rank() -> None:
    metrics, memory = Metrics(), RecallMemory(max_entries=1000)
    metrics.watch_memory(memory)
    memory.remember("task-1", 100.0, 100.0)
    text = generate_latest(metrics.registry).decode()
    assert 'tim_recall_memory_entries{rank="recalled"} 1.0' in text
    assert 'tim_recall_memory_evictions_total{rank="told_local"} 0.0' in text
