"""No SecretKey and no UserSig in anything the worker writes, across successes, retries, a
UserSig renewal, a halt on a wrong key (and the recovery) and dead letters: not in its output,
not in the dead letters' headers, not in the results events, and (in-process) not in the raw
structlog events before any scrubbing processor runs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from consumer.sandbox import SandboxConfig
from tests.support.broker import FAST_INTERVAL_S, OVERWRITE, Names
from tests.support.faults import (
    FaultBroker,
    Published,
    RecordingSandbox,
    events_named,
    ledger,
    publish_all,
    read_all_results,
    report,
    request_for,
    stop,
    wait_until,
)
from tests.support.workers import SpawnWorker, WorkerFactory

pytestmark = [pytest.mark.faults, pytest.mark.integration]

WRONG_KEY = "wrong-secret-key-that-must-not-leak-0123456789"
USERSIG_TOKEN = re.compile(r"e[AFJN][A-Za-z0-9*\-_]{40,}")
USERSIG_QUERY = re.compile(r"usersig=", re.IGNORECASE)


@pytest.fixture
def sandbox() -> RecordingSandbox:
    """This module's sandbox keeps every UserSig it received."""
    return RecordingSandbox(SandboxConfig(min_interval=FAST_INTERVAL_S))


def leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """What in `text` is a secret, a UserSig-shaped token or a `usersig=` parameter."""
    found = [f"secret {s[:6]}…" for s in secrets if s and s in text]
    found += [f"token {m.group()[:12]}…" for m in USERSIG_TOKEN.finditer(text)]
    found += [f"query {m.group()}" for m in USERSIG_QUERY.finditer(text)]
    return found


def secrets_of(sandbox: RecordingSandbox) -> set[str]:
    """The keys used in the run and every UserSig the sandbox received."""
    usersigs = {r.usersig for r in sandbox.received if r.usersig}
    assert usersigs, "the sandbox received no UserSig: the run made no call"
    # The detector sees a real one: the pattern fits every UserSig the worker sent.
    assert all(USERSIG_TOKEN.fullmatch(u) for u in usersigs), usersigs
    return {sandbox.config.secret_key, WRONG_KEY, *usersigs}


def scenario(sandbox: RecordingSandbox) -> tuple[list[Published], list[Published], str]:
    """Requests for every path but the halt, the halt's request, and its TaskId."""
    ok, retried, timed_out, renewed, no_overwrite, elsewhere, halted = (
        sandbox.create_task() for _ in range(7)
    )
    sandbox.fail_next(2, task_id=retried, code=91000)
    sandbox.fail_next(1, task_id=retried, http_status=502)
    sandbox.fail_next(1, task_id=timed_out, hang=1.5)  # past the 1 s read timeout
    sandbox.fail_next(1, task_id=renewed, code=70001)  # UserSig expired: renew, retry
    sandbox.mark_recalled(elsewhere)  # someone else recalled it: 90050, dead-lettered
    first = [
        request_for(ok, {"TaskId": ok, "OfflinePushInfo": OVERWRITE}),
        request_for(retried, {"TaskId": retried, "OfflinePushInfo": OVERWRITE}),
        request_for(timed_out, {"TaskId": timed_out, "OfflinePushInfo": OVERWRITE}),
        request_for(renewed, {"TaskId": renewed, "OfflinePushInfo": OVERWRITE}),
        request_for(None, {"TaskId": "no-such-task-0001", "OfflinePushInfo": OVERWRITE}),
        request_for(no_overwrite, {"TaskId": no_overwrite}),  # 90053
        request_for(
            elsewhere,
            {"TaskId": elsewhere, "OfflinePushInfo": OVERWRITE},
            recalled_elsewhere=True,
        ),
        request_for(None, b"not json at all"),  # 90001 local
    ]
    # The halt: a renewal (70001) makes the next UserSig from the key file, which now holds a
    # wrong key: 70003, a configuration error.
    sandbox.fail_next(1, task_id=halted, code=70001)
    halt = [request_for(halted, {"TaskId": halted, "OfflinePushInfo": OVERWRITE})]
    return first, halt, halted


async def test_no_secret_in_any_output(
    broker: FaultBroker,
    names: Names,
    sandbox: RecordingSandbox,
    spawn_worker: SpawnWorker,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "tim-secret-key"
    key_file.write_text(sandbox.config.secret_key)
    first, halt, halted = scenario(sandbox)
    worker = await spawn_worker(
        TIM_SECRET_KEY_FILE=str(key_file),
        TIM_READ_TIMEOUT_S="1",
        RECALL_LOG_LEVEL="debug",
        RECALL_HALT_PROBE_INITIAL_S="0.2",
        RECALL_HALT_PROBE_MAX_S="0.5",
    )
    await worker.ready()
    await publish_all(broker, first)
    await wait_until(lambda: _settled(worker) >= len(first), 30, "the first requests settled")

    key_file.write_text(WRONG_KEY)
    await publish_all(broker, halt)
    await wait_until(lambda: bool(events_named(worker, "worker_halted")), 15, "the worker to halt")
    await wait_until(lambda: bool(events_named(worker, "halt_probe_failed")), 15, "a failed probe")
    key_file.write_text(sandbox.config.secret_key)  # an operator fixes the Secret
    await wait_until(lambda: sandbox.is_recalled(halted), 20, "the recall after the fix")
    await wait_until(lambda: _settled(worker) >= len(first) + 1, 10, "the last request settled")
    await stop(worker)

    requests = first + halt
    figures = await ledger(broker, sandbox, requests)
    events = await read_all_results(broker)
    secrets = secrets_of(sandbox)
    log = worker.log()
    outputs = {
        "worker output": log,
        "dead-letter headers": repr([dict(m.headers or {}) for m in figures.dead.values()]),
        "results events": "\n".join(e.model_dump_json() for e in events),
    }
    for where, text in outputs.items():
        assert not leaks(text, secrets), (where, leaks(text, secrets))
    # The run went through every path it was meant to.
    codes = {c.code for c in sandbox.revoke_calls()}
    assert {0, 91000, 70001, 70003, 90049, 90050, 90053} <= codes, codes
    assert {"retry_scheduled", "worker_halted", "halt_probe_failed", "worker_resumed"} <= {
        e.get("event") for e in worker.events()
    }
    assert figures.dead_codes() == {90049: 1, 90053: 1, 90050: 1, 90001: 1}
    report(
        "no_secret_in_any_output",
        log_lines=len(log.splitlines()),
        usersigs_checked=len(secrets) - 2,
        ledger=figures.figures(),
    )


def _settled(worker: Any) -> int:
    return len(events_named(worker, "request_recalled")) + len(
        events_named(worker, "request_dead_lettered")
    )


def _flatten(value: Any) -> Iterable[str]:
    """Every string a captured event holds, as str() and repr() of each value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _flatten(v)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _flatten(v)
    else:
        yield str(value)
        yield repr(value)


async def test_no_secret_in_log_events_in_process(
    broker: FaultBroker,
    names: Names,
    sandbox: RecordingSandbox,
    run_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "tim-secret-key"
    key_file.write_text(sandbox.config.secret_key)
    first, halt, halted = scenario(sandbox)
    with capture_logs() as captured:  # the raw events, before the scrubbing processor
        async with run_worker(
            secret_key_value=None, secret_key_file=key_file, read_timeout_s=1.0
        ) as running:
            await publish_all(broker, first)
            await running.wait_settled(len(first), timeout=30)
            key_file.write_text(WRONG_KEY)
            await publish_all(broker, halt)
            await wait_until(lambda: running.worker.halted, 15, "the worker to halt")
            await wait_until(lambda: _probe_failed(captured), 15, "a failed probe")
            key_file.write_text(sandbox.config.secret_key)
            await running.wait_settled(len(first) + 1, timeout=20)
    figures = await ledger(broker, sandbox, first + halt)
    assert sandbox.is_recalled(halted)
    secrets = secrets_of(sandbox)
    names_seen = {e.get("event") for e in captured}
    assert {
        "request_recalled",
        "retry_scheduled",
        "request_dead_lettered",
        "worker_halted",
        "halt_probe_failed",
        "worker_resumed",
    } <= names_seen, names_seen
    for event in captured:
        for text in _flatten(event):
            assert not leaks(text, secrets), (event.get("event"), leaks(text, secrets))
    report(
        "no_secret_in_log_events_in_process",
        events=len(captured),
        usersigs_checked=len(secrets) - 2,
        ledger=figures.figures(),
    )


def _probe_failed(captured: list[dict[str, Any]]) -> bool:
    return any(e.get("event") == "halt_probe_failed" for e in captured)
