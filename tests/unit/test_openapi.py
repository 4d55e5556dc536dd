"""The OpenAPI documents: valid OpenAPI 3.1, and true to the code.

Every route the admin application and the sidecar listener answer is in its document,
and every operation of a document is a route; errors are problem+json throughout.
Whether the answers match the schemas is the fuzzer's part (`test_openapi.py` in
integration, `bench/fuzz.py`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from openapi_spec_validator import validate

from gateway.app import admin_application
from gateway.http import admin, events_api, openapi, runs_api, sidecar
from gateway.store.records import RunStatus
from step_protocol import wire

APIS: tuple[openapi.Api, ...] = ("sidecar", "admin")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _document(api: openapi.Api) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(openapi.document(api))
    return loaded


def _operations(api: openapi.Api) -> dict[tuple[str, str], dict[str, Any]]:
    """(path, METHOD) → operation."""
    paths = _document(api)["paths"]
    return {
        (path, method.upper()): item[method]
        for path, item in paths.items()
        for method in METHODS
        if method in item
    }


def _documented(api: openapi.Api) -> dict[str, frozenset[str]]:
    """Path → methods the document names, with HEAD wherever GET is: the documents say
    once, in their description, that every GET also answers HEAD."""
    found: dict[str, set[str]] = {}
    for path, method in _operations(api):
        found.setdefault(path, set()).update({method, "HEAD"} if method == "GET" else {method})
    return {path: frozenset(methods) for path, methods in found.items()}


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


@pytest.mark.parametrize("api", APIS)
def test_the_document_is_valid_openapi_3_1(api: openapi.Api) -> None:
    document = _document(api)
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"].startswith("3.1.")


def test_every_admin_route_is_documented_and_every_operation_is_a_route() -> None:
    routes: dict[str, set[str]] = {}
    for route in admin_application().router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path is not None, route
        routes.setdefault(path, set()).add(route.method)
    assert {p: frozenset(m) for p, m in routes.items()} == _documented("admin")


def test_every_sidecar_route_is_documented_and_every_operation_is_a_route() -> None:
    assert sidecar.routes() == _documented("sidecar")


@pytest.mark.parametrize("api", APIS)
def test_every_error_is_problem_json_and_every_operation_is_named(api: openapi.Api) -> None:
    document = _document(api)
    ids = [op["operationId"] for op in _operations(api).values()]
    assert len(ids) == len(set(ids))
    for (path, method), op in _operations(api).items():
        assert op["summary"], (path, method)
        for status, response in op["responses"].items():
            content = _resolve(document, response).get("content", {})
            if int(status) >= 400:
                assert list(content) == ["application/problem+json"], (path, method, status)
                schema = content["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}


@pytest.mark.parametrize("api", APIS)
def test_operations_that_need_a_token_say_so_and_can_answer_401(api: openapi.Api) -> None:
    document = _document(api)
    (scheme,) = document["components"]["securitySchemes"].values()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    open_paths = {"/healthz", "/readyz", "/", "/static/{name}", openapi.PATH}
    for (path, method), op in _operations(api).items():
        secured = op.get("security", document["security"]) != []
        assert secured == (path not in open_paths), (path, method)
        assert ("401" in op["responses"]) == secured, (path, method)


def test_the_admin_documents_open_paths_are_the_ones_the_token_check_lets_through() -> None:
    open_ops = {p for (p, _), op in _operations("admin").items() if op.get("security") == []}
    assert admin._OPEN_PATHS == open_ops - {"/static/{name}"}


def test_the_documents_bounds_are_the_wire_modules() -> None:
    """The numbers a schema repeats from `step_protocol.wire` and the code."""
    side = _document("sidecar")["components"]
    schemas = side["schemas"]
    step_id = side["parameters"]["StepId"]["schema"]
    assert step_id["maxLength"] == wire.MAX_STEP_ID
    number, text = schemas["Duration"]["oneOf"]
    assert number["maximum"] == wire.MAX_DURATION and text["maxLength"] == wire.MAX_TEXT
    assert schemas["Timestamp"]["maxLength"] == wire.MAX_TEXT
    match = schemas["Match"]
    assert match["maxProperties"] == wire.MAX_MATCH_KEYS
    assert match["propertyNames"]["maxLength"] == wire.MAX_MATCH_PATH
    assert schemas["WaitRequest"]["properties"]["event"]["maxLength"] == wire.MAX_EVENT_NAME
    for duration in ("1h30m", "250ms", " 7d ", "1.5", ".5s", "30", "1h 30m"):
        assert re.search(text["pattern"], duration), duration
        wire.parse_duration(duration)  # what the pattern allows, the gateway takes
    for duration in ("", "1x", "-1s", "1e3", "h", "1h-30m", "١s"):
        assert not re.search(text["pattern"], duration), duration
        with pytest.raises(ValueError):
            wire.parse_duration(duration)
    admin_schemas = _document("admin")["components"]["schemas"]
    assert admin_schemas["RunStatus"]["enum"] == [s.value for s in RunStatus]
    event = admin_schemas["EventRequest"]["properties"]
    assert event["name"]["maxLength"] == wire.MAX_EVENT_NAME
    assert event["id"]["maxLength"] == events_api.MAX_ID
    (limit,) = (
        p for p in _operations("admin")["/v1/runs", "GET"]["parameters"] if p["name"] == "limit"
    )
    assert limit["schema"]["maximum"] == runs_api.MAX_LIMIT
