"""Dead-letter tools: list, replay and purge, in bounded memory, each safe while workers run.

`letter.py` describes and matches a dead letter whatever it holds (no broker), `copies.py` builds
what a replay or a kept copy publishes, `routes.py` says where a replay goes (its app's queue),
`walk.py` is the one order-keeping pass over the queue (and says why it is a pass), `tools.py`
the commands' entry points over the broker.
"""

from consumer.ops.dlq.copies import replayed, requeued
from consumer.ops.dlq.letter import (
    DeadLetter,
    describe,
    describe_delivery,
    for_app,
    matcher,
    task_id_of,
)
from consumer.ops.dlq.routes import Route, replay_route, unnamed_app
from consumer.ops.dlq.tools import (
    Summary,
    count_dead_letters,
    each_dead_letter,
    list_dead_letters,
    move_dead_letters,
)
from consumer.ops.dlq.walk import PREFETCH, DlqError

__all__ = [
    "PREFETCH",
    "DeadLetter",
    "DlqError",
    "Route",
    "Summary",
    "count_dead_letters",
    "describe",
    "describe_delivery",
    "each_dead_letter",
    "for_app",
    "list_dead_letters",
    "matcher",
    "move_dead_letters",
    "replay_route",
    "replayed",
    "requeued",
    "task_id_of",
    "unnamed_app",
]
