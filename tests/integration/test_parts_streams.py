"""Answers with parts over HTTP, SSE and WebSocket: rows written directly, events through the hub.

Each test commits the rows first and publishes the events after (durable
before visible), as the writer does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from uuid import UUID

import gevent
import psycopg

from chatsvc.engine.events import Delta, Finished, ReasoningDelta, ToolChanged
from tests.integration.test_openapi_responses import Contract
from tests.support import ApiClient, AppServer, SseEvent, WsClient, chunk

Conn = psycopg.Connection[Any]
USAGE = {"prompt_tokens": 3, "completion_tokens": 4}
TOOL = {"type": "tool", "tool_call_id": "c1", "name": "charge"}


def _layout(version: int) -> list[dict[str, Any]]:
    return [
        {"type": "reasoning", "step": 0, "start": 0},
        {"type": "text", "step": 0, "start": 0},
        {**TOOL, "step": 0, "input_text": '{"amount":5}', "complete": True, "v": version},
        {"type": "reasoning", "step": 1, "start": 5},
        {"type": "text", "step": 1, "start": 3},
    ]


def _answer(conn: Conn, conversation_id: str) -> UUID:
    """A streaming answer owned by a live process elsewhere: reasoning, text, a tool, again."""
    message: UUID = conn.execute(
        "INSERT INTO messages (conversation_id, user_id, role, status, model, epoch, owner, "
        "lease_expires_at, layout, tool_version) "
        "SELECT c.id, c.user_id, 'assistant', 'streaming', 'fake', 1, 'elsewhere', "
        "now() + interval '1 hour', %s, 2 FROM conversations c WHERE c.id = %s RETURNING id",
        (json.dumps(_layout(2)), conversation_id),
    ).fetchone()[0]
    conn.execute(
        "UPDATE conversations SET current_leaf_id = %s WHERE id = %s", (message, conversation_id)
    )
    chunk(conn, message, "reasoning", 0, "think")
    chunk(conn, message, "text", 0, "abc")
    chunk(conn, message, "reasoning", 5, "more")
    chunk(conn, message, "text", 3, "dé")
    return message


def _more(app_server: AppServer, conn: Conn, conversation_id: str, message: UUID) -> None:
    """The answer goes on: reasoning, text, its tool's result; then it finishes."""
    c, m = UUID(conversation_id), message
    chunk(conn, m, "reasoning", 9, "!")
    chunk(conn, m, "text", 5, "f")
    conn.execute(
        "INSERT INTO tool_calls (message_id, tool_call_id, step, name, arguments, status, "
        "idempotency_key, output, epoch, attempts, finished_at) VALUES "
        "(%s, 'c1', 0, 'charge', '{\"amount\": 5}', 'succeeded', 'k1', '{\"ok\": true}', 1, 1, "
        "now())",
        (m,),
    )
    conn.execute(
        "UPDATE messages SET tool_version = 3, layout = %s WHERE id = %s",
        (json.dumps(_layout(3)), m),
    )
    done = {**TOOL, "state": "output-available", "input": {"amount": 5}, "output": {"ok": True}}
    hub = app_server.runtime.hub
    hub.publish(
        [ReasoningDelta(c, m, 9, 10, "!"), Delta(c, m, 5, 6, "f"), ToolChanged(c, m, 3, "c1", done)]
    )
    _finish(conn, m)
    hub.publish([Finished(c, m, "completed", 6, USAGE, None)])


def _finish(conn: Conn, message: UUID) -> None:
    parts = conn.execute("SELECT message_parts(m) FROM messages m WHERE id = %s", (message,))
    conn.execute(
        "UPDATE messages SET status = 'completed', completed_at = now(), owner = NULL, "
        "content = message_text(m), parts = %s, usage = %s FROM messages m "
        "WHERE messages.id = %s AND m.id = messages.id",
        (json.dumps(parts.fetchone()[0]), json.dumps(USAGE), message),
    )


def _rebuild(events: list[SseEvent]) -> tuple[str, str, dict[str, Any]]:
    """The text, the reasoning and the last state of each tool, as a client rebuilds them."""
    text = "".join(e.json()["text"] for e in events if e.event == "delta")
    reasoning = "".join(e.json()["text"] for e in events if e.event == "reasoning")
    tools = {e.json()["tool_call_id"]: e.json() for e in events if e.event == "tool"}
    return text, reasoning, tools


def _read(stream: Any, until: str = "done") -> list[SseEvent]:
    seen: list[SseEvent] = []
    for event in stream:
        seen.append(event)
        if event.event == until:
            break
    return seen


def _interrupted(
    client: ApiClient, path: str, count: int, go_on: Callable[[], None]
) -> tuple[list[SseEvent], list[SseEvent]]:
    """Read `count` events, go away, let the answer go on, come back with the last id."""
    with gevent.Timeout(15):
        stream = client.sse(path)
        before = [next(stream) for _ in range(count)]
        stream.close()
        go_on()
        after = _read(client.sse(path, headers={"Last-Event-ID": str(before[-1].id)}))
    return before, after


def test_messages_show_their_parts_while_streaming_and_finished(
    alice: ApiClient, conn: Conn
) -> None:
    conversation = alice.conversation()
    message = _answer(conn, conversation["id"])
    body = alice.get(f"/api/messages/{message}").json()
    assert body["content"] == "abcdé" and body["reasoning_length"] == 9
    assert body["tool_version"] == 2
    assert body["parts"] == [
        {"type": "reasoning", "text": "think"},
        {"type": "text", "text": "abc"},
        {**TOOL, "input": '{"amount":5}', "state": "input-available"},
        {"type": "reasoning", "text": "more"},
        {"type": "text", "text": "dé"},
    ]
    _finish(conn, message)
    finished = alice.get(f"/api/messages/{message}").json()
    assert finished["status"] == "completed" and finished["parts"] == body["parts"]
    listed = alice.get(f"/api/conversations/{conversation['id']}").json()["messages"]
    assert [m["parts"] for m in listed] == [body["parts"]]


def test_sse_from_zero_sends_every_part_with_composite_ids(
    app_server: AppServer, alice: ApiClient, conn: Conn
) -> None:
    conversation = alice.conversation()
    message = _answer(conn, conversation["id"])
    stream = alice.sse(f"/api/messages/{message}/stream")
    with gevent.Timeout(15):
        first = [next(stream) for _ in range(5)]
        assert [e.event for e in first] == ["reasoning", "delta", "tool", "reasoning", "delta"]
        _more(app_server, conn, conversation["id"], message)
        events = first + _read(stream)
    stream.close()
    final = alice.get(f"/api/messages/{message}").json()
    text, reasoning, tools = _rebuild(events)
    assert text == final["content"] == "abcdéf"
    assert reasoning == "thinkmore!"
    assert tools["c1"]["state"] == "output-available" and tools["c1"]["output"] == {"ok": True}
    assert all(e.id is not None and e.id.count(".") == 2 for e in events)
    assert events[-1].event == "done" and events[-1].id == "6.10.3"


def test_reconnecting_with_a_composite_id_sends_nothing_twice(
    app_server: AppServer, alice: ApiClient, conn: Conn
) -> None:
    c = alice.conversation()["id"]
    message = _answer(conn, c)
    before, after = _interrupted(
        alice, f"/api/messages/{message}/stream", 3, lambda: _more(app_server, conn, c, message)
    )
    assert before[-1].id == "3.5.2"
    assert [e.event for e in after] == ["tool", "reasoning", "delta", "done"]
    text, reasoning, tools = _rebuild(before + after)
    assert (text, reasoning) == ("abcdéf", "thinkmore!")
    assert tools["c1"]["state"] == "output-available"


def test_a_bare_offset_is_a_content_offset_and_the_end_is_the_end_of_everything(
    alice: ApiClient, conn: Conn
) -> None:
    conversation = alice.conversation()
    message = _answer(conn, conversation["id"])
    _finish(conn, message)
    path = f"/api/messages/{message}/stream"
    with gevent.Timeout(15):
        events = _read(alice.sse(f"{path}?offset=5"))
    # No text after 5, but every reasoning and tool part, then done.
    assert [e.event for e in events] == ["reasoning", "tool", "reasoning", "done"]
    assert events[-1].id == "5.9.2"
    assert alice.get(f"{path}?offset=5.9.2").status_code == 204
    assert alice.get(path, headers={"Last-Event-ID": "5.9.2"}).status_code == 204
    for beyond in ("6", "5.10.2", "5.9.3", "1.2", "x"):
        response = alice.get(path, headers={"Last-Event-ID": beyond})
        assert response.status_code == 400, beyond
        assert response.json()["error"]["code"] == "invalid_request"


def test_conversation_stream_resumes_with_a_composite_cursor(
    app_server: AppServer, alice: ApiClient, conn: Conn
) -> None:
    c = alice.conversation()["id"]
    message = _answer(conn, c)
    (announced,), after = _interrupted(
        alice, f"/api/conversations/{c}/stream", 1, lambda: _more(app_server, conn, c, message)
    )
    assert announced.event == "message" and announced.id == f"{message}:5.9.2"
    assert [e.event for e in after] == ["tool", "reasoning", "delta", "done"]
    assert all(e.id is not None and e.id.startswith(f"{message}:") for e in after)
    assert after[-1].id == f"{message}:6.10.3"


def test_websocket_subscribe_with_parts_and_a_composite_offset(
    app_server: AppServer, alice: ApiClient, conn: Conn
) -> None:
    conversation = alice.conversation()
    message = _answer(conn, conversation["id"])
    _finish(conn, message)
    ws = WsClient(app_server.base, {"Authorization": f"Bearer {alice.token}"})
    try:
        subscribe = {"type": "subscribe", "conversation_id": conversation["id"]}
        ws.send({**subscribe, "message_id": str(message)})
        frames = ws.until(lambda frame: frame["type"] == "done")
        assert [f["type"] for f in frames] == [
            "reasoning",
            "delta",
            "tool",
            "reasoning",
            "delta",
            "done",
        ]
        assert [f["position"] for f in frames] == [
            "0.5.1",
            "3.5.1",
            "3.5.2",
            "3.9.2",
            "5.9.2",
            "5.9.2",
        ]
        ws.send({**subscribe, "message_id": str(message), "offset": frames[2]["position"]})
        frames = ws.until(lambda frame: frame["type"] == "done")
        assert [(f["type"], f.get("text")) for f in frames] == [
            ("reasoning", "more"),
            ("delta", "dé"),
            ("done", None),
        ]
        ws.send({**subscribe, "message_id": str(message), "offset": "3.5"})
        assert ws.receive()["type"] == "error"
    finally:
        ws.close()


def test_parts_responses_events_and_frames_answer_as_described(
    app_server: AppServer, alice: ApiClient, conn: Conn
) -> None:
    contract = Contract(ApiClient(app_server.base, None).get("/openapi.json").json())
    conversation = alice.conversation()
    message = _answer(conn, conversation["id"])
    contract.check(alice.get(f"/api/messages/{message}"))
    contract.check(alice.get(f"/api/conversations/{conversation['id']}"))
    _more(app_server, conn, conversation["id"], message)
    names = contract.stream(alice, f"/api/messages/{message}/stream")
    assert set(names) == {"reasoning", "delta", "tool", "done"}
    names = contract.stream(
        alice, f"/api/conversations/{conversation['id']}/stream", until=lambda n: len(n) == 1
    )
    assert names == ["message"]
    ws = WsClient(app_server.base, {"Authorization": f"Bearer {alice.token}"})
    try:
        ws.send(
            {"type": "subscribe", "conversation_id": conversation["id"], "message_id": str(message)}
        )
        contract.frames(ws.until(lambda frame: frame["type"] == "done"))
    finally:
        ws.close()
