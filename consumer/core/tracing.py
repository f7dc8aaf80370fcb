"""Optional OpenTelemetry spans: a consumer span per delivery, a client span per API call.

Both are no-ops unless the `otel` extra (opentelemetry-api and -sdk) is installed and a tracer
provider is configured: by `configure_from_env()` (OTEL_TRACES_EXPORTER=console or otlp, the
latter with opentelemetry-exporter-otlp installed) or by the process itself, e.g. under
`opentelemetry-instrument`. Nothing of OpenTelemetry is imported when this module is; without it,
the spans cost one cached check.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator, Mapping
from typing import Any

AttributeValue = str | bool | int | float
SYSTEM = {"messaging.system": "rabbitmq"}


class Span:
    """What a caller may do with a span: add attributes (the outcome). A no-op when disabled."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def set(self, **attributes: AttributeValue | None) -> None:
        """Add attributes; dotted names as keyword arguments go through `set_attributes`."""
        self.set_attributes(attributes)

    def set_attributes(self, attributes: Mapping[str, AttributeValue | None]) -> None:
        """Add attributes; None values are left out."""
        if self._span is not None:
            self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})


@functools.cache
def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing or blocked
        return False


def available() -> bool:
    """True when opentelemetry-api can be imported (checked once, without importing it)."""
    return _has("opentelemetry.trace")


def _tracer() -> Any:
    """The tracer of the configured provider, or None when tracing is off."""
    if not available():
        return None
    from opentelemetry import trace  # noqa: PLC0415 (only with the extra)

    return _tracer_of(trace.get_tracer_provider())


@functools.lru_cache(maxsize=1)
def _tracer_of(provider: Any) -> Any:
    # Three times a delivery: worked out once per provider (a provider set later is another).
    from opentelemetry import trace  # noqa: PLC0415 (only with the extra)

    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None  # nothing configured: no span objects at all
    return provider.get_tracer("tim-recall")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if isinstance(value, str) else None


@contextlib.contextmanager
def delivery_span(
    message_headers: Mapping[str, Any] | None, attrs: Mapping[str, AttributeValue | None]
) -> Iterator[Span]:
    """A CONSUMER span for one delivery, child of the producer's span named by the message's
    `traceparent` (and `tracestate`) header; current while the block runs."""
    tracer = _tracer()
    if tracer is None:
        yield Span()
        return
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
        TraceContextTextMapPropagator,
    )

    carrier = {
        k: t for k in ("traceparent", "tracestate") if (t := _text((message_headers or {}).get(k)))
    }
    parent = TraceContextTextMapPropagator().extract(carrier)
    destination = attrs.get("messaging.destination.name") or "recall"
    with tracer.start_as_current_span(
        f"{destination} process", context=parent, kind=trace.SpanKind.CONSUMER
    ) as span:
        handle = Span(span)
        handle.set_attributes({**SYSTEM, "messaging.operation.type": "process", **attrs})
        yield handle


def current_span() -> Span:
    """The span current now (a delivery's, to add its outcome to); a no-op when disabled."""
    if _tracer() is None:
        return Span()
    from opentelemetry import trace  # noqa: PLC0415

    return Span(trace.get_current_span())


@contextlib.contextmanager
def call_span(
    attrs: Mapping[str, AttributeValue | None], name: str = "POST v4/timpush/revoke"
) -> Iterator[Span]:
    """A CLIENT span for one API call, child of the current (delivery) span."""
    tracer = _tracer()
    if tracer is None:
        yield Span()
        return
    from opentelemetry import trace  # noqa: PLC0415

    with tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT) as span:
        handle = Span(span)
        handle.set_attributes({"http.request.method": "POST", **attrs})
        yield handle


def configure_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """Set up the SDK from OTEL_TRACES_EXPORTER (console or otlp) when nothing else did; True
    when tracing is on afterwards. Without the SDK, or with OTEL_SDK_DISABLED, it does nothing."""
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if _tracer() is not None:
        return True
    if exporter_name in ("", "none") or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if not _has("opentelemetry.sdk"):
        return False
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:  # not part of the extra: pip install opentelemetry-exporter-otlp-proto-http
            otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        except ImportError:
            return False
        exporter = otlp.OTLPSpanExporter()
    else:
        return False
    provider = TracerProvider()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES apply
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True
