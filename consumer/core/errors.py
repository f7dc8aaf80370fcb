"""The project's error tree: one base, a configuration branch and a broker-unavailable branch.

The CLI handles the two branches in one place: a configuration error exits 2 with one line, a
broker that cannot be reached exits 1 with one line. Nothing below shows a traceback for them.
"""

from __future__ import annotations


class TimRecallError(Exception):
    """Any failure tim-recall expects and can describe in one line."""


class ConfigurationError(TimRecallError):
    """Our own configuration is wrong (a setting, a queue's arguments, a broker login or a
    certificate): retrying will not help, a person must fix it."""


class BrokerUnavailable(TimRecallError):
    """RabbitMQ cannot be reached or went away; trying again later may work."""
