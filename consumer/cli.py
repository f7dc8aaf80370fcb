"""The `tim-recall` command line: run, demo, publish, sandbox, schema, results, dlq."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import NoReturn, TextIO

import aiormq
import click

from consumer import publish as publishing
from consumer.app import run_worker
from consumer.demo import run_demo
from consumer.dlq import DlqError, count_dead_letters, list_dead_letters, matcher, move_dead_letters
from consumer.observability import configure_logging
from consumer.redact import Redactor
from consumer.reports import DLQ_HEADERS, dead_letter_rows, dumps, print_results, table
from consumer.sandbox import SandboxConfig, run_sandbox
from consumer.settings import Settings, SettingsError, load_settings
from consumer.topology import TopologyError
from schemas.events import result_event_json_schema
from schemas.recall import InvalidRequest, OfflinePushInfo, RecallRequest, request_json_schema

EXIT_USAGE = 2


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit."""
    click.echo(f"tim-recall: {message}", err=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    """The settings, or exit 2 with one line naming the bad variable."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


def logging_for(settings: Settings) -> None:
    """Structured logs, scrubbed of this process's secrets."""
    redactor = Redactor()
    with contextlib.suppress(SettingsError):
        redactor = redactor.with_secret(settings.secret_key())
    redactor = redactor.with_secret(settings.amqp_url.get_secret_value())
    configure_logging(redactor, log_format=settings.log_format, level=settings.log_level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """tim-recall: recall mistaken Tencent Cloud Chat pushes from a RabbitMQ queue."""


@main.command()
def run() -> None:
    """Run the worker until SIGTERM or SIGINT."""

    settings = settings_or_exit()
    try:
        settings.require_sdkappid()
        settings.secret_key()
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)
    logging_for(settings)
    try:
        asyncio.run(run_worker(settings))
    except TopologyError as exc:
        fail(str(exc), EXIT_USAGE)
    except aiormq.exceptions.ProbableAuthenticationError:
        fail("RabbitMQ refused the user or password in RECALL_AMQP_URL", EXIT_USAGE)
    except (ConnectionError, OSError) as exc:
        fail(f"cannot reach RabbitMQ at RECALL_AMQP_URL: {type(exc).__name__}: {exc}")


@main.command()
def demo() -> None:
    """Start a sandbox, run the worker against it, and show every outcome (under 30 s)."""

    settings = settings_or_exit()
    logging_for(settings)
    try:
        ok = asyncio.run(run_demo(settings))
    except (ConnectionError, OSError) as exc:
        fail(f"cannot reach RabbitMQ at RECALL_AMQP_URL: {type(exc).__name__}: {exc}")
    sys.exit(0 if ok else 1)


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
def publish(
    task_id: str | None,
    title: str | None,
    desc: str | None,
    correlation_id: str | None,
    file_: TextIO | None,
) -> None:
    """Publish recall requests with publisher confirms; exit 1 if the broker did not take one."""

    settings = settings_or_exit()
    if (task_id is None) == (file_ is None):
        fail("give --task-id or --file (one of them)", EXIT_USAGE)
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
        fail(f"not published: {getattr(exc, 'info', exc)}", EXIT_USAGE)
    items = [publishing.outgoing(r, correlation_id) for r in requests]
    try:
        count = asyncio.run(
            publishing.publish(settings.amqp_url.get_secret_value(), settings.queue, items)
        )
    except publishing.PublishError as exc:
        fail(str(exc))
    except (ConnectionError, OSError) as exc:
        fail(f"cannot reach RabbitMQ at RECALL_AMQP_URL: {type(exc).__name__}")
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
def schema(event: bool) -> None:
    """Print the JSON Schema of a RecallRequest (or of a results event)."""
    doc = result_event_json_schema() if event else request_json_schema()
    click.echo(json.dumps(doc, indent=2))


@main.command()
@click.option(
    "--since", default="1h", show_default=True, help="How far back: 30m, 1h, 2d, 'first'."
)
@click.option("--follow", is_flag=True, help="Keep printing new events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--correlation-id", help="Only events with this correlation_id.")
def results(since: str, follow: bool, as_json: bool, correlation_id: str | None) -> None:
    """Read the results stream: one event per settled request."""

    settings = settings_or_exit()
    try:
        asyncio.run(print_results(settings, since, follow, as_json, correlation_id))
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        pass


@main.group()
def dlq() -> None:
    """Look at, replay or purge dead letters."""


@dlq.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(limit: int, as_json: bool) -> None:
    """Show dead letters, leaving every one in place."""

    settings = settings_or_exit()
    letters = asyncio.run(
        list_dead_letters(settings.amqp_url.get_secret_value(), settings.dead_letter_queue, limit)
    )
    if as_json:
        if letters:
            click.echo(dumps(letters))
        return
    click.echo(table(DLQ_HEADERS, dead_letter_rows(letters)))
    click.echo(f"{len(letters)} dead letter(s) shown from {settings.dead_letter_queue}")


def _move(
    code: int | None, task_id: str | None, limit: int | None, dry_run: bool, replay: bool
) -> None:
    settings = settings_or_exit()
    url = settings.amqp_url.get_secret_value()
    total = asyncio.run(count_dead_letters(url, settings.dead_letter_queue))
    target = settings.queue if replay else None
    verb = "replayed" if replay else "purged"
    if dry_run:
        verb = f"would be {verb}"
    with click.progressbar(length=total, label=verb.capitalize(), file=sys.stderr) as bar:
        try:
            summary = asyncio.run(
                move_dead_letters(
                    url,
                    settings.dead_letter_queue,
                    target,
                    matcher(code, task_id),
                    limit=limit,
                    dry_run=dry_run,
                    progress=bar.update,
                )
            )
        except DlqError as exc:
            fail(str(exc))
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
        fail("purge deletes messages: add --yes to confirm", EXIT_USAGE)
    _move(code, None, None, False, replay=False)
