"""The AsyncAPI 3.0 contract: valid by a real AsyncAPI 3.0 validator (asyncapi3, the object
model of the whole specification), every reference resolving, every schema a JSON Schema, its
examples and real messages valid against it, and generated from the models the worker uses."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from consumer.ops.cli import main
from schemas.asyncapi import asyncapi_document
from schemas.events import RECALL_ERROR_HEADERS, ResultEvent
from schemas.recall import RecallRequest

with warnings.catch_warnings():  # its models shadow BaseModel.schema: not ours to fix
    warnings.simplefilter("ignore", UserWarning)
    from asyncapi3 import AsyncAPI3  # type: ignore[import-untyped]

DOC_URI = "urn:tim-recall:asyncapi"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    printed: dict[str, Any] = json.loads(json.dumps(asyncapi_document()))  # plain JSON
    return printed


def validator_for(doc: dict[str, Any], pointer: str) -> jsonschema.Draft7Validator:
    """A validator for the schema at `pointer`, its $refs resolved inside the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT7)
    )
    return jsonschema.Draft7Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=registry)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_asyncapi_3(doc: dict[str, Any]) -> None:
    parsed = AsyncAPI3.model_validate(doc)
    assert parsed.asyncapi == "3.0.0"
    assert set(doc["channels"]) == {"app", "recall", "results", "reply", "deadLetters"}


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["operations"]["sendResultEvent"].update(action="publish"),  # AsyncAPI 2
        lambda d: d["channels"]["recall"].update(queue="timpush.recall"),  # not a field
        lambda d: d["info"].pop("version"),
        lambda d: d.update(asyncapi="2.6.0"),
    ],
)
def test_the_validator_refuses_a_broken_document(doc: dict[str, Any], breakage: Any) -> None:
    broken = copy.deepcopy(doc)
    breakage(broken)
    with pytest.raises(ValidationError):
        AsyncAPI3.model_validate(broken)


def test_every_reference_resolves_and_every_schema_is_a_json_schema(doc: dict[str, Any]) -> None:
    found = list(refs(doc))
    assert len(found) > 10
    for ref in found:
        assert ref.startswith("#/"), ref
        resolve(doc, ref)  # raises KeyError when it does not
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft7Validator.check_schema(schema)  # raises naming the keyword
    for message in doc["components"]["messages"].values():
        jsonschema.Draft7Validator.check_schema(message["headers"])


def test_generated_from_the_models_the_worker_uses(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    template = "#/components/schemas/{model}"
    request = RecallRequest.model_json_schema(ref_template=template)
    request.pop("$defs")
    assert schemas["RecallRequest"] == request
    event = ResultEvent.model_json_schema(mode="serialization", ref_template=template)
    assert schemas["ResultEvent"] == event


def test_the_request_example_and_a_real_event_are_valid(doc: dict[str, Any]) -> None:
    request = doc["components"]["messages"]["RecallRequest"]
    (example,) = request["examples"]
    validator_for(doc, "/components/messages/RecallRequest/payload").validate(example["payload"])
    validator_for(doc, "/components/messages/RecallRequest/headers").validate(example["headers"])
    RecallRequest.model_validate(example["payload"])  # the worker takes it too
    misspelt = {"TaskId": "t", "OfflinePushinfo": {}}
    with pytest.raises(jsonschema.ValidationError):
        validator_for(doc, "/components/messages/RecallRequest/payload").validate(misspelt)
    now = datetime.now(UTC)
    event = ResultEvent(
        task_id="t",
        outcome="recalled",
        error_code=0,
        source="api",
        attempts=1,
        first_seen=now,
        settled_at=now,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    payload = json.loads(event.to_json_bytes())
    validator_for(doc, "/components/messages/RecallResultEvent/payload").validate(payload)


def test_properties_headers_reply_and_dead_letters(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    request = messages["RecallRequest"]["headers"]["properties"]
    assert {"message_id", "correlation_id", "reply_to", "timestamp", "content_type"} <= set(request)
    assert "traceparent" in request["headers"]["properties"]
    event = messages["RecallResultEvent"]
    assert event["headers"]["properties"]["type"]["const"] == "tim-recall.result"
    assert event["bindings"]["amqp"]["messageType"] == "tim-recall.result"
    receive = doc["operations"]["receiveRecallRequest"]
    assert receive["reply"]["address"]["location"] == "$message.header#/reply_to"
    assert resolve(doc, receive["reply"]["channel"]["$ref"])["address"] is None
    dead = messages["DeadLetter"]["headers"]["properties"]["headers"]
    assert set(RECALL_ERROR_HEADERS) <= set(dead["required"])
    assert asyncapi_document("q")["channels"]["deadLetters"]["address"] == "q.dead"


def test_tim_recall_schema_asyncapi_prints_it_for_the_configured_queues() -> None:
    result = CliRunner().invoke(main, ["schema", "--asyncapi"], env={"RECALL_QUEUE": "q.recall"})
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    AsyncAPI3.model_validate(printed)
    assert printed["channels"]["recall"]["address"] == "q.recall"
    assert printed["channels"]["deadLetters"]["address"] == "q.recall.dead"
    both = CliRunner().invoke(main, ["schema", "--asyncapi", "--event"])
    assert both.exit_code == 2


def test_requests_are_routed_by_app_through_the_fleets_exchange(doc: dict[str, Any]) -> None:
    app = doc["channels"]["app"]
    assert app["address"] == "{sdkappid}"
    assert "sdkappid" in app["parameters"]
    exchange = app["bindings"]["amqp"]["exchange"]
    assert (exchange["name"], exchange["type"]) == ("tim-recall", "direct")
    assert app["bindings"]["amqp"]["is"] == "routingKey"
    assert doc["operations"]["receiveRecallRequestForApp"]["channel"]["$ref"] == "#/channels/app"
    event = doc["components"]["schemas"]["ResultEvent"]
    assert "sdkappid" in event["properties"]
    dead = doc["components"]["messages"]["DeadLetter"]["headers"]["properties"]["headers"]
    assert "x-recall-sdkappid" in dead["required"]
