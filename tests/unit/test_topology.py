"""consumer/core/topology.py: the argument tables the queues are declared with, exactly."""

from __future__ import annotations

from consumer.core.topology import DLQ_DELIVERY_LIMIT, QueueArguments, Topology

TOPOLOGY = Topology(
    "recall", "recall.dlq", "recall.results", delivery_limit=7, results_max_age="2D"
)


def test_the_recall_queue_is_quorum_single_active_and_dead_letters_at_least_once() -> None:
    assert TOPOLOGY.queue_arguments() == {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-delivery-limit": 7,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "recall.dlq",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_the_dead_letter_queue_and_the_results_stream() -> None:
    assert TOPOLOGY.dead_letter_arguments() == {
        "x-queue-type": "quorum",
        "x-delivery-limit": DLQ_DELIVERY_LIMIT,
    }
    assert TOPOLOGY.results_arguments() == {"x-queue-type": "stream", "x-max-age": "2D"}


def test_unset_arguments_are_left_out_and_false_is_kept() -> None:
    table = QueueArguments(queue_type="quorum", single_active_consumer=False).as_table()
    assert table == {"x-queue-type": "quorum", "x-single-active-consumer": False}
