"""The `dlq` commands: list, replay and purge dead letters, each keeping the queue's order."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from consumer.core.settings import load_settings
from consumer.ops.cli.console import EXIT_FAILURE, Progress, stdout_to_devnull
from consumer.ops.dlq import (
    DeadLetter,
    Summary,
    each_dead_letter,
    matcher,
    move_dead_letters,
    replay_route,
    unnamed_app,
)
from consumer.ops.reports import DLQ_HEADERS, StreamedTable, dead_letter_row

APP_HELP = (
    "Only dead letters for this SDKAppID (older ones name no app: they count as TIM_SDKAPPID's "
    "when RECALL_APPS_FILE is not set)."
)


@click.group()
def dlq() -> None:
    """Look at, replay or purge dead letters."""


@dlq.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--app", type=click.IntRange(min=1), help=APP_HELP)
def dlq_list(limit: int, as_json: bool, app: int | None) -> None:
    """Show the first dead letters; every one stays, in order (the queue is walked once)."""

    settings = load_settings()
    match = None if app is None else matcher(None, None, app, unnamed_app=unnamed_app(settings))
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
            stdout_to_devnull()

    bar = Progress("Keeping the order")
    try:
        shown = asyncio.run(
            each_dead_letter(
                settings.amqp_url.get_secret_value(),
                settings.dead_letter_queue,
                limit,
                emit,
                match=match,
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
        of_app = f" for app {app}" if app is not None else ""
        click.echo(f"{shown} dead letter(s){of_app} shown from {settings.dead_letter_queue}")


def _move(
    code: int | None,
    task_id: str | None,
    limit: int | None,
    dry_run: bool,
    *,
    replay: bool,
    app: int | None,
) -> None:
    settings = load_settings()
    # Each letter goes back to its own app's queue (read from RECALL_APPS_FILE before any move).
    target = replay_route(settings) if replay else None
    verb = "replayed" if replay else "purged"
    if dry_run:
        verb = f"would be {verb}"
    bar = Progress(verb.capitalize())
    try:
        summary = asyncio.run(
            move_dead_letters(
                settings.amqp_url.get_secret_value(),
                settings.dead_letter_queue,
                target,
                matcher(code, task_id, app, unnamed_app=unnamed_app(settings)),
                limit=limit,
                dry_run=dry_run,
                progress=bar.update,
                on_total=bar.total,
            )
        )
    finally:
        bar.close()
    click.echo(
        f"{summary.matched} dead letter(s) {verb}; {summary.kept} left in place, in order"
        + _unserved(summary)
    )


def _unserved(summary: Summary) -> str:
    """'; 4 kept: their app is not served: 1400000009 (3), 1400000010 (1)', or ''."""
    if not summary.unserved:
        return ""
    kept = sum(count for _, count in summary.unserved)
    apps = ", ".join(f"{app} ({count})" for app, count in summary.unserved)
    return f"; {kept} kept: their app is not served: {apps}"


@dlq.command("replay")
@click.option("--code", type=int, help="Only dead letters with this ErrorCode.")
@click.option("--task-id", help="Only dead letters for this TaskId.")
@click.option("--app", type=click.IntRange(min=1), help=APP_HELP)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
@click.option("--dry-run", is_flag=True, help="Count what would move; move nothing.")
def dlq_replay(
    code: int | None, task_id: str | None, app: int | None, limit: int | None, dry_run: bool
) -> None:
    """Move matching dead letters back to their app's recall queue (confirmed, then acked); one
    whose app the fleet does not serve stays, and is counted."""
    _move(code, task_id, limit, dry_run, replay=True, app=app)


@dlq.command("purge")
@click.option("--code", type=int, required=True, help="Remove dead letters with this ErrorCode.")
@click.option("--app", type=click.IntRange(min=1), help=APP_HELP)
@click.option("--yes", is_flag=True, help="Confirm: the matching dead letters are deleted.")
def dlq_purge(code: int, app: int | None, yes: bool) -> None:
    """Delete the dead letters with one ErrorCode (of one app, with --app)."""
    if not yes:
        raise click.UsageError("purge deletes messages: add --yes to confirm")
    _move(code, None, None, False, replay=False, app=app)
