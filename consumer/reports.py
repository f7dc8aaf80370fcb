"""Tables and JSON lines for operators: results events and dead letters."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import aio_pika
import click

from consumer.dlq import DeadLetter
from consumer.settings import Settings
from consumer.stream import Offset, read_results
from schemas.events import ResultEvent

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(since: str, now: datetime) -> Offset:
    """'30m', '1h', '2d' → a timestamp offset; 'first' reads the whole stream."""
    if since == "first":
        return "first"
    match = _DURATION.match(since.strip())
    if match is None:
        raise ValueError(f"--since {since!r}: use a number and s, m, h or d (e.g. 1h), or 'first'")
    return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns sized to their contents."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else "-"


def results_rows(events: Sequence[ResultEvent]) -> list[list[object]]:
    """Rows of the results table."""
    return [
        [
            _when(e.settled_at),
            e.task_id or "-",
            e.outcome,
            e.error_code,
            e.source,
            e.attempts,
            e.correlation_id or "-",
            _short(e.error_info, 50),
        ]
        for e in events
    ]


RESULTS_HEADERS = (
    "settled",
    "TaskId",
    "outcome",
    "code",
    "source",
    "attempts",
    "correlation_id",
    "info",
)
DLQ_HEADERS = ("TaskId", "code", "info", "source", "attempts", "when")


def dead_letter_rows(letters: Sequence[DeadLetter]) -> list[list[object]]:
    """Rows of the `dlq list` table."""
    return [
        [
            d.task_id or "-",
            d.code if d.code is not None else "-",
            _short(d.info),
            d.source,
            d.attempts,
            _when(d.when),
        ]
        for d in letters
    ]


async def print_results(
    settings: Settings, since: str, follow: bool, as_json: bool, correlation_id: str | None
) -> None:
    """`tim-recall results`: print events from the results stream."""
    offset = parse_since(since, datetime.now(UTC))
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    try:
        batch: list[ResultEvent] = []
        async for event in read_results(connection, settings.results_stream, offset, follow=follow):
            if correlation_id is not None and event.correlation_id != correlation_id:
                continue
            if as_json:
                click.echo(event.model_dump_json())
            elif follow:
                click.echo(table(RESULTS_HEADERS, results_rows([event])).splitlines()[-1])
            else:
                batch.append(event)
        if not as_json and not follow:
            click.echo(table(RESULTS_HEADERS, results_rows(batch)))
            click.echo(f"{len(batch)} event(s) since {since}")
    finally:
        await connection.close()


def dumps(letters: Sequence[DeadLetter]) -> str:
    """JSON lines of dead letters."""
    return "\n".join(json.dumps(d.as_dict()) for d in letters)
