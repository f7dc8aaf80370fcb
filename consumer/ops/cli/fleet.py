"""The `apps` command: the fleet's apps, their backlogs, who serves them, which are halted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import click

from consumer.core.settings import load_settings
from consumer.ops.fleet import fleet_status, render
from consumer.ops.reports import parse_since


def _window(value: str) -> timedelta:
    """`--since` as a duration back from now (1h, 2d); not 'first'."""
    now = datetime.now(UTC)
    try:
        since = parse_since(value, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"--since {value!r}: ")) from None
    if not isinstance(since, datetime):
        raise click.BadParameter("use a duration such as 1h or 1d")
    return now - since


@click.command("apps")
@click.option(
    "--since",
    default="1d",
    show_default=True,
    help="How far back to count outcomes and read lane records: 30m, 1h, 2d.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per app.")
def apps(since: str, as_json: bool) -> None:
    """Each app of RECALL_APPS_FILE (or TIM_SDKAPPID): backlog, consumers, the replica that
    serves it, halted or not and why, what it settled."""
    window = _window(since)
    settings = load_settings()
    statuses = asyncio.run(fleet_status(settings, window))
    click.echo(render(statuses, as_json=as_json, window=since))
