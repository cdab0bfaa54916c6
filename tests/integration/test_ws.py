"""The WebSocket transport and project rooms, over real sockets to the in-process app."""

from __future__ import annotations

from typing import Any

import gevent
import psycopg

from tests.support import (
    ApiClient,
    AppServer,
    WsClient,
    frames_text,
    make_user,
)


def test_bad_frames_get_errors_and_the_socket_stays_usable(llm_app: AppServer) -> None:
    token = make_user(llm_app.db_url, "uma")
    conversation = ApiClient(llm_app.base, token).conversation()
    ws = WsClient(llm_app.base)
    try:
        ws.send({"type": "subscribe", "conversation_id": conversation["id"]})
        assert ws.receive() == {
            "type": "error",
            "code": "unauthorized",
            "request": "subscribe",
            "message": "Send an 'auth' frame with your token first.",
        }
        ws.send("{not json")
        assert ws.receive()["code"] == "invalid_json"
        ws.send("[1, 2]")
        assert ws.receive()["code"] == "invalid_request"
        ws.send({"type": "dance"})
        assert ws.receive()["code"] == "invalid_request"
        ws.send({"type": "auth", "token": "csk_wrong"})
        assert ws.receive()["code"] == "unauthorized"
        ws.send({"type": "auth", "token": token, "extra": 1})
        assert ws.receive()["code"] == "validation_error"
        ws.send({"type": "auth", "token": token})
        ws.send({"type": "subscribe", "conversation_id": "not-a-uuid"})
        assert ws.receive()["code"] == "validation_error"
        ws.send({"type": "send", "conversation_id": conversation["id"], "content": ""})
        assert ws.receive()["code"] == "validation_error"
        ws.send({"type": "send", "conversation_id": conversation["id"], "content": "x" * 40_000})
        assert ws.receive()["code"] == "too_large"
        ws.send({"type": "subscribe", "conversation_id": "00000000-0000-0000-0000-000000000000"})
        assert ws.receive()["code"] == "not_found"
        ws.send(
            {"type": "send", "conversation_id": conversation["id"], "content": "@fake chunks=3"}
        )
        frames = ws.until(lambda f: f["type"] == "done")
        assert [f["type"] for f in frames[:2]] == ["message", "message"]
    finally:
        ws.close()
    with psycopg.connect(llm_app.db_url) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (2,)


def test_websocket_and_sse_receive_identical_text(llm_app: AppServer) -> None:
    token = make_user(llm_app.db_url, "val")
    client = ApiClient(llm_app.base, token)
    conversation = client.conversation()
    ws = WsClient(llm_app.base, {"Authorization": f"Bearer {token}"})  # authenticated at upgrade
    try:
        ws.send(
            {
                "type": "send",
                "conversation_id": conversation["id"],
                "content": "@fake chunks=150 size=3 delay=0.01 alphabet=mixed",
            }
        )
        user_frame, answer_frame = ws.receive(), ws.receive()
        assert user_frame["type"] == answer_frame["type"] == "message"
        assert user_frame["role"] == "user" and answer_frame["status"] == "streaming"
        message_id = answer_frame["id"]
        sse = gevent.spawn(lambda: list(client.sse(f"/api/messages/{message_id}/stream")))
        frames = ws.until(lambda f: f["type"] == "done")
        done = frames[-1]
        stored = client.get(f"/api/messages/{message_id}").json()
        assert frames_text(frames, message_id) == stored["content"]
        sse_text = "".join(e.json()["text"] for e in sse.get(timeout=20) if e.event == "delta")
        assert sse_text == stored["content"]
        assert done["status"] == "completed" and done["content_length"] == 450
        usage = done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"]
        assert done["tokens_used"] == usage > 0
        assert done["user_tokens_used"] == usage and done["token_limit"] is None

        ws.send(
            {
                "type": "subscribe",
                "conversation_id": conversation["id"],
                "message_id": message_id,
                "offset": 440,
            }
        )
        replay = ws.until(lambda f: f["type"] == "done")
        assert frames_text(replay, message_id) == stored["content"][440:]
        ws.send({"type": "subscribe", "conversation_id": conversation["id"]})
        history = [ws.receive(), ws.receive()]
        assert [f["id"] for f in history] == [user_frame["id"], message_id]
        assert history[1]["content"] == stored["content"]
    finally:
        ws.close()


def test_websocket_cancel_and_token_limit(llm_app: AppServer) -> None:
    token = make_user(llm_app.db_url, "wes", token_limit=100)
    conversation = ApiClient(llm_app.base, token).conversation()
    ws = WsClient(llm_app.base)
    try:
        ws.send({"type": "auth", "token": token})
        ws.send(
            {
                "type": "send",
                "conversation_id": conversation["id"],
                "content": "@fake chunks=2000 delay=0.01",
            }
        )
        ws.until(lambda f: f["type"] == "delta")
        ws.send({"type": "cancel", "conversation_id": conversation["id"]})
        done = ws.until(lambda f: f["type"] == "done")[-1]
        assert done["status"] == "cancelled" and done["token_limit"] == 100
        assert done["usage"]["estimated"] is True  # the call was cut short
        with psycopg.connect(llm_app.db_url) as conn:  # use the rest of the allowance
            conn.execute(
                "UPDATE users SET token_limit = %s WHERE name = 'wes'", (done["user_tokens_used"],)
            )
        ws.send({"type": "send", "conversation_id": conversation["id"], "content": "more"})
        assert ws.receive()["code"] == "token_limit_exceeded"
    finally:
        ws.close()


def _room_sse(client: ApiClient, project_id: str, into: list[Any]) -> gevent.Greenlet:
    def read() -> None:
        for event in client.sse(f"/api/projects/{project_id}/events"):
            into.append((event.event, event.json()))

    return gevent.spawn(read)


def test_project_rooms_reach_members_and_no_one_else(llm_app: AppServer) -> None:
    alice = ApiClient(llm_app.base, make_user(llm_app.db_url, "alice"))
    bob = ApiClient(llm_app.base, make_user(llm_app.db_url, "bob"))
    carol_token = make_user(llm_app.db_url, "carol")
    carol = ApiClient(llm_app.base, carol_token)
    project = alice.post("/api/projects", {"name": "Team"}).json()
    other = carol.post("/api/projects", {"name": "Other"}).json()
    alice.post(f"/api/projects/{project['id']}/members", {"user": "bob"})
    assert carol.get(f"/api/projects/{project['id']}/events").status_code == 404

    alice_events: list[Any] = []
    bob_events: list[Any] = []
    carol_events: list[Any] = []
    readers = [
        _room_sse(alice, project["id"], alice_events),
        _room_sse(bob, project["id"], bob_events),
        _room_sse(carol, other["id"], carol_events),
    ]
    ws = WsClient(llm_app.base)
    ws.send({"type": "auth", "token": carol_token})
    ws.send({"type": "join_project", "project_id": project["id"]})
    assert ws.receive()["code"] == "not_found"
    gevent.sleep(0.3)  # let the room followers subscribe
    try:
        conversation = alice.conversation(project_id=project["id"], title="plans")
        answer = bob.send(conversation["id"], "@fake chunks=5")["assistant_message"]
        bob.wait_terminal(answer["id"])
        with gevent.Timeout(10):
            while len(bob_events) < 3 or len(alice_events) < 3:
                gevent.sleep(0.05)
        names = ["conversation.created", "stream.started", "stream.finished"]
        assert [e[0] for e in alice_events] == names
        assert alice_events == bob_events
        created, started, finished = (e[1] for e in alice_events)
        assert created["conversation_id"] == conversation["id"] and created["title"] == "plans"
        assert created["project_id"] == project["id"]
        assert started["message_id"] == finished["message_id"] == answer["id"]
        assert finished["status"] == "completed" and finished["content_length"] == 20

        assert alice.delete(f"/api/projects/{project['id']}/members/bob").status_code == 204
        with gevent.Timeout(10):
            readers[1].join()  # bob's room stream ended with his membership
        assert alice.delete(f"/api/conversations/{conversation['id']}").status_code == 204
        with gevent.Timeout(10):
            while len(alice_events) < 4:
                gevent.sleep(0.05)
        assert alice_events[3] == (
            "conversation.deleted",
            {"project_id": project["id"], "conversation_id": conversation["id"]},
        )
        assert len(bob_events) == 3 and carol_events == []
        assert ws.client.receive(timeout=0.5) is None  # carol's socket got nothing of it
    finally:
        ws.close()
        gevent.killall(readers)


def test_usage_counts_each_call_once(llm_app: AppServer) -> None:
    token = make_user(llm_app.db_url, "xia")
    client = ApiClient(llm_app.base, token)
    conversation = client.conversation()
    for content in ("@fake chunks=4", "@fake chunks=6 usage=0"):
        answer = client.send(conversation["id"], content)["assistant_message"]
        client.wait_terminal(answer["id"])
    with psycopg.connect(llm_app.db_url) as conn:
        calls = conn.execute(
            "SELECT prompt_tokens, completion_tokens, estimated FROM llm_calls ORDER BY created_at"
        ).fetchall()
    assert len(calls) == 2 and [c[2] for c in calls] == [False, True]
    usage = client.get("/api/usage").json()
    assert usage["prompt_tokens"] == sum(c[0] for c in calls)
    assert usage["completion_tokens"] == sum(c[1] for c in calls)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
