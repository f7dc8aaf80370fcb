"""The `tim-recall` command line: run, demo, publish, sandbox, schema, results, dlq.

Every expected failure is handled in one place, `Cli.main`: one line `tim-recall: …` on stderr
and an exit code, never a traceback. 2 for configuration (a setting, a refused login or
certificate, a queue's arguments) and bad arguments; 1 for the rest (the broker cannot be
reached, a queue does not exist, the broker refused a message). Only a bug shows a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import ssl
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

import aiormq
import click
import structlog

from consumer.core.broker import check, describe_broker_error
from consumer.core.errors import ConfigurationError, TimRecallError
from consumer.core.redact import Redactor
from consumer.core.settings import Settings, SettingsError, load_settings
from consumer.ops import publish as publishing
from consumer.ops.app import run_worker
from consumer.ops.demo import run_demo
from consumer.ops.dlq import DeadLetter, each_dead_letter, matcher, move_dead_letters
from consumer.ops.observability import configure_logging, json_lines
from consumer.ops.reports import (
    DLQ_HEADERS,
    RESULTS_HEADERS,
    StreamedTable,
    dead_letter_row,
    parse_since,
    print_results,
    results_rows,
    table,
)
from consumer.sandbox import SandboxConfig, run_sandbox
from schemas.asyncapi import asyncapi_document
from schemas.events import result_event_json_schema
from schemas.recall import InvalidRequest, OfflinePushInfo, RecallRequest, request_json_schema

PROG = "tim-recall"
EXIT_FAILURE = 1
EXIT_CONFIGURATION = 2  # also click's exit code for a usage error
EXIT_DEAD_LETTERED = 3  # publish --wait: a request was dead-lettered
EXIT_NO_OUTCOME = 4  # publish --wait: no outcome in time (the request stays queued)
# Commands that only talk to the broker and print: library logging would only add lines.
QUIET_LIBRARIES = ("aiormq", "aio_pika")
TOOLS = ("publish", "results", "dlq")


def exit_code(error: TimRecallError) -> int:
    """2 for a configuration error, 1 for anything else we expect."""
    return EXIT_CONFIGURATION if isinstance(error, ConfigurationError) else EXIT_FAILURE


def expected_error(exc: BaseException) -> TimRecallError | None:
    """Our error for an exception the CLI expects (ours, or the broker's), else None (a bug)."""
    if isinstance(exc, TimRecallError):
        return exc
    if isinstance(exc, aiormq.exceptions.AMQPError | ssl.SSLError):
        return describe_broker_error(exc)
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _say(text: str, code: int) -> None:
    """The one line: plain text, or one JSON event once logging writes JSON lines on stderr
    (`run` with RECALL_LOG_FORMAT=json: every line there is a JSON object)."""
    if json_lines():
        structlog.get_logger(PROG).error("command_failed", error=_one_line(text), exit_code=code)
    else:
        click.echo(f"{PROG}: {_one_line(text)}", err=True)


class Cli(click.Group):
    """The top-level group: every failure of every command is reported here, once."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command; turn what it raises into one line and an exit code."""
        prog_name = prog_name or PROG
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else prog_name
            _say(f"{exc.format_message()} (see '{where} -h')", exc.exit_code)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _say(exc.format_message(), exc.exit_code)
            sys.exit(exc.exit_code)
        except click.Abort:
            _say("interrupted", EXIT_FAILURE)
            sys.exit(EXIT_FAILURE)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # the reader went away (`| head`): nothing to say
                _stdout_to_devnull()
                sys.exit(EXIT_FAILURE)
            self._fail_or_raise(exc)
        except Exception as exc:
            self._fail_or_raise(exc)
        sys.exit(code if isinstance(code, int) else 0)

    @staticmethod
    def _fail_or_raise(exc: Exception) -> NoReturn:
        error = expected_error(exc)
        if error is None:
            raise exc
        _say(str(error), exit_code(error))
        sys.exit(exit_code(error))


def _stdout_to_devnull() -> None:
    """The reader of stdout went away: no "Exception ignored" when Python flushes it at exit."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def logging_for(settings: Settings) -> None:
    """Structured logs, scrubbed of this process's secrets."""
    redactor = Redactor()
    with contextlib.suppress(SettingsError):
        redactor = redactor.with_secret(settings.secret_key())
    redactor = redactor.with_secret(settings.amqp_url.get_secret_value())
    configure_logging(redactor, log_format=settings.log_format, level=settings.log_level)


def _quiet_libraries(quiet: bool = True) -> None:
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1 if quiet else logging.NOTSET)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """tim-recall: recall mistaken Tencent Cloud Chat pushes from a RabbitMQ queue."""
    if ctx.invoked_subcommand in TOOLS:
        _quiet_libraries()


@main.command()
def run() -> None:
    """Run the worker until SIGTERM or SIGINT."""

    settings = load_settings()
    settings.require_sdkappid()
    settings.secret_key()
    logging_for(settings)
    asyncio.run(run_worker(settings))


@main.command()
def demo() -> None:
    """Start a sandbox, run the worker against it, and show every outcome (under 30 s)."""

    settings = load_settings()
    _quiet_libraries()
    asyncio.run(check(settings.amqp_url.get_secret_value()))  # one line, not a wait, if down
    _quiet_libraries(False)
    logging_for(settings)
    ok = asyncio.run(run_demo(settings))
    sys.exit(0 if ok else EXIT_FAILURE)


class BadInput(click.ClickException):
    """The input given is not something to publish (exit 2, like a usage error)."""

    exit_code = EXIT_CONFIGURATION


@main.command()
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
def publish(
    *,
    task_id: str | None,
    title: str | None,
    desc: str | None,
    correlation_id: str | None,
    file_: TextIO | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Publish recall requests with publisher confirms; exit 1 if the broker did not take one."""

    if (task_id is None) == (file_ is None):
        raise click.UsageError("give --task-id or --file (one of them)")
    if as_json and not wait:
        raise click.UsageError("--json goes with --wait")
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
        sys.exit(_publish_and_wait(settings, requests, correlation_id, timeout, as_json))
    items = [publishing.outgoing(r, correlation_id) for r in requests]
    count = asyncio.run(
        publishing.publish(settings.amqp_url.get_secret_value(), settings.queue, items)
    )
    for item in items:
        click.echo(f"published message_id={item.message_id} {item.body.decode()}")
    click.echo(f"{count} request(s) published to {settings.queue}, confirmed by the broker")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--min-interval", default=1.0, show_default=True, help="The API's frequency limit, s."
)
def sandbox(host: str, port: int, min_interval: float) -> None:
    """Serve a local sandbox of the revoke API (no credentials needed)."""

    run_sandbox(SandboxConfig(min_interval=min_interval), host, port)


@main.command()
@click.option("--event", is_flag=True, help="The results event's schema instead of the request's.")
@click.option("--asyncapi", is_flag=True, help="The AsyncAPI 3.0 document of every queue.")
def schema(event: bool, asyncapi: bool) -> None:
    """Print the JSON Schema of a RecallRequest (or of a results event), or the AsyncAPI 3.0
    contract of the recall queue, the results stream, the reply and the dead-letter queue."""
    if event and asyncapi:
        raise click.UsageError("--event or --asyncapi, not both")
    if asyncapi:
        settings = load_settings()
        doc = asyncapi_document(settings.queue, settings.dead_letter_queue, settings.results_stream)
    else:
        doc = result_event_json_schema() if event else request_json_schema()
    click.echo(json.dumps(doc, indent=2))


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: str) -> float:
    """'60s', '2m', '1h', '500ms' or plain seconds, more than zero."""
    match = _DURATION.match(value.strip())
    seconds = float(match[1]) * _SECONDS[match[2] or "s"] if match else 0.0
    if seconds <= 0:
        raise click.BadParameter(f"{value!r} is not a duration: use a number and s, m or h (60s)")
    return seconds


def _publish_and_wait(
    settings: Settings,
    requests: Sequence[RecallRequest],
    correlation_id: str | None,
    timeout: float,
    as_json: bool,
) -> int:
    """Publish, wait, print one results row (or JSON line) per request; the exit code: 4 if one
    had no outcome in time, else 3 if one was dead-lettered, else 0."""
    bar = _Progress("Waiting for outcomes")
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
            _say(one.problem, EXIT_NO_OUTCOME)
        elif one.event is not None and one.event.outcome == "dead_lettered":
            _say(
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


@main.command()
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
def results(since: str, follow: bool, as_json: bool, correlation_id: str | None) -> None:
    """Read the results stream: one event per settled request."""

    settings = load_settings()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(print_results(settings, since, follow, as_json, correlation_id))


@main.group()
def dlq() -> None:
    """Look at, replay or purge dead letters."""


@dlq.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(limit: int, as_json: bool) -> None:
    """Show the first dead letters; every one stays, in order (the queue is walked once)."""

    settings = load_settings()
    rows = StreamedTable(DLQ_HEADERS, click.echo, first=min(limit, 500))
    reader_gone = False

    def emit(letter: DeadLetter) -> None:
        # `| head` goes away early: the pass still finishes, so the queue keeps its order.
        nonlocal reader_gone
        if reader_gone:
            return
        try:
            if as_json:
                click.echo(json.dumps(letter.as_dict()))
            else:
                rows.add(dead_letter_row(letter))
        except BrokenPipeError:
            reader_gone = True
            _stdout_to_devnull()

    bar = _Progress("Keeping the order")
    try:
        shown = asyncio.run(
            each_dead_letter(
                settings.amqp_url.get_secret_value(),
                settings.dead_letter_queue,
                limit,
                emit,
                progress=bar.update,
                on_total=bar.total,
            )
        )
    finally:
        bar.close()
    if reader_gone:
        sys.exit(EXIT_FAILURE)
    if not as_json:
        rows.close()
        click.echo(f"{shown} dead letter(s) shown from {settings.dead_letter_queue}")


class _Progress:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None

    def total(self, length: int) -> None:
        if sys.stderr.isatty() and length > 0:
            self._bar = click.progressbar(length=length, label=self._label, file=sys.stderr)
            self._bar.__enter__()

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _move(
    code: int | None, task_id: str | None, limit: int | None, dry_run: bool, replay: bool
) -> None:
    settings = load_settings()
    target = settings.queue if replay else None
    verb = "replayed" if replay else "purged"
    if dry_run:
        verb = f"would be {verb}"
    bar = _Progress(verb.capitalize())
    try:
        summary = asyncio.run(
            move_dead_letters(
                settings.amqp_url.get_secret_value(),
                settings.dead_letter_queue,
                target,
                matcher(code, task_id),
                limit=limit,
                dry_run=dry_run,
                progress=bar.update,
                on_total=bar.total,
            )
        )
    finally:
        bar.close()
    click.echo(f"{summary.matched} dead letter(s) {verb}; {summary.kept} left in place, in order")


@dlq.command("replay")
@click.option("--code", type=int, help="Only dead letters with this ErrorCode.")
@click.option("--task-id", help="Only dead letters for this TaskId.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
@click.option("--dry-run", is_flag=True, help="Count what would move; move nothing.")
def dlq_replay(code: int | None, task_id: str | None, limit: int | None, dry_run: bool) -> None:
    """Move matching dead letters back to the recall queue (confirmed, then acked)."""
    _move(code, task_id, limit, dry_run, replay=True)


@dlq.command("purge")
@click.option("--code", type=int, required=True, help="Remove dead letters with this ErrorCode.")
@click.option("--yes", is_flag=True, help="Confirm: the matching dead letters are deleted.")
def dlq_purge(code: int, yes: bool) -> None:
    """Delete the dead letters with one ErrorCode."""
    if not yes:
        raise click.UsageError("purge deletes messages: add --yes to confirm")
    _move(code, None, None, False, replay=False)
