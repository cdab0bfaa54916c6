"""POST /api/chat and GET /api/chat/{id}/stream over real HTTP: the AI SDK's UI message stream.

The chunks are read as the SDK reads them (`data:` events, `[DONE]` last) and
checked against the database; the real SDK client drives them in tests/e2e/test_aisdk.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests

from tests.faketools import FakeToolServer
from tests.integration.test_tool_loop import tools_file
from tests.support import (
    ApiClient,
    AppServer,
    FakeLLMServer,
    make_user,
    query,
    read_sse,
    wait_until,
)

DONE = "[DONE]"


def chat_body(chat_id: str, text: str, message_id: str = "m1", **extra: Any) -> dict[str, Any]:
    """The body DefaultChatTransport sends for one new user message."""
    message = {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": chat_id, "messages": [message], "trigger": "submit-message", **extra}


def read_chunks(response: requests.Response, until: str | None = None) -> list[Any]:
    """The chunks of a UI message stream (DONE as the string "[DONE]"), to its end or `until`."""
    assert response.status_code == 200, response.text
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["Content-Type"].startswith("text/event-stream")
    found: list[Any] = []
    try:
        with gevent.Timeout(30):
            for event in read_sse(response):
                if not event.data:
                    continue
                found.append(DONE if event.data == DONE else json.loads(event.data))
                if until is not None and found[-1] != DONE and found[-1]["type"] == until:
                    break
    finally:
        response.close()
    return found


def post_chat(client: ApiClient, body: dict[str, Any]) -> list[Any]:
    """POST /api/chat and read its stream to the end."""
    return read_chunks(client.post("/api/chat", body, stream=True, timeout=30))


def rebuild(found: list[Any]) -> dict[str, Any]:
    """What a client makes of the chunks: the message id, parts by id, metadata, the ending."""
    parts: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    message: dict[str, Any] = {"steps": 0}
    for chunk in found:
        if chunk == DONE:
            continue
        kind = chunk["type"]
        if kind == "start":
            message["id"] = chunk["messageId"]
        elif kind == "start-step":
            message["steps"] += 1
        elif kind in ("text-start", "reasoning-start"):
            assert chunk["id"] not in parts
            parts[chunk["id"]] = {"type": kind.split("-")[0], "text": ""}
            order.append(chunk["id"])
        elif kind in ("text-delta", "reasoning-delta"):
            parts[chunk["id"]]["text"] += chunk["delta"]
        elif kind == "tool-input-start":
            parts[chunk["toolCallId"]] = {"type": "tool", "name": chunk["toolName"]}
            order.append(chunk["toolCallId"])
        elif kind == "tool-input-available":
            parts[chunk["toolCallId"]].update(state="input-available", input=chunk["input"])
        elif kind == "tool-output-available":
            parts[chunk["toolCallId"]].update(state="output-available", output=chunk["output"])
        elif kind == "tool-output-error":
            parts[chunk["toolCallId"]].update(state="output-error", error=chunk["errorText"])
        elif kind == "message-metadata":
            message["metadata"] = chunk["messageMetadata"]
        elif kind in ("finish", "abort", "error"):
            message["ending"] = chunk
    message["parts"] = [parts[key] for key in order]
    return message


def stored(db_url: str, message_id: str) -> dict[str, Any]:
    """The answer's row."""
    (row,) = query(
        db_url,
        "SELECT id::text, conversation_id::text, status, content, content_length, usage, error, "
        "parts, client_message_id, epoch FROM messages WHERE id = %s",
        message_id,
    )
    return row


def stored_parts(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored parts in the shape `rebuild` gives them."""
    shown = []
    for part in row["parts"]:
        if part["type"] == "tool":
            kept = {k: part[k] for k in ("name", "state", "input", "output", "error") if k in part}
            shown.append({"type": "tool", **kept})
        else:
            shown.append(part)
    return shown


def test_a_new_key_creates_a_conversation_and_streams_the_answer(llm_app: AppServer) -> None:
    alice = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    found = post_chat(alice, chat_body("chat-1", "@fake chunks=30 size=3"))
    assert found[0]["type"] == "start" and found[-1] == DONE
    assert [c["type"] for c in found[-3:-1]] == ["message-metadata", "finish"]
    message = rebuild(found)
    row = stored(llm_app.db_url, message["id"])
    assert row["status"] == "completed"
    assert message["parts"] == [{"type": "text", "text": row["content"]}]
    assert message["steps"] == 1
    assert message["metadata"] == {
        "status": "completed",
        "usage": {k: row["usage"][k] for k in ("prompt_tokens", "completion_tokens")},
        "content_length": row["content_length"],
    }
    assert message["ending"] == {"type": "finish", "finishReason": "stop"}
    (conversation,) = query(llm_app.db_url, "SELECT id::text, title FROM conversations")
    assert conversation["id"] == row["conversation_id"]
    assert conversation["title"] == "@fake chunks=30 size=3"
    # The same key names the same conversation; the message follows the first.
    second = rebuild(post_chat(alice, chat_body("chat-1", "@fake chunks=3", "m2")))
    assert stored(llm_app.db_url, second["id"])["conversation_id"] == row["conversation_id"]
    # Another user's equal key is another conversation.
    bob = ApiClient(llm_app.base, make_user(llm_app.db_url, "bob"))
    third = rebuild(post_chat(bob, chat_body("chat-1", "@fake chunks=3")))
    assert stored(llm_app.db_url, third["id"])["conversation_id"] != row["conversation_id"]


def test_a_conversation_uuid_is_that_conversation(llm_app: AppServer) -> None:
    alice = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    conversation = alice.conversation()
    message = rebuild(post_chat(alice, chat_body(conversation["id"], "@fake chunks=4")))
    assert stored(llm_app.db_url, message["id"])["conversation_id"] == conversation["id"]
    # For someone who cannot see it, the UUID is only a key of their own.
    bob = ApiClient(llm_app.base, make_user(llm_app.db_url, "bob"))
    other = rebuild(post_chat(bob, chat_body(conversation["id"], "@fake chunks=4")))
    assert stored(llm_app.db_url, other["id"])["conversation_id"] != conversation["id"]
    assert len(alice.get(f"/api/conversations/{conversation['id']}").json()["messages"]) == 2


def test_only_the_last_user_message_is_taken_and_its_id_is_the_idempotency_key(
    llm_app: AppServer,
) -> None:
    alice = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    history = [
        {"id": "old", "role": "user", "parts": [{"type": "text", "text": "ignored"}]},
        {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "ignored too"}]},
    ]
    body = chat_body("k", "@fake chunks=200 delay=0.01", "u2")
    body["messages"] = history + body["messages"]
    response = alice.post("/api/chat", body, stream=True, timeout=30)
    first = read_chunks(response, until="text-delta")
    answer_id = first[0]["messageId"]
    # The retry while it streams: the same answer, replayed from `start`, to its end.
    retried = post_chat(alice, body)
    assert retried[0] == {"type": "start", "messageId": answer_id}
    row = stored(llm_app.db_url, answer_id)
    assert rebuild(retried)["parts"] == [{"type": "text", "text": row["content"]}]
    rows = query(llm_app.db_url, "SELECT role, content, client_message_id FROM messages")
    assert [(r["role"], r["client_message_id"]) for r in rows] == [
        ("user", "u2"),
        ("assistant", None),
    ]
    # A retry after the end gets the whole stored answer again, and starts nothing.
    again = rebuild(post_chat(alice, body))
    assert again["id"] == answer_id and again["parts"] == [{"type": "text", "text": row["content"]}]
    assert len(query(llm_app.db_url, "SELECT 1 FROM messages")) == 2


def test_resume_replays_the_streaming_answer_then_follows_it(llm_app: AppServer) -> None:
    alice = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    bob = ApiClient(llm_app.base, make_user(llm_app.db_url, "bob"))
    assert alice.get("/api/chat/nothing-yet/stream").status_code == 204
    body = chat_body("resumable", "@fake chunks=150 delay=0.01 reasoning=20")
    read_chunks(alice.post("/api/chat", body, stream=True, timeout=30), until="text-delta")
    resumed = read_chunks(alice.get("/api/chat/resumable/stream", stream=True, timeout=30))
    message = rebuild(resumed)
    row = stored(llm_app.db_url, message["id"])
    assert [p["type"] for p in message["parts"]] == ["reasoning", "text"]
    assert message["parts"] == stored_parts(row)
    assert resumed[-1] == DONE
    # Nothing streams now; and another user's same key, or this conversation's UUID, is 204.
    assert alice.get("/api/chat/resumable/stream").status_code == 204
    assert bob.get("/api/chat/resumable/stream").status_code == 204
    assert alice.get(f"/api/chat/{row['conversation_id']}/stream").status_code == 204
    # Any key works, as the SDK sends it (encodeURIComponent), a slash included.
    read_chunks(alice.post("/api/chat", chat_body("a/b", "@fake chunks=300"), stream=True), "start")
    slashed = alice.get("/api/chat/a%2Fb/stream", stream=True)
    assert slashed.status_code == 200
    slashed.close()


def test_cancel_ends_with_abort_and_failure_with_error(llm_app: AppServer) -> None:
    alice = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    response = alice.post(
        "/api/chat", chat_body("c", "@fake chunks=500 delay=0.01"), stream=True, timeout=30
    )
    first: list[Any] = []
    try:
        events = read_sse(response)
        for event in events:
            first.append(json.loads(event.data))
            if first[-1]["type"] == "text-delta":
                break
        alice.post(f"/api/messages/{first[0]['messageId']}/cancel")
        rest = [DONE if e.data == DONE else json.loads(e.data) for e in events if e.data]
    finally:
        response.close()
    message = rebuild(first + rest)
    row = stored(llm_app.db_url, message["id"])
    assert row["status"] == "cancelled"
    assert message["ending"] == {"type": "abort", "reason": "cancelled"}
    assert message["metadata"]["status"] == "cancelled"
    assert message["parts"] == [{"type": "text", "text": row["content"]}]
    assert rest[-1] == DONE

    failed = rebuild(post_chat(alice, chat_body("c", "@fake chunks=40 fail_after=10", "m2")))
    row = stored(llm_app.db_url, failed["id"])
    assert row["status"] == "failed"
    assert failed["ending"] == {"type": "error", "errorText": row["error"]}
    assert failed["metadata"]["status"] == "failed"


@pytest.fixture
def tools_app(
    db_url: str, fake_llm: FakeLLMServer, fake_tools: FakeToolServer, tmp_path: Path
) -> Iterator[AppServer]:
    settings = fake_llm.settings(tools_file=tools_file(tmp_path, fake_tools))
    server = AppServer(db_url, settings)
    yield server
    server.stop()


def test_reasoning_and_tools_are_parts_in_steps(tools_app: AppServer) -> None:
    alice = ApiClient(tools_app.base, make_user(tools_app.db_url, "alice"))
    text = '@fake reasoning=3 calls=add:{"n":1};broken:{"n":2} chunks=5 size=2'
    found = post_chat(alice, chat_body("tools", text))
    message = rebuild(found)
    row = stored(tools_app.db_url, message["id"])
    assert row["status"] == "completed", row
    assert message["parts"] == stored_parts(row)
    assert [p["type"] for p in message["parts"]] == [
        "reasoning",
        "tool",
        "tool",
        "reasoning",
        "text",
    ]
    assert [p["state"] for p in message["parts"][1:3]] == ["output-available", "output-error"]
    types = [c["type"] for c in found if c != DONE]
    assert types.count("start-step") == types.count("finish-step") == 2
    # Every part of the first step comes before the second step starts.
    second = types.index("start-step", 2)
    assert types.index("tool-output-error") < second < types.index("text-start")
    # The replay of the finished answer (a retried POST) is the same message.
    assert rebuild(post_chat(alice, chat_body("tools", text))) == message


def test_errors_before_the_stream_use_the_api_error_body(llm_app: AppServer) -> None:
    alice = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    anon = ApiClient(llm_app.base, None)

    def error(response: requests.Response, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code

    error(anon.post("/api/chat", chat_body("x", "hi")), 401, "unauthorized")
    error(anon.get("/api/chat/x/stream"), 401, "unauthorized")
    error(alice.post("/api/chat", {"id": "x", "messages": []}), 422, "validation_error")
    error(
        alice.post("/api/chat", {**chat_body("x", "hi"), "trigger": "x"}), 422, "validation_error"
    )
    assistant_last = chat_body("x", "hi")
    assistant_last["messages"][0]["role"] = "assistant"
    error(alice.post("/api/chat", assistant_last), 422, "validation_error")
    error(alice.post("/api/chat", chat_body("x", "x" * 40_000)), 413, "too_large")
    error(
        alice.post("/api/chat", data="{", headers={"Content-Type": "application/json"}),
        400,
        "invalid_json",
    )
    # A model the operator did not list: 422 before anything is written (no conversation
    # for the new key either).
    error(
        alice.post("/api/chat", {**chat_body("x", "hi"), "model": "nope/none"}),
        422,
        "unknown_model",
    )
    assert query(llm_app.db_url, "SELECT 1 FROM conversations") == []
    # A second message while the first answer streams: 409, and nothing written.
    read_chunks(
        alice.post("/api/chat", chat_body("busy", "@fake chunks=300"), stream=True, timeout=30),
        until="start",
    )
    error(alice.post("/api/chat", chat_body("busy", "more", "m2")), 409, "stream_active")
    assert len(query(llm_app.db_url, "SELECT 1 FROM messages")) == 2
    wait_until(
        "the answer ends", lambda: query(llm_app.db_url, "SELECT 1 FROM active_streams") == []
    )


def test_regenerate_and_edit_go_to_the_tree(llm_app: AppServer) -> None:
    alice = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    first = rebuild(post_chat(alice, chat_body("tree", "@fake chunks=5", "q1")))
    conversation_id = stored(llm_app.db_url, first["id"])["conversation_id"]

    def branch() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = alice.get(f"/api/conversations/{conversation_id}").json()
        return found["messages"]

    question = branch()[0]
    # regenerate() without a messageId: the last answer of the current branch.
    regenerate = {**chat_body("tree", "ignored", "q1"), "trigger": "regenerate-message"}
    second = rebuild(post_chat(alice, regenerate))
    assert second["id"] != first["id"]
    assert [m["id"] for m in branch()] == [question["id"], second["id"]]
    assert branch()[1]["sibling_ids"] == [first["id"], second["id"]]
    assert second["parts"] == [{"type": "text", "text": branch()[1]["content"]}]
    # regenerate({messageId}) names the answer by its stored id (the one `start` gave).
    third = rebuild(post_chat(alice, {**regenerate, "messageId": first["id"]}))
    assert branch()[1]["id"] == third["id"] and len(branch()[1]["sibling_ids"]) == 3
    # sendMessage({text, messageId}): an edit of the question named by its client id.
    edit = chat_body("tree", "@fake chunks=6 seed=edited", "q1", messageId="q1")
    edited = rebuild(post_chat(alice, edit))
    new_question, answer = branch()
    assert new_question["content"] == "@fake chunks=6 seed=edited"
    assert new_question["sibling_ids"] == [question["id"], new_question["id"]]
    assert answer["id"] == edited["id"] and edited["metadata"]["status"] == "completed"
    # ... or by its stored id; an answer is not edited; unknown names and chats are 404.
    edit_by_id = chat_body("tree", "@fake chunks=2", "q9", messageId=new_question["id"])
    assert rebuild(post_chat(alice, edit_by_id))["metadata"]["status"] == "completed"
    assert len(branch()[0]["sibling_ids"]) == 3
    not_a_question = alice.post("/api/chat", {**edit, "messageId": answer["id"]})
    assert not_a_question.status_code == 422, not_a_question.text
    assert alice.post("/api/chat", {**edit, "messageId": "nope"}).status_code == 404
    assert alice.post("/api/chat", {**regenerate, "id": "no-such-chat"}).status_code == 404


def test_a_continued_answer_is_resumed_from_its_start(llm_app: AppServer) -> None:
    alice = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    body = chat_body("paused", "@fake chunks=300 delay=0.01", "q1")
    first = read_chunks(alice.post("/api/chat", body, stream=True, timeout=30), until="text-delta")
    answer_id = first[0]["messageId"]
    alice.post(f"/api/messages/{answer_id}/cancel")
    wait_until("cancelled", lambda: stored(llm_app.db_url, answer_id)["status"] == "cancelled")
    stopped = stored(llm_app.db_url, answer_id)["content"]
    assert alice.post(f"/api/messages/{answer_id}/continue").status_code == 202
    # Stop, then Continue, then the SDK's resumeStream(): the same message, to its new end.
    resumed = rebuild(read_chunks(alice.get("/api/chat/paused/stream", stream=True, timeout=30)))
    row = stored(llm_app.db_url, answer_id)
    assert resumed["id"] == answer_id and row["status"] == "completed"
    assert resumed["parts"] == [{"type": "text", "text": row["content"]}]
    assert row["content"].startswith(stopped) and len(row["content"]) > len(stopped)
