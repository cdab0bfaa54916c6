"""Real responses of every route, checked against the generated OpenAPI description.

Each request goes through the running app; its status must be documented for
the operation, and its body (JSON, or each SSE event's data, or each WebSocket
frame) must validate against the declared schema, with objects closed so an
undeclared field fails too. The test fails if an operation of the description
was never exercised.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import gevent
import jsonschema
import requests

from tests.support import ApiClient, AppServer, WsClient, make_user, read_sse

JSON = "application/json"


def _closed(node: Any) -> Any:
    """The schema with every object closed to undeclared properties."""
    if isinstance(node, dict):
        node = {key: _closed(value) for key, value in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_closed(value) for value in node]
    return node


class Contract:
    """The description, and which (path, method, status) the test has seen."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.components = _closed(copy.deepcopy(spec["components"]))
        self.seen: set[tuple[str, str, str]] = set()
        self.routes = [
            (re.compile("^" + re.sub(r"{[^}]+}", "[^/]+", path) + "$"), path)
            for path in spec["paths"]
        ]

    def validate(self, instance: Any, schema: dict[str, Any]) -> None:
        """Validate against a schema that may refer to the components."""
        root = {**schema, "components": self.components}
        jsonschema.Draft202012Validator(
            root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(instance)

    def response(self, method: str, url: str, status: int) -> dict[str, Any]:
        """The documented response for this request and status; records it as seen."""
        path = urlparse(url).path
        template = next((t for pattern, t in self.routes if pattern.match(path)), None)
        assert template is not None, f"{path} is not documented"
        operation = self.spec["paths"][template][method.lower()]
        assert str(status) in operation["responses"], (method, template, status)
        self.seen.add((template, method.lower(), str(status)))
        declared: dict[str, Any] = operation["responses"][str(status)]
        if "$ref" in declared:
            declared = self.spec["components"]["responses"][declared["$ref"].split("/")[-1]]
        return declared

    def check(self, response: requests.Response) -> requests.Response:
        """Check a complete response (JSON, text or empty) against its description."""
        request = response.request
        declared = self.response(str(request.method), str(request.url), response.status_code)
        content = declared.get("content")
        if content is None:
            assert response.content == b"", response.content
            return response
        media = response.headers["Content-Type"].split(";")[0]
        assert media in content, (media, list(content))
        if media == JSON:
            self.validate(response.json(), content[media]["schema"])
        return response

    def stream(
        self,
        client: ApiClient,
        path: str,
        until: Callable[[list[str]], bool] | None = None,
        timeout: float = 20,
    ) -> list[str]:
        """Read an SSE stream (to its end, or until `until(names)`); check every event's data."""
        response = client.get(path, stream=True, timeout=20)
        declared = self.response("GET", response.url, response.status_code)
        events = declared["content"]["text/event-stream"]["x-sse-events"]
        names: list[str] = []
        try:
            with gevent.Timeout(timeout, AssertionError(f"{path}: not all events")):
                for event in read_sse(response):
                    if not event.event:
                        continue
                    assert event.event in events, event.event
                    self.validate(event.json(), events[event.event])
                    names.append(event.event)
                    if until is not None and until(names):
                        break
        finally:
            response.close()
        return names

    def frames(self, frames: list[dict[str, Any]]) -> None:
        """Check WebSocket server frames against the /api/ws description."""
        server = self.spec["paths"]["/api/ws"]["get"]["x-websocket-frames"]["server"]
        for frame in frames:
            schema = server[frame["type"]]
            if "allOf" in schema:  # `type` (and `position`) plus an SSE event's data
                event, kind = schema["allOf"]
                for name in ("type", "position"):
                    if name in frame:
                        self.validate(frame[name], kind["properties"][name])
                data = {k: v for k, v in frame.items() if k not in ("type", "position")}
                self.validate(data, event)
            else:
                self.validate(frame, schema)
        self.seen.add(("/api/ws", "get", "101"))


def test_every_route_answers_as_described(llm_app: AppServer) -> None:
    base = llm_app.base
    spec = ApiClient(base, None).get("/openapi.json").json()
    c = Contract(spec)
    alice = ApiClient(base, make_user(llm_app.db_url, "alice", admin=True))
    bob = ApiClient(base, make_user(llm_app.db_url, "bob"))
    anon = ApiClient(base, None)
    json_header = {"Content-Type": JSON}

    # service
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        c.check(anon.get(path))

    # session
    c.check(anon.post("/api/session", {"token": "csk_wrong"}))
    c.check(anon.post("/api/session", data="{", headers=json_header))
    c.check(anon.post("/api/session", data="token=x"))
    c.check(anon.post("/api/session", {"token": ""}))
    c.check(anon.post("/api/session", data="x" * 300_000, headers=json_header))
    browser = ApiClient(base, None)
    c.check(browser.post("/api/session", {"token": alice.token}))
    c.check(browser.delete("/api/session"))
    c.check(anon.get("/api/me"))
    c.check(alice.get("/api/me"))

    # projects
    project = c.check(alice.post("/api/projects", {"name": "Team"})).json()
    room = f"/api/projects/{project['id']}"
    c.check(alice.get("/api/projects"))
    c.check(alice.get(room))
    c.check(bob.get(room))
    c.check(alice.post(f"{room}/members", {"user": "bob"}))
    c.check(alice.post(f"{room}/members", {"user": "bob"}))
    c.check(alice.post(f"{room}/members", {"user": "nobody"}))
    c.check(alice.delete(f"{room}/members/nobody"))
    c.check(bob.delete(f"{room}/members/bob"))
    c.check(bob.get(f"{room}/events"))
    room_names = ["conversation.created", "stream.started", "stream.finished"]
    room_names.append("conversation.deleted")
    listening = gevent.spawn(
        c.stream, alice, f"{room}/events", lambda names: set(room_names) <= set(names), 90
    )
    gevent.sleep(0.3)

    # conversations, in the project so that the room hears of them
    shared = c.check(alice.post("/api/conversations", {"project_id": project["id"]})).json()
    conv = f"/api/conversations/{shared['id']}"
    c.check(bob.post("/api/conversations", {"project_id": project["id"]}))
    c.check(alice.get("/api/conversations", params={"limit": 1}))
    c.check(alice.get("/api/conversations", params={"limit": "x"}))
    c.check(alice.get(conv))
    c.check(bob.get(conv))
    send = f"{conv}/messages"
    c.check(alice.post(send, {"content": "x" * 40_000}))
    c.check(alice.post(send, {"content": "hi", "extra": 1}))
    c.check(alice.post(send, data="content=hi"))
    c.check(alice.post(send, data="[", headers=json_header))
    sent = c.check(alice.post(send, {"content": "@fake chunks=300 delay=0.01"})).json()
    answer = sent["assistant_message"]
    c.check(alice.post(send, {"content": "again"}))  # 409: still streaming
    c.check(alice.get("/api/streams"))
    c.check(alice.get(f"{conv}/status"))
    c.check(alice.post(f"{conv}/cancel"))
    c.stream(alice, f"/api/messages/{answer['id']}/stream")
    following = gevent.spawn(c.stream, alice, f"{conv}/stream", lambda names: "done" in names)
    gevent.sleep(0.3)
    idempotent = {"content": "@fake chunks=5", "client_message_id": "k1"}
    second = c.check(alice.post(send, idempotent)).json()["assistant_message"]
    c.check(alice.post(send, idempotent))  # 200: the same pair
    names = c.stream(alice, f"/api/messages/{second['id']}/stream")
    assert names[-1] == "done"
    done = alice.get(f"/api/messages/{second['id']}").json()
    message = f"/api/messages/{second['id']}"
    c.check(alice.get(f"{message}/stream", params={"offset": done["content_length"]}))
    c.check(alice.get(f"{message}/stream", params={"offset": "-1"}))
    c.check(bob.get(f"{message}/stream"))
    assert {"message", "delta", "done"} <= set(following.get(timeout=20))
    c.check(alice.get(f"{conv}/stream", params={"offset": "1"}))
    c.check(bob.get(f"{conv}/stream"))
    c.check(bob.get(f"{conv}/status"))
    c.check(bob.post(f"{conv}/cancel"))
    c.check(alice.get(message))
    c.check(bob.get(message))
    c.check(alice.post(f"{message}/cancel"))
    c.check(bob.post(f"{message}/cancel"))
    c.check(alice.get("/api/usage"))

    # the tree: continue, regenerate, edit, switch
    first = f"/api/messages/{answer['id']}"
    question = f"/api/messages/{second['reply_to']}"
    c.check(alice.post(f"{first}/continue"))  # 422: another message follows it
    c.check(alice.post(f"{message}/continue", {}))  # 422: it completed
    c.check(alice.post(f"{question}/regenerate"))  # 422: a question
    c.check(alice.post(f"{message}/edit", {"content": "x"}))  # 422: an answer
    c.check(bob.post(f"{message}/regenerate"))  # 404
    c.check(alice.post(f"{message}/regenerate", {"model": ""}))  # 422
    redo = c.check(alice.post(f"{message}/regenerate")).json()["assistant_message"]
    c.check(alice.post(f"{message}/regenerate"))  # 409: the regeneration streams
    c.check(alice.put(f"{conv}/branch", {"message_id": second["id"]}))  # 409
    alice.wait_terminal(redo["id"])
    c.check(alice.put(f"{conv}/branch", {"message_id": second["id"]}))
    c.check(alice.put(f"{conv}/branch", {"message_id": str(uuid.uuid4())}))  # 404
    c.check(alice.put(f"{conv}/branch", {}))  # 422
    edit = {"content": "@fake chunks=300 delay=0.01", "client_message_id": "k2"}
    edited = c.check(alice.post(f"{question}/edit", edit)).json()["assistant_message"]
    c.check(alice.post(f"{question}/edit", edit))  # 200: the same pair
    c.check(alice.post(f"/api/messages/{edited['id']}/cancel"))
    alice.wait_terminal(edited["id"])
    c.check(alice.post(f"/api/messages/{edited['id']}/continue", {"model": None}))
    alice.wait_terminal(edited["id"])

    # the conversation page
    c.check(browser.post("/api/session", {"token": alice.token}))
    c.check(browser.get(f"/c/{shared['id']}"))
    c.check(browser.get("/c/00000000-0000-0000-0000-000000000000"))

    # the token limit
    limited = ApiClient(base, make_user(llm_app.db_url, "dave", token_limit=1))
    private = limited.conversation()
    used = limited.send(private["id"], "@fake chunks=3")["assistant_message"]
    limited.wait_terminal(used["id"])
    c.check(limited.post(f"/api/conversations/{private['id']}/messages", {"content": "more"}))

    # deleting tells the room
    c.check(alice.delete(conv))
    c.check(alice.delete(conv))
    assert set(room_names) <= set(listening.get(timeout=20))

    # the WebSocket: its server frames as described
    ws = WsClient(base)
    try:
        ws.send({"type": "subscribe", "conversation_id": private["id"]})
        frames = [ws.receive()]
        ws.send({"type": "auth", "token": alice.token})
        mine = alice.conversation()
        ws.send({"type": "send", "conversation_id": mine["id"], "content": "@fake chunks=3"})
        frames += ws.until(lambda frame: frame["type"] == "done")
    finally:
        ws.close()
    assert [f["type"] for f in frames][:3] == ["error", "message", "message"]
    c.frames(frames)

    documented = {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    exercised = {(path, method) for path, method, _ in c.seen}
    assert documented - exercised == set(), "documented but never exercised"
    statuses = {status for _, _, status in c.seen}
    assert {"200", "201", "202", "204", "400", "401", "404", "409", "413", "415", "422", "429"} <= (
        statuses
    )
