"""The OpenAPI description: valid OpenAPI 3.1, and covering exactly the routes Flask serves."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from chatsvc.engine.followers import ROOM_EVENTS
from chatsvc.web import api, health
from chatsvc.web.event_schemas import PROJECT_EVENTS
from chatsvc.web.openapi import document

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
# Documented, but served outside `declare.route`: the WebSocket and the page.
DOCUMENTED_ELSEWHERE = {("/api/ws", "get"), ("/c/{conversation_id}", "get")}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return document()


def _flask_operations() -> set[tuple[str, str]]:
    import flask

    app = flask.Flask(__name__)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    return {
        (re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }


def _spec_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_spec_is_valid_openapi_3_1_and_plain_json(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)
    assert json.loads(json.dumps(spec)) == spec


def test_every_route_is_documented_and_vice_versa(spec: dict[str, Any]) -> None:
    served = _flask_operations()
    assert served, "no routes registered"
    assert _spec_operations(spec) == served | DOCUMENTED_ELSEWHERE


def test_api_routes_declare_their_security(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            security = op.get("security", [])
            if path.startswith("/api") and (path, method) != ("/api/session", "post"):
                assert {"bearerAuth": []} in security, (path, method)
            else:
                assert security == [], (path, method)


def test_sse_routes_declare_their_events(spec: dict[str, Any]) -> None:
    streams = {
        "/api/messages/{message_id}/stream": {"delta", "reasoning", "tool", "status", "done"},
        "/api/conversations/{conversation_id}/stream": {
            "message",
            "branch",
            "delta",
            "reasoning",
            "tool",
            "status",
            "done",
        },
        "/api/projects/{project_id}/events": {
            "conversation.created",
            "conversation.deleted",
            "stream.started",
            "stream.finished",
        },
    }
    for path, names in streams.items():
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert set(content["text/event-stream"]["x-sse-events"]) == names, path


def test_the_room_events_declared_are_the_ones_the_follower_sends() -> None:
    assert set(PROJECT_EVENTS) == set(ROOM_EVENTS)
