"""Tables and JSON lines for operators: results events and dead letters."""

from __future__ import annotations

import contextlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import click

from consumer.core.broker import QueueMissing, broker_errors, connect_any
from consumer.core.errors import BrokerUnavailable
from consumer.core.settings import Settings
from consumer.core.stream import Offset, read_results
from consumer.ops.dlq import DeadLetter, for_app, unnamed_app
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


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _cell(value: object) -> str:
    """A table cell: one line, control characters shown as '?'."""
    return "" if value is None else _UNPRINTABLE.sub("?", str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns sized to their contents."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    return "\n".join(_lines(headers, widths, cells, header=True))


def _lines(
    headers: Sequence[str], widths: Sequence[int], cells: list[list[str]], *, header: bool
) -> list[str]:
    lines = []
    if header:
        lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return lines


class StreamedTable:
    """A table printed as rows come: the first `first` rows size the columns, later rows use
    those widths (a longer cell pushes its line). Memory is bounded by `first` rows."""

    def __init__(
        self, headers: Sequence[str], echo: Callable[[str], None], first: int = 500
    ) -> None:
        self._headers = headers
        self._echo = echo
        self._first = first
        self._pending: list[list[str]] = []
        self._widths: list[int] | None = None

    def add(self, row: Sequence[object]) -> None:
        """One row: held until the first `first` are in, printed at once after that."""
        cells = [_cell(c) for c in row]
        if self._widths is None:
            self._pending.append(cells)
            if len(self._pending) >= self._first:
                self._flush()
        else:
            self._echo(_lines(self._headers, self._widths, [cells], header=False)[0])

    def close(self) -> None:
        """Print what is held (the header too, when no row came)."""
        if self._widths is None:
            self._flush()

    def _flush(self) -> None:
        cells, self._pending = self._pending, []
        self._widths = [
            max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(self._headers)
        ]
        for line in _lines(self._headers, self._widths, cells, header=True):
            self._echo(line)


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
            e.sdkappid if e.sdkappid is not None else "-",
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
    "app",
)
DLQ_HEADERS = ("TaskId", "code", "info", "source", "attempts", "when", "app")


def dead_letter_row(d: DeadLetter) -> list[object]:
    """One row of the `dlq list` table."""
    return [
        _short(d.task_id, 80) if d.task_id else "-",
        d.code if d.code is not None else "-",
        _short(d.info),
        _short(d.source, 40),
        d.attempts,
        _when(d.when),
        d.sdkappid if d.sdkappid is not None else "-",
    ]


def dead_letter_rows(letters: Sequence[DeadLetter]) -> list[list[object]]:
    """Rows of the `dlq list` table."""
    return [dead_letter_row(d) for d in letters]


class Repeats:
    """The lineages of the events read lately, to show each chain's event once.

    A chain settles once, with one event; the same event is in the stream twice only when its
    publish was retried after the confirm was lost (the first copy was stored all the same). The
    two are close together, so a bounded window of lineages finds them in constant memory
    (`--follow` runs for days). Events with no lineage (an older version's) are all shown.
    """

    def __init__(self, window: int = 10_000) -> None:
        self._window = window
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.count = 0  # repeats found

    def repeated(self, event: ResultEvent) -> bool:
        """Whether `event`'s chain was already seen within the window (counted if so)."""
        lineage = event.lineage
        if lineage is None:
            return False
        if lineage in self._seen:
            self._seen.move_to_end(lineage)
            self.count += 1
            return True
        self._seen[lineage] = None
        if len(self._seen) > self._window:
            self._seen.popitem(last=False)
        return False


async def print_results(
    settings: Settings,
    since: str,
    follow: bool,
    as_json: bool,
    correlation_id: str | None,
    *,
    app: int | None = None,
) -> None:
    """`tim-recall results`: print events from the results stream (of one app, with `app`)."""
    offset = parse_since(since, datetime.now(UTC))
    unnamed = unnamed_app(settings)
    stream = settings.results_stream
    repeats = Repeats()
    connection, url = await connect_any(settings.amqp_url.get_secret_value())
    try:
        async with broker_errors(url):
            batch: list[ResultEvent] = []
            async for event in read_results(connection, stream, offset, follow=follow):
                if correlation_id is not None and event.correlation_id != correlation_id:
                    continue
                if app is not None and not for_app(event.sdkappid, app, unnamed):
                    continue
                if repeats.repeated(event):
                    continue
                if as_json:
                    click.echo(event.model_dump_json())
                elif follow:
                    click.echo(table(RESULTS_HEADERS, results_rows([event])).splitlines()[-1])
                else:
                    batch.append(event)
    except QueueMissing:
        raise QueueMissing(stream, "results stream") from None
    except TimeoutError as exc:
        raise BrokerUnavailable(str(exc)) from None
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    if not as_json and not follow:
        click.echo(table(RESULTS_HEADERS, results_rows(batch)))
        shown_once = f", {repeats.count} published twice shown once" if repeats.count else ""
        click.echo(f"{len(batch)} event(s) since {since}{shown_once}")


def dumps(letters: Sequence[DeadLetter]) -> str:
    """JSON lines of dead letters."""
    return "\n".join(json.dumps(d.as_dict()) for d in letters)
