"""The OpenAPI description: valid OpenAPI 3.1, and in step with the Flask routes (no database)."""

from __future__ import annotations

import json
import re
from typing import Any

import flask
import pytest

from chatsvc.web import api, health
from chatsvc.web.openapi import SPEC

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
SSE_PATHS = {
    "/api/messages/{message_id}/stream",
    "/api/conversations/{conversation_id}/stream",
    "/api/projects/{project_id}/events",
}
# Documented here, but served by modules other than api/health (ws, web).
DOCUMENTED_ELSEWHERE = {
    ("/api/ws", "get"),
    ("/c/{conversation_id}", "get"),
}
COMPONENT_SCHEMAS = {
    "Message",
    "Conversation",
    "Project",
    "User",
    "Usage",
    "ConversationStatus",
    "ActiveStream",
    "Error",
}


def _openapi_path(rule: str) -> str:
    """`/api/messages/<uuid:message_id>` → `/api/messages/{message_id}`."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def _flask_operations() -> dict[tuple[str, str], bool]:
    """(path, method) of every rule on the two blueprints, with whether it is a UUID route."""
    app = flask.Flask(__name__)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    found: dict[tuple[str, str], bool] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods or ():
            if method in {"HEAD", "OPTIONS"}:
                continue
            found[(_openapi_path(rule.rule), method.lower())] = "<uuid:" in rule.rule
    return found


def _spec_operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): op
        for path, item in SPEC["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_spec_is_valid_openapi_3_1() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    assert SPEC["openapi"].startswith("3.1")
    validator.validate(SPEC)


def test_spec_is_plain_json() -> None:
    assert json.loads(json.dumps(SPEC)) == SPEC


def test_every_flask_route_is_documented_with_its_methods() -> None:
    flask_ops = _flask_operations()
    assert flask_ops, "no routes registered"
    spec_ops = _spec_operations()
    missing = sorted(key for key in flask_ops if key not in spec_ops)
    assert not missing, f"routes missing from the OpenAPI description: {missing}"


def test_every_documented_operation_is_served_or_known_to_be_elsewhere() -> None:
    flask_ops = _flask_operations()
    extra = sorted(
        key
        for key in _spec_operations()
        if key not in flask_ops and key not in DOCUMENTED_ELSEWHERE
    )
    assert not extra, f"documented but not routed: {extra}"


def test_path_parameters_match_the_template() -> None:
    uuid_routes = {path for (path, _), is_uuid in _flask_operations().items() if is_uuid}
    for (path, method), op in _spec_operations().items():
        declared = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "path"}
        assert set(declared) == set(re.findall(r"{([^}]+)}", path)), (path, method)
        for name, param in declared.items():
            assert param["required"] is True
            if path in uuid_routes and name.endswith("_id"):
                assert param["schema"] == {"type": "string", "format": "uuid"}, (path, name)


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for op in _spec_operations().values()]
    assert len(ids) == len(set(ids))


def test_every_reference_resolves() -> None:
    for pointer in set(_refs(SPEC)):
        assert pointer.startswith("#/")
        node: Any = SPEC
        for part in pointer[2:].split("/"):
            assert part in node, pointer
            node = node[part]


def test_required_components_exist() -> None:
    assert set(SPEC["components"]["schemas"]) >= COMPONENT_SCHEMAS
    error = SPEC["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert set(error["properties"]["error"]["required"]) == {"code", "message"}


def test_api_routes_require_bearer_or_cookie_except_session_creation() -> None:
    schemes = SPEC["components"]["securitySchemes"]
    assert (schemes["bearerAuth"]["type"], schemes["bearerAuth"]["scheme"]) == ("http", "bearer")
    assert schemes["cookieAuth"]["in"] == "cookie"
    assert schemes["cookieAuth"]["name"] == "chatsvc_session"
    for (path, method), op in _spec_operations().items():
        security = op.get("security", [])
        if path.startswith("/api") and (path, method) != ("/api/session", "post"):
            assert {"bearerAuth": []} in security, (path, method)
            assert {"cookieAuth": []} in security, (path, method)
            assert "401" in op["responses"], (path, method)
        else:
            assert security == [], (path, method)


def test_request_bodies_are_closed_json_objects() -> None:
    for (path, method), op in _spec_operations().items():
        body = op.get("requestBody")
        if body is None:
            continue
        schema = body["content"]["application/json"]["schema"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False, path
        assert {"400", "413", "415", "422"} <= set(op["responses"]), (path, method)


def test_limits_match_the_implementation() -> None:
    def body(path: str) -> dict[str, Any]:
        op = SPEC["paths"][path]["post"]
        schema: dict[str, Any] = op["requestBody"]["content"]["application/json"]["schema"]
        return schema

    send = body("/api/conversations/{conversation_id}/messages")
    assert send["required"] == ["content"]
    assert send["properties"]["content"]["minLength"] == 1
    assert send["properties"]["content"]["maxLength"] == 32_000
    assert body("/api/projects")["properties"]["name"]["maxLength"] == 200
    assert body("/api/projects/{project_id}/members")["properties"]["user"]["maxLength"] == 64
    title = body("/api/conversations")["properties"]["title"]
    assert title["maxLength"] == 200 and "null" in title["type"]


def test_status_codes_of_key_operations() -> None:
    def codes(path: str, method: str) -> set[str]:
        return set(SPEC["paths"][path][method]["responses"])

    assert {"200", "202", "409", "429"} <= codes(
        "/api/conversations/{conversation_id}/messages", "post"
    )
    assert "201" in codes("/api/conversations", "post")
    assert "201" in codes("/api/session", "post")
    assert "204" in codes("/api/conversations/{conversation_id}", "delete")
    assert "202" in codes("/api/messages/{message_id}/cancel", "post")
    assert "202" in codes("/api/conversations/{conversation_id}/cancel", "post")
    assert {"200", "204", "400"} <= codes("/api/messages/{message_id}/stream", "get")


def test_sse_endpoints_describe_event_streams() -> None:
    for path in SSE_PATHS:
        op = SPEC["paths"][path]["get"]
        content = op["responses"]["200"]["content"]
        assert set(content) == {"text/event-stream"}, path
        assert op["description"], path
    message_events = SPEC["paths"]["/api/messages/{message_id}/stream"]["get"]["responses"]["200"][
        "content"
    ]["text/event-stream"]["x-sse-events"]
    assert set(message_events) == {"delta", "status", "done"}
    room = SPEC["paths"]["/api/projects/{project_id}/events"]["get"]
    room_events = room["responses"]["200"]["content"]["text/event-stream"]["x-sse-events"]
    assert set(room_events) == {
        "conversation.created",
        "conversation.deleted",
        "stream.started",
        "stream.finished",
    }
