"""One error tree: every exception tim-recall defines descends from TimRecallError.

The CLI group handles the tree once (a configuration branch exits 2, the rest 1); an exception
outside it would reach the user as a traceback.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import click

import consumer
from consumer.core.errors import BrokerUnavailable, ConfigurationError, TimRecallError
from consumer.core.nodes import NoNodeReachable
from consumer.core.secret_key import UnusableKey
from consumer.core.settings import SettingsError
from consumer.core.topology import TopologyError


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(consumer.__path__, "consumer."):
        if info.name.endswith("__main__"):  # importing it runs the CLI
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_we_define_is_in_the_tree() -> None:
    defined = _defined_exceptions()
    assert len(defined) >= 10
    # click's own exceptions are handled by click's branch of the same handler
    outside = sorted(
        name
        for name, cls in defined.items()
        if not issubclass(cls, TimRecallError | click.ClickException)
    )
    assert outside == []


def test_the_branches() -> None:
    assert issubclass(SettingsError, ConfigurationError)
    assert issubclass(TopologyError, ConfigurationError)
    assert issubclass(UnusableKey, ConfigurationError)
    assert issubclass(NoNodeReachable, BrokerUnavailable)
    assert not issubclass(BrokerUnavailable, ConfigurationError)
