"""What the commands share: the exit codes, the one line on stderr, progress bars, log setup."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import click
import structlog

from consumer.core.redact import Redactor
from consumer.core.settings import Settings, SettingsError
from consumer.ops.observability import configure_logging, json_lines

PROG = "tim-recall"
EXIT_FAILURE = 1
EXIT_CONFIGURATION = 2  # also click's exit code for a usage error
EXIT_DEAD_LETTERED = 3  # publish --wait: a request was dead-lettered
EXIT_NO_OUTCOME = 4  # publish --wait: no outcome in time (the request stays queued)
# Commands that only talk to the broker and print: library logging would only add lines.
QUIET_LIBRARIES = ("aiormq", "aio_pika")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def say(text: str, code: int) -> None:
    """The one line: plain text, or one JSON event once logging writes JSON lines on stderr
    (`run` with RECALL_LOG_FORMAT=json: every line there is a JSON object)."""
    if json_lines():
        structlog.get_logger(PROG).error("command_failed", error=_one_line(text), exit_code=code)
    else:
        click.echo(f"{PROG}: {_one_line(text)}", err=True)


def stdout_to_devnull() -> None:
    """The reader of stdout went away: no "Exception ignored" when Python flushes it at exit."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def logging_for(settings: Settings, secrets: Sequence[str] = ()) -> None:
    """Structured logs, scrubbed of this process's secrets (every app's SecretKey)."""
    redactor = Redactor(tuple(secrets))
    with contextlib.suppress(SettingsError):
        redactor = redactor.with_secret(settings.secret_key())
    redactor = redactor.with_secret(settings.amqp_url.get_secret_value())
    configure_logging(redactor, log_format=settings.log_format, level=settings.log_level)


def quiet_libraries(quiet: bool = True) -> None:
    """Silence (or restore) the broker client libraries' logging."""
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1 if quiet else logging.NOTSET)


class Progress:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None

    def total(self, length: int) -> None:
        """Show the bar, `length` steps long (a terminal and something to do only)."""
        if sys.stderr.isatty() and length > 0:
            self._bar = click.progressbar(length=length, label=self._label, file=sys.stderr)
            self._bar.__enter__()

    def update(self, done: int) -> None:
        """Advance the bar by `done` steps."""
        if self._bar is not None:
            self._bar.update(done)

    def close(self) -> None:
        """Take the bar down."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
