"""The commands about the recall queue's messages: publish, results (their outcomes), schema."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

import click
from click.core import ParameterSource

from consumer.core.settings import Settings, load_settings
from consumer.ops import publish as publishing
from consumer.ops.cli.console import (
    EXIT_CONFIGURATION,
    EXIT_DEAD_LETTERED,
    EXIT_NO_OUTCOME,
    Progress,
    say,
)
from consumer.ops.reports import RESULTS_HEADERS, parse_since, print_results, results_rows, table
from consumer.producer import DEFAULT_EXCHANGE
from schemas.asyncapi import asyncapi_document
from schemas.events import result_event_json_schema
from schemas.recall import InvalidRequest, OfflinePushInfo, RecallRequest, request_json_schema


class BadInput(click.ClickException):
    """The input given is not something to publish (exit 2, like a usage error)."""

    exit_code = EXIT_CONFIGURATION


@click.command()
@click.option("--task-id", help="The TaskId to recall.")
@click.option("--title", help="OfflinePushInfo.Title: the overwrite's title.")
@click.option("--desc", help="OfflinePushInfo.Desc: the overwrite's text.")
@click.option("--correlation-id", help="Set as the AMQP correlation_id (and in the results event).")
@click.option(
    "--file",
    "file_",
    type=click.File("r"),
    help="A JSON-lines file of RecallRequests ('-' for stdin).",
)
@click.option("--wait", is_flag=True, help="Wait for each outcome; print it as a results row.")
@click.option(
    "--timeout",
    default="60s",
    show_default=True,
    callback=lambda _c, _p, v: _duration(v),
    help="With --wait: how long to wait for the outcomes, e.g. 60s, 2m.",
)
@click.option("--json", "as_json", is_flag=True, help="With --wait: one JSON event per line.")
@click.option(
    "--app",
    type=click.IntRange(min=1),
    help="The SDKAppID: publish to --exchange, routed by it; exit 1 if no queue serves it.",
)
@click.option(
    "--exchange",
    envvar="RECALL_EXCHANGE",
    default=DEFAULT_EXCHANGE,
    show_default=True,
    show_envvar=True,
    help="With --app: the direct exchange the workers bind their apps' queues to.",
)
@click.pass_context
def publish(
    ctx: click.Context,
    *,
    task_id: str | None,
    title: str | None,
    desc: str | None,
    correlation_id: str | None,
    file_: TextIO | None,
    wait: bool,
    timeout: float,
    as_json: bool,
    app: int | None,
    exchange: str,
) -> None:
    """Publish recall requests with publisher confirms; exit 1 if the broker did not take one."""

    if (task_id is None) == (file_ is None):
        raise click.UsageError("give --task-id or --file (one of them)")
    if as_json and not wait:
        raise click.UsageError("--json goes with --wait")
    # RECALL_EXCHANGE may be set for every command; only a typed --exchange needs an --app.
    if app is None and ctx.get_parameter_source("exchange") is ParameterSource.COMMANDLINE:
        raise click.UsageError("--exchange goes with --app")
    settings = load_settings()
    try:
        if file_ is not None:
            requests = publishing.read_jsonl(file_)
        else:
            info = OfflinePushInfo(Title=title, Desc=desc) if title or desc else None
            requests = [
                RecallRequest.model_validate({"TaskId": task_id}).model_copy(
                    update={"offline_push_info": info}
                )
            ]
    except (InvalidRequest, ValueError) as exc:
        raise BadInput(f"not published: {getattr(exc, 'info', exc)}") from None
    if wait:
        code = _publish_and_wait(
            settings, requests, correlation_id, timeout, as_json, app=app, exchange=exchange
        )
        sys.exit(code)
    if app is not None:
        _publish_to_app(settings, requests, correlation_id, app, exchange)
        return
    items = [publishing.outgoing(r, correlation_id) for r in requests]
    count = asyncio.run(
        publishing.publish(settings.amqp_url.get_secret_value(), settings.queue, items)
    )
    for item in items:
        click.echo(f"published message_id={item.message_id} {item.body.decode()}")
    click.echo(f"{count} request(s) published to {settings.queue}, confirmed by the broker")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: str) -> float:
    """'60s', '2m', '1h', '500ms' or plain seconds, more than zero."""
    match = _DURATION.match(value.strip())
    seconds = float(match[1]) * _SECONDS[match[2] or "s"] if match else 0.0
    if seconds <= 0:
        raise click.BadParameter(f"{value!r} is not a duration: use a number and s, m or h (60s)")
    return seconds


def _publish_to_app(
    settings: Settings,
    requests: Sequence[RecallRequest],
    correlation_id: str | None,
    app: int,
    exchange: str,
) -> None:
    """Publish for one app through the exchange, and say what was published."""
    receipts = asyncio.run(
        publishing.publish_to_app(
            settings.amqp_url.get_secret_value(),
            requests,
            app=app,
            exchange=exchange,
            correlation_id=correlation_id,
        )
    )
    for request, receipt in zip(requests, receipts, strict=True):
        click.echo(f"published message_id={receipt.message_id} {request.api_bytes().decode()}")
    click.echo(
        f"{len(receipts)} request(s) published for app {app} to exchange {exchange!r}, "
        "confirmed by the broker"
    )


def _publish_and_wait(
    settings: Settings,
    requests: Sequence[RecallRequest],
    correlation_id: str | None,
    timeout: float,
    as_json: bool,
    *,
    app: int | None,
    exchange: str,
) -> int:
    """Publish, wait, print one results row (or JSON line) per request; the exit code: 4 if one
    had no outcome in time, else 3 if one was dead-lettered, else 0."""
    bar = Progress("Waiting for outcomes")
    if len(requests) > 1:
        bar.total(len(requests))
    try:
        waited = asyncio.run(
            publishing.publish_and_wait(
                settings.amqp_url.get_secret_value(),
                settings.queue,
                requests,
                correlation_id=correlation_id,
                timeout=timeout,
                on_done=lambda _: bar.update(1),
                app=app,
                exchange=exchange,
            )
        )
    finally:
        bar.close()
    rows: list[list[object]] = []
    for one in waited:
        receipt, event = one.receipt, one.event
        if event is not None:
            rows += results_rows([event])
            if as_json:
                click.echo(event.model_dump_json())
            continue
        rows.append(
            [
                "-",
                receipt.task_id,
                "no outcome",
                "-",
                "-",
                "-",
                receipt.correlation_id,
                "still queued",
                app if app is not None else "-",
            ]
        )
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "task_id": receipt.task_id,
                        "outcome": None,
                        "message_id": receipt.message_id,
                        "correlation_id": receipt.correlation_id,
                        "error_info": one.problem,
                    }
                )
            )
    if not as_json:
        click.echo(table(RESULTS_HEADERS, rows))
    for one in waited:
        if one.problem is not None:
            say(one.problem, EXIT_NO_OUTCOME)
        elif one.event is not None and one.event.outcome == "dead_lettered":
            say(
                f"TaskId {one.event.task_id} dead-lettered: {one.event.error_code} "
                f"{one.event.error_info} (source {one.event.source})",
                EXIT_DEAD_LETTERED,
            )
    if any(one.event is None for one in waited):
        return EXIT_NO_OUTCOME
    if any(one.event.outcome == "dead_lettered" for one in waited if one.event is not None):
        return EXIT_DEAD_LETTERED
    return 0


def _since(_: click.Context, __: click.Parameter, value: str) -> str:
    try:
        parse_since(value, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"--since {value!r}: ")) from None
    return value


@click.command()
@click.option(
    "--since",
    default="1h",
    show_default=True,
    callback=_since,
    help="How far back: 30m, 1h, 2d, 'first'.",
)
@click.option("--follow", is_flag=True, help="Keep printing new events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--correlation-id", help="Only events with this correlation_id.")
@click.option(
    "--app",
    type=click.IntRange(min=1),
    help="Only events for this SDKAppID (older ones name no app: they count as TIM_SDKAPPID's "
    "when RECALL_APPS_FILE is not set).",
)
def results(
    since: str, follow: bool, as_json: bool, correlation_id: str | None, app: int | None
) -> None:
    """Read the results stream: one event per settled request."""

    settings = load_settings()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(print_results(settings, since, follow, as_json, correlation_id, app=app))


@click.command()
@click.option("--event", is_flag=True, help="The results event's schema instead of the request's.")
@click.option("--asyncapi", is_flag=True, help="The AsyncAPI 3.0 document of every queue.")
def schema(event: bool, asyncapi: bool) -> None:
    """Print the JSON Schema of a RecallRequest (or of a results event), or the AsyncAPI 3.0
    contract of the recall queue, the results stream, the reply and the dead-letter queue."""
    if event and asyncapi:
        raise click.UsageError("--event or --asyncapi, not both")
    if asyncapi:
        settings = load_settings()
        doc = asyncapi_document(
            settings.queue, settings.dead_letter_queue, settings.results_stream, settings.exchange
        )
    else:
        doc = result_event_json_schema() if event else request_json_schema()
    click.echo(json.dumps(doc, indent=2))
