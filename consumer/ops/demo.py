"""`tim-recall demo`: a sandbox, demo queues and the worker, meeting every path once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import click
from pydantic import SecretStr

from consumer.core.broker import connect_any
from consumer.core.client import make_http_client
from consumer.core.settings import Settings
from consumer.ops.app import build_worker
from consumer.ops.publish import Outgoing, amqp_message
from consumer.ops.reports import RESULTS_HEADERS, results_rows, table
from consumer.producer import RecallPublisher
from consumer.sandbox import Sandbox, SandboxConfig, serve_sandbox
from schemas.events import ResultEvent

DEMO_TIMEOUT_S = 60.0
OVERWRITE = '"OfflinePushInfo": {"Title": "Recalled", "Desc": "This message was recalled."}'


@dataclass(frozen=True)
class Case:
    """One path through the worker, and what it must come to."""

    label: str
    outcome: str
    code: int
    body: Callable[[Sandbox], bytes]


def _task(
    sandbox: Sandbox,
    *,
    overwrite: bool = True,
    fault: dict[str, int] | None = None,
    backdate_s: float = 0.0,
    recalled: bool = False,
) -> bytes:
    task_id = sandbox.create_task()
    if fault:
        sandbox.fail_next(1, task_id=task_id, **fault)
    if backdate_s:
        sandbox.backdate(task_id, backdate_s)
    if recalled:
        sandbox.mark_recalled(task_id)
    extra = f", {OVERWRITE}" if overwrite else ""
    return f'{{"TaskId": "{task_id}"{extra}}}'.encode()


CASES = (
    Case("plain recall", "recalled", 0, _task),
    Case("91000, then success", "recalled", 0, lambda s: _task(s, fault={"code": 91000})),
    Case("90051, then success", "recalled", 0, lambda s: _task(s, fault={"code": 90051})),
    Case("502, then success", "recalled", 0, lambda s: _task(s, fault={"http_status": 502})),
    Case(
        "unknown TaskId",
        "dead_lettered",
        90049,
        lambda s: f'{{"TaskId": "{int(time.time()):08x}_0badf00d_0_0_0", {OVERWRITE}}}'.encode(),
    ),
    Case("recalled by someone else", "dead_lettered", 90050, lambda s: _task(s, recalled=True)),
    Case("window passed", "dead_lettered", 90052, lambda s: _task(s, backdate_s=25 * 3600)),
    Case("no OfflinePushInfo", "dead_lettered", 90053, lambda s: _task(s, overwrite=False)),
    Case(
        "invalid message",
        "dead_lettered",
        90001,
        lambda s: b'{"TaskId": "x", "OfflinePushinfo": {"Title": "typo"}}',
    ),
)


async def run_demo(settings: Settings) -> bool:
    """Run every case; print a table; True when each came to what it should."""
    sandbox = Sandbox(SandboxConfig())
    queue = f"tim-recall-demo-{uuid.uuid4().hex[:8]}"
    settled: dict[str, ResultEvent] = {}
    done = asyncio.Event()

    def on_settled(event: ResultEvent) -> None:
        if event.message_id is not None:
            settled[event.message_id] = event
        if len(settled) == len(CASES):
            done.set()

    async with serve_sandbox(sandbox) as base_url:
        demo_settings = settings.model_copy(
            update={
                "sdkappid": sandbox.config.sdkappid,
                "secret_key_value": None,
                "secret_key_file": None,
                "identifier": sorted(sandbox.config.admins)[0],
                "base_url": base_url,
                "queue": queue,
                "dead_letter_queue_name": None,
                "results_stream_name": None,
                "default_offline_push_info": None,
                "http_port": 0,
            }
        )
        secret = sandbox.config.secret_key
        demo_settings = _with_key(demo_settings, secret)
        click.echo(f"sandbox at {base_url}; demo queue {queue}; real 1 call/s limit")
        async with make_http_client(2.0, 5.0) as http:
            worker = build_worker(demo_settings, http, on_settled=on_settled)
            started = asyncio.Event()
            run = asyncio.create_task(worker.run(started))
            await asyncio.wait_for(started.wait(), timeout=15)
            sent = await _publish_cases(demo_settings, sandbox)
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(done.wait(), timeout=DEMO_TIMEOUT_S)
            except TimeoutError:
                click.echo(f"timed out: {len(settled)} of {len(CASES)} settled", err=True)
            ok = _report(sent, settled, time.monotonic() - t0)
            ok = await _publish_and_wait(demo_settings, sandbox) and ok
            worker.stop()
            await run
        await _delete_queues(demo_settings)
    return ok


async def _publish_and_wait(settings: Settings, sandbox: Sandbox) -> bool:
    """One more request, sent as `tim-recall publish --wait` sends it: its outcome comes back."""
    task_id = sandbox.create_task()
    click.echo(f"\n$ tim-recall publish --task-id {task_id} --title Recalled --wait")
    async with RecallPublisher(settings.amqp_url.get_secret_value(), settings.queue) as publisher:
        event = await publisher.recall(
            task_id, offline_push_info={"Title": "Recalled"}, timeout=DEMO_TIMEOUT_S
        )
    click.echo(table(RESULTS_HEADERS, results_rows([event])))
    return event.outcome == "recalled"


def _with_key(settings: Settings, secret: str) -> Settings:
    return settings.model_copy(update={"secret_key_value": SecretStr(secret)})


async def _publish_cases(settings: Settings, sandbox: Sandbox) -> dict[str, tuple[Case, float]]:
    sent: dict[str, tuple[Case, float]] = {}
    connection, _ = await connect_any(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        for case in CASES:
            item = Outgoing(body=case.body(sandbox), message_id=str(uuid.uuid4()))
            await channel.default_exchange.publish(
                amqp_message(item), routing_key=settings.queue, mandatory=True
            )
            sent[item.message_id] = (case, time.time())
    return sent


async def _delete_queues(settings: Settings) -> None:
    connection, _ = await connect_any(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        for name in (settings.queue, settings.dead_letter_queue, settings.results_stream):
            await channel.queue_delete(name)


def _report(
    sent: dict[str, tuple[Case, float]], settled: dict[str, ResultEvent], elapsed: float
) -> bool:
    rows: list[list[object]] = []
    all_ok = True
    for message_id, (case, published) in sent.items():
        event = settled.get(message_id)
        ok = event is not None and (event.outcome, event.error_code) == (case.outcome, case.code)
        all_ok = all_ok and ok
        rows.append(
            [
                case.label,
                event.outcome if event else "NOT SETTLED",
                event.error_code if event else "-",
                event.source if event else "-",
                event.attempts if event else "-",
                f"{event.settled_at.timestamp() - published:.2f} s" if event else "-",
                "ok" if ok else f"expected {case.outcome} {case.code}",
            ]
        )
    click.echo(
        table(("request", "outcome", "ErrorCode", "source", "attempts", "time", "check"), rows)
    )
    click.echo(
        f"{'all outcomes as expected' if all_ok else 'UNEXPECTED OUTCOMES'} in {elapsed:.1f} s"
    )
    return all_ok
