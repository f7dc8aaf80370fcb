"""Trace spans: a delivery span is the child of the producer's span named by `traceparent`, an API
call span the child of the delivery span; without a configured SDK (or without OpenTelemetry at
all) both are no-ops and nothing of OpenTelemetry is imported with the module."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer.core import tracing

EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global provider is set once a process
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def test_delivery_and_call_spans_link_to_the_producer(spans: InMemorySpanExporter) -> None:
    producer_tracer = trace.get_tracer("a producer")
    with producer_tracer.start_as_current_span("recall send", kind=trace.SpanKind.PRODUCER) as p:
        carrier: dict[str, str] = {}
        inject(carrier)
    producer = p.get_span_context()
    headers = {"traceparent": carrier["traceparent"].encode(), "x-recall-attempts": 0}
    attrs = {"messaging.destination.name": "timpush.recall", "messaging.message.id": "m-1"}
    with tracing.delivery_span(headers, attrs) as delivery:
        with tracing.call_span({"tim.task_id": "t-1"}) as call:
            call.set(**{"tim.error_code": 0})
        delivery.set_attributes({"tim.outcome": "recalled", "tim.trace_hint": None})
    finished = {s.name: s for s in spans.get_finished_spans()}
    process = finished["timpush.recall process"]
    revoke = finished["POST v4/timpush/revoke"]
    assert process.kind is trace.SpanKind.CONSUMER
    assert process.parent is not None
    assert process.parent.span_id == producer.span_id  # child of the producer's span
    assert process.context.trace_id == producer.trace_id
    assert revoke.kind is trace.SpanKind.CLIENT
    assert revoke.parent is not None
    assert revoke.parent.span_id == process.context.span_id  # child of the delivery span
    assert revoke.attributes is not None
    assert process.attributes is not None
    assert revoke.attributes["tim.error_code"] == 0
    assert process.attributes["tim.outcome"] == "recalled"
    assert process.attributes["messaging.system"] == "rabbitmq"
    assert "tim.trace_hint" not in process.attributes


def test_a_delivery_without_trace_context_starts_a_trace(spans: InMemorySpanExporter) -> None:
    with tracing.delivery_span({"traceparent": "not-a-trace"}, {}):
        pass
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert span.name == "recall process"


def test_an_error_in_the_block_is_recorded(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.call_span({}):
        raise RuntimeError("boom")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def test_nothing_is_imported_and_spans_are_no_ops_when_not_configured() -> None:
    out = _run(
        """
        import sys
        import consumer.core.tracing as tracing
        print("opentelemetry" in sys.modules, end=" ")
        with tracing.delivery_span({"traceparent": b"x"}, {"a": 1}) as span:
            span.set(outcome="recalled")
        print(tracing.configure_from_env({}))
        """
    )
    assert out == "False False"


def test_without_the_extra_everything_is_a_no_op() -> None:
    out = _run(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the extra were not installed
        import consumer.core.tracing as tracing
        with tracing.delivery_span({}, {}) as d, tracing.call_span({}) as c:
            c.set(code=0)
        print(tracing.available(), tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "console"}))
        """
    )
    assert out == "False False"
