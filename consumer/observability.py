"""Logging set-up: structlog, JSON lines (console on a TTY), every event scrubbed of secrets."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from consumer.redact import Redactor


class ScrubSecrets:
    """A structlog processor: no SecretKey, UserSig or `usersig=` value leaves in any event."""

    def __init__(self, redactor: Redactor) -> None:
        self._redact = redactor

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        """Scrub every string value, nested ones included."""
        scrubbed: EventDict = self._scrub(event_dict)
        return scrubbed

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, MutableMapping):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            # A plain list back, whatever the sequence type: namedtuples cannot be rebuilt
            # from a generator, and a log line needs no more than the values.
            return [self._scrub(v) for v in value]
        if isinstance(value, BaseException):
            return self._redact(f"{type(value).__name__}: {value}")
        return value


def shared_processors(redactor: Redactor) -> list[Processor]:
    """The processors every event passes, before rendering (also used by tests)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        ScrubSecrets(redactor),
    ]


def configure_logging(redactor: Redactor, *, log_format: str = "auto", level: str = "info") -> None:
    """Configure structlog once for the process."""
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared_processors(redactor), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library. httpx logs every request URL at INFO, and the
    # URL carries the UserSig: keep it, and everything else but warnings, quiet.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s"
    )
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
