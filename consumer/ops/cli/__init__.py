"""The `tim-recall` command line: run, demo, publish, sandbox, schema, results, dlq.

Every expected failure is handled in one place, `Cli.main`: one line `tim-recall: …` on stderr
and an exit code, never a traceback. 2 for configuration (a setting, a refused login or
certificate, a queue's arguments) and bad arguments; 1 for the rest (the broker cannot be
reached, a queue does not exist, the broker refused a message). Only a bug shows a traceback.

The commands live in `runners.py` (run, demo, sandbox), `messages.py` (publish, results, schema)
and `dead_letters.py` (dlq); `console.py` holds what they share (exit codes, the one line).
"""

from __future__ import annotations

import errno
import ssl
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import aiormq
import click

from consumer.core.broker import describe_broker_error
from consumer.core.errors import ConfigurationError, TimRecallError
from consumer.ops.cli.console import (
    EXIT_CONFIGURATION,
    EXIT_FAILURE,
    PROG,
    quiet_libraries,
    say,
    stdout_to_devnull,
)
from consumer.ops.cli.dead_letters import dlq
from consumer.ops.cli.fleet import apps
from consumer.ops.cli.messages import publish, results, schema
from consumer.ops.cli.runners import demo, run, sandbox

TOOLS = ("publish", "results", "dlq", "apps")


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
            say(f"{exc.format_message()} (see '{where} -h')", exc.exit_code)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            say(exc.format_message(), exc.exit_code)
            sys.exit(exc.exit_code)
        except click.Abort:
            say("interrupted", EXIT_FAILURE)
            sys.exit(EXIT_FAILURE)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # the reader went away (`| head`): nothing to say
                stdout_to_devnull()
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
        say(str(error), exit_code(error))
        sys.exit(exit_code(error))


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """tim-recall: recall mistaken Tencent Cloud Chat pushes from a RabbitMQ queue."""
    if ctx.invoked_subcommand in TOOLS:
        quiet_libraries()


# The commands are defined in their own modules, which never import this one: no import cycle.
for _command in (run, demo, publish, sandbox, schema, results, dlq, apps):
    main.add_command(_command)
