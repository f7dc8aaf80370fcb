"""The AsyncAPI 3.0 contract of tim-recall, generated from the same pydantic models as the JSON
Schemas: the recall queue (what producers send), the results stream and the reply (the results
event), and the dead-letter queue. Written from the worker's side: it receives requests and sends
events, replies and dead letters.

AMQP 0.9.1 carries a message's basic properties (message_id, reply_to, ...) and its `headers`
table in the content header frame; the message `headers` schemas below describe both, so
runtime expressions such as `$message.header#/reply_to` name an AMQP property and
`$message.header#/headers/traceparent` an entry of the headers table.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from pydantic.json_schema import models_json_schema

from schemas.events import (
    H_ATTEMPTS,
    H_DEAD_LETTER_ID,
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_FIRST_SEEN,
    H_NEXT_CALL_MS,
    H_SDKAPPID,
    H_TRACEPARENT,
    ResultEvent,
)
from schemas.recall import RecallRequest

ASYNCAPI_VERSION = "3.0.0"
RESULT_TYPE = "tim-recall.result"  # the AMQP `type` of a results event (consumer.core.stream)
TRACEPARENT_PATTERN = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_REF = "#/components/schemas/{model}"
_TEXT = {"type": "string", "minLength": 1, "maxLength": 255}


def _schemas() -> dict[str, Any]:
    """Every model's JSON Schema under components/schemas (by class name), refs pointing there."""
    _, defs = models_json_schema(
        [(RecallRequest, "validation"), (ResultEvent, "serialization")], ref_template=_REF
    )
    return dict(defs["$defs"])


def _properties(
    description: str, *, required: list[str], table: dict[str, Any], **more: Any
) -> dict[str, Any]:
    """A message `headers` schema: AMQP basic properties plus the AMQP `headers` table."""
    properties: dict[str, Any] = {
        "message_id": {**_TEXT, "description": "AMQP message_id: unique per request."},
        "correlation_id": {**_TEXT, "description": "AMQP correlation_id, chosen by the producer."},
        "content_type": {"type": "string", "const": "application/json"},
        "delivery_mode": {"type": "integer", "const": 2, "description": "2: persistent."},
        "timestamp": {"type": "integer", "description": "AMQP timestamp, unix seconds."},
        **more,
        "headers": {"type": "object", "description": "The AMQP headers table.", **table},
    }
    return {
        "type": "object",
        "description": description,
        "required": required,
        "properties": properties,
    }


def _request_message() -> dict[str, Any]:
    trace = {
        "type": "string",
        "pattern": TRACEPARENT_PATTERN,
        "description": "W3C trace context; its trace id becomes trace_id in the worker's log "
        "events, the results event and the reply. One that does not parse is ignored.",
    }
    return {
        "name": "RecallRequest",
        "title": "A recall request",
        "summary": "Exactly the body of v4/timpush/revoke.",
        "contentType": "application/json",
        "payload": {"$ref": _REF.format(model=RecallRequest.__name__)},
        "headers": _properties(
            "Publish persistent, with publisher confirms and mandatory routing.",
            required=["message_id", "content_type", "delivery_mode"],
            table={"properties": {H_TRACEPARENT: trace}},
            reply_to={
                **_TEXT,
                "description": "A queue (or amq.rabbitmq.reply-to) to send the "
                "results event to; an invalid name is ignored with a warning.",
            },
        ),
        "correlationId": {"location": "$message.header#/correlation_id"},
        "examples": [
            {
                "name": "with an overwrite",
                "payload": RecallRequest.model_json_schema()["examples"][0],
                "headers": {
                    "message_id": "7f0c1a5e-2b1e-4a8e-9a43-1f5b2d1c9e10",
                    "correlation_id": "moderation-8812",
                    "content_type": "application/json",
                    "delivery_mode": 2,
                    "reply_to": "amq.rabbitmq.reply-to",
                    "headers": {
                        H_TRACEPARENT: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    },
                },
            }
        ],
    }


def _event_message() -> dict[str, Any]:
    return {
        "name": "RecallResultEvent",
        "title": "What became of one request",
        "contentType": "application/json",
        "payload": {"$ref": _REF.format(model=ResultEvent.__name__)},
        "headers": _properties(
            "The request's message_id and correlation_id, copied; `type` tells events from "
            "anything else on the stream.",
            required=["type", "content_type"],
            table={
                "properties": {
                    H_NEXT_CALL_MS: {
                        "type": "integer",
                        "description": "Unix ms: the earliest moment the replica that told the "
                        "event would call for the app again (its pacer's next slot). A replica "
                        "taking the app over reads it; other subscribers may ignore it.",
                    }
                }
            },
            type={"type": "string", "const": RESULT_TYPE},
        ),
        "correlationId": {"location": "$message.header#/correlation_id"},
        "bindings": {"amqp": {"messageType": RESULT_TYPE, "bindingVersion": "0.3.0"}},
    }


def _dead_letter_message() -> dict[str, Any]:
    integer = {"type": "integer"}
    table = {
        "required": [
            H_ERROR_CODE,
            H_ERROR_INFO,
            H_ERROR_SOURCE,
            H_ATTEMPTS,
            H_DEAD_LETTERED_AT,
            H_DEAD_LETTER_ID,
            H_SDKAPPID,
        ],
        "properties": {
            H_ERROR_CODE: {**integer, "description": "The API's ErrorCode; 90001: bad body."},
            H_ERROR_INFO: {"type": "string", "maxLength": 1000},
            H_ERROR_SOURCE: {"type": "string", "enum": ["api", "local"]},
            H_ATTEMPTS: {**integer, "minimum": 0, "description": "API calls made."},
            H_FIRST_SEEN: {**integer, "description": "Unix seconds."},
            H_DEAD_LETTERED_AT: {**integer, "description": "Unix seconds."},
            H_SDKAPPID: {**integer, "description": "The Chat app the request was for."},
            H_DEAD_LETTER_ID: {
                "type": "string",
                "description": "Unique per dead letter: moved back, it is a new request.",
            },
            H_TRACEPARENT: {"type": "string", "description": "Kept from the request."},
        },
    }
    return {
        "name": "DeadLetter",
        "title": "A request that cannot be recalled",
        "summary": "The original body byte for byte (usually a RecallRequest; for 90001 "
        "whatever was sent) and its properties, plus why.",
        "payload": {"description": "The original body, unchanged."},
        "headers": _properties(
            "The request's properties and headers, plus x-recall-*.",
            required=["headers"],
            table=table,
        ),
    }


def _channel(address: str | None, message: str, description: str, **extra: Any) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address,
        "description": description,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
    }
    if address is not None:
        queue = {"name": address, "durable": True, "exclusive": False, "autoDelete": False}
        channel["bindings"] = {"amqp": {"is": "queue", "queue": queue, "bindingVersion": "0.3.0"}}
    return {**channel, **extra}


def _operation(action: str, channel: str, message: str, summary: str, **extra: Any) -> Any:
    return {
        "action": action,
        "summary": summary,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
        **extra,
    }


def _app_channel(exchange: str, queue: str) -> dict[str, Any]:
    """Requests routed by app: the direct exchange, the SDKAppID as routing key."""
    return {
        "address": "{sdkappid}",
        "description": (
            f"A request for one Chat app: published to the direct exchange {exchange!r} "
            "(RECALL_EXCHANGE) with the app's SDKAppID, in decimal, as routing key, mandatory: a "
            "message returned to the producer means no queue serves that app. Each app has its "
            f"own quorum queue ({queue}.<sdkappid>, or the apps file's `queue`; a fleet of one "
            f"keeps {queue}) bound with that key: single active consumer, one app's backlog "
            "never delays another's."
        ),
        "parameters": {"sdkappid": {"description": "The Chat app's SDKAppID, in decimal."}},
        "messages": {"RecallRequest": {"$ref": "#/components/messages/RecallRequest"}},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": exchange,
                    "type": "direct",
                    "durable": True,
                    "autoDelete": False,
                },
                "bindingVersion": "0.3.0",
            }
        },
    }


def asyncapi_document(
    queue: str = "timpush.recall",
    dead_letter_queue: str | None = None,
    results_stream: str | None = None,
    exchange: str = "tim-recall",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for these names (the defaults of RECALL_QUEUE & co.)."""
    dead = dead_letter_queue or f"{queue}.dead"
    results = results_stream or f"{queue}.results"
    try:
        version = metadata.version("tim-recall")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "tim-recall",
            "version": version,
            "description": (
                "Recall mistaken Tencent Cloud Chat push notifications from a RabbitMQ queue. "
                "Publish RecallRequest for an app to the exchange with its SDKAppID as routing "
                "key (or to a fleet of one's recall queue by name); learn each outcome from the "
                "reply (set reply_to) or the results stream, which names the app."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "Any broker of RECALL_AMQP_URL.",
            }
        },
        "channels": {
            "app": _app_channel(exchange, queue),
            "recall": _channel(
                queue,
                "RecallRequest",
                "The recall queue (RECALL_QUEUE): quorum, single active consumer.",
                **{
                    "x-amqp-arguments": {
                        "x-queue-type": "quorum",
                        "x-single-active-consumer": True,
                        "x-dead-letter-routing-key": dead,
                    }
                },
            ),
            "results": _channel(
                results,
                "RecallResultEvent",
                "The results stream (RECALL_RESULTS_STREAM): one event per settled request.",
                **{"x-amqp-arguments": {"x-queue-type": "stream"}},
            ),
            "reply": _channel(
                None,
                "RecallResultEvent",
                "The request's reply_to, through the "
                "default exchange: the same event as on the stream.",
            ),
            "deadLetters": _channel(
                dead, "DeadLetter", "The dead-letter queue (RECALL_DEAD_LETTER_QUEUE)."
            ),
        },
        "operations": {
            "receiveRecallRequest": _operation(
                "receive",
                "recall",
                "RecallRequest",
                "Take a request, call the API, settle it.",
                reply={
                    "channel": {"$ref": "#/channels/reply"},
                    "address": {"location": "$message.header#/reply_to"},
                    "messages": [{"$ref": "#/channels/reply/messages/RecallResultEvent"}],
                },
            ),
            "receiveRecallRequestForApp": _operation(
                "receive",
                "app",
                "RecallRequest",
                "Take a request routed to an app's queue by its SDKAppID; the same as above, at "
                "that app's own 1 call/s.",
            ),
            "sendResultEvent": _operation(
                "send",
                "results",
                "RecallResultEvent",
                "Tell what became of a request (before its ack).",
            ),
            "sendDeadLetter": _operation(
                "send",
                "deadLetters",
                "DeadLetter",
                "Keep a request that cannot be recalled, with why.",
            ),
        },
        "components": {
            "schemas": _schemas(),
            "messages": {
                m["name"]: m for m in (_request_message(), _event_message(), _dead_letter_message())
            },
        },
    }
