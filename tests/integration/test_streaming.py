"""Durable streaming in one process: rows, checkpoints, SSE offsets, cancel, failure, fencing."""

from __future__ import annotations

import random
import time
from typing import Any

import gevent
import psycopg
import pytest

from chatsvc.config import Settings
from tests.support import TEST_SETTINGS, ApiClient, AppServer, make_user, read_sse


@pytest.fixture
def user(llm_app: AppServer) -> ApiClient:
    return ApiClient(llm_app.base, make_user(llm_app.db_url, "carol", admin=False))


def _row(db_url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(db_url) as conn:
        return conn.execute(query, params).fetchone()


def _wait_for(predicate: Any, timeout: float = 10, what: str = "condition") -> Any:
    """Poll the database-visible state (there is no event to await from outside)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        gevent.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _streaming_with_text(user: ApiClient, app: AppServer, content: str) -> str:
    """Send in a new conversation; return the answer's id once some text is committed."""
    conversation = user.conversation()
    message_id: str = user.send(conversation["id"], content)["assistant_message"]["id"]
    _wait_for(
        lambda: _row(
            app.db_url, "SELECT content_length > 0 FROM messages WHERE id = %s", message_id
        )[0],
        what="some text",
    )
    return message_id


def _deltas(events: list[Any]) -> str:
    return "".join(e.json()["text"] for e in events if e.event == "delta")


def test_send_stores_both_rows_before_answering(user: ApiClient, llm_app: AppServer) -> None:
    conversation = user.conversation()
    sent = user.send(conversation["id"], "@fake chunks=30 delay=0.02")
    answer = sent["assistant_message"]
    assert sent["user_message"]["status"] == "completed"
    assert answer["status"] == "streaming" and answer["epoch"] == 1
    assert sent["stream_url"] == f"/api/messages/{answer['id']}/stream"
    # The 202 came after the commit: another connection already sees the row.
    status = _row(llm_app.db_url, "SELECT status FROM messages WHERE id = %s", answer["id"])
    assert status == ("streaming",)
    done = user.wait_terminal(answer["id"])
    assert done["status"] == "completed" and done["content_length"] == 120
    assert done["usage"]["completion_tokens"] == 30
    assert done["completed_at"] is not None
    # Text alone is stored once: no parts beside the content, which is the one part.
    assert done["parts"] == [{"type": "text", "text": done["content"]}]
    stored = _row(
        llm_app.db_url,
        "SELECT parts, message_parts(m) FROM messages m WHERE id = %s",
        answer["id"],
    )
    assert stored == (None, done["parts"])


def test_true_state_while_streaming(user: ApiClient, llm_app: AppServer) -> None:
    conversation = user.conversation()
    answer = user.send(conversation["id"], "@fake chunks=200 delay=0.02")["assistant_message"]
    view = _wait_for(
        lambda: _row(
            llm_app.db_url,
            "SELECT content, content_length FROM active_streams WHERE message_id = %s AND "
            "content_length >= 40",
            answer["id"],
        ),
        what="40 committed characters",
    )
    assert len(view[0]) == view[1]
    got = user.get(f"/api/conversations/{conversation['id']}").json()
    assert got["is_streaming"] is True and got["active_message_id"] == answer["id"]
    live = got["messages"][1]
    assert live["status"] == "streaming" and len(live["content"]) == live["content_length"] >= 40
    status = user.get(f"/api/conversations/{conversation['id']}/status").json()
    assert status["is_streaming"] is True and status["active_message_id"] == answer["id"]
    assert status["status"] == "streaming" and status["content_length"] >= 40
    assert status["lease_expires_at"] is not None
    message = user.get(f"/api/messages/{answer['id']}").json()
    assert message["status"] == "streaming" and message["content"].startswith(live["content"])
    streams = user.get("/api/streams").json()["items"]
    assert [s["message_id"] for s in streams] == [answer["id"]]
    listed = user.get("/api/conversations").json()["items"]
    assert listed[0]["is_streaming"] is True
    final = user.wait_terminal(answer["id"])
    assert final["content"].startswith(live["content"])
    assert (
        user.get(f"/api/conversations/{conversation['id']}/status").json()["is_streaming"] is False
    )


def test_second_send_while_streaming_is_409(user: ApiClient) -> None:
    conversation = user.conversation()
    answer = user.send(conversation["id"], "@fake chunks=100 delay=0.02")["assistant_message"]
    second = user.post(f"/api/conversations/{conversation['id']}/messages", {"content": "again"})
    assert second.status_code == 409 and second.json()["error"]["code"] == "stream_active"
    user.wait_terminal(answer["id"])
    messages = user.get(f"/api/conversations/{conversation['id']}").json()["messages"]
    assert len(messages) == 2


def test_repeated_client_message_id_returns_the_original_pair(user: ApiClient) -> None:
    conversation = user.conversation()
    path = f"/api/conversations/{conversation['id']}/messages"
    first = user.post(path, {"content": "@fake chunks=5", "client_message_id": "m-1"})
    assert first.status_code == 202
    again = user.post(path, {"content": "different", "client_message_id": "m-1"})
    assert again.status_code == 200
    assert again.json()["user_message"]["id"] == first.json()["user_message"]["id"]
    assert again.json()["assistant_message"]["id"] == first.json()["assistant_message"]["id"]
    user.wait_terminal(first.json()["assistant_message"]["id"])
    messages = user.get(f"/api/conversations/{conversation['id']}").json()["messages"]
    assert len(messages) == 2


def test_checkpoints_append_only_new_text(user: ApiClient, llm_app: AppServer) -> None:
    conversation = user.conversation()
    answer = user.send(conversation["id"], "@fake chunks=60 size=10 delay=0.01")
    message_id = answer["assistant_message"]["id"]
    _wait_for(
        lambda: _row(
            llm_app.db_url,
            "SELECT count(*) >= 3 FROM message_chunks WHERE message_id = %s",
            message_id,
        )[0],
        what="three chunks",
    )
    rows = []
    with psycopg.connect(llm_app.db_url) as conn:
        rows = conn.execute(
            "SELECT start_offset, char_length(content) FROM message_chunks "
            "WHERE message_id = %s ORDER BY start_offset",
            (message_id,),
        ).fetchall()
    offset = 0
    for start, length in rows:  # each chunk starts where the previous ended
        assert start == offset
        offset += length
    final = user.wait_terminal(message_id)
    assert final["content_length"] == 600
    # Its chunks outlive it only until the reaper's next sweep (about a second).
    _wait_for(
        lambda: _row(
            llm_app.db_url,
            "SELECT count(*) = 0 FROM message_chunks WHERE message_id = %s",
            message_id,
        )[0],
        what="the sweep of the finished answer's chunks",
    )


def test_sse_headers_retry_and_offsets(user: ApiClient) -> None:
    conversation = user.conversation()
    message_id = user.send(conversation["id"], "@fake chunks=10 size=5")["assistant_message"]["id"]
    final = user.wait_terminal(message_id)
    path = f"/api/messages/{message_id}/stream"
    response = user.get(path, stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.raw.read(13) == b"retry: 1000\n\n"
    response.close()

    events = list(user.sse(path, headers={"Last-Event-ID": "20"}))
    assert [e.event for e in events] == ["delta", "done"]
    assert events[0].json() == {
        "message_id": message_id,
        "offset": 20,
        "text": final["content"][20:],
    }
    assert events[0].id == "50"
    done = events[1].json()
    assert events[1].id == "50"
    assert done["status"] == "completed" and done["content_length"] == 50
    assert set(done["usage"]) >= {"prompt_tokens", "completion_tokens"}
    query = list(user.sse(path + "?offset=45"))
    assert _deltas(query) == final["content"][45:]
    assert user.get(path, headers={"Last-Event-ID": "50"}).status_code == 204
    assert user.get(path + "?offset=50").status_code == 204
    for bad in ("51", "-1", "abc", "1.5", " "):
        response = user.get(path + f"?offset={bad}")
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid_request"
    assert user.get(path, headers={"Last-Event-ID": "x"}).status_code == 400


def test_reconnects_concatenate_to_the_content(user: ApiClient, llm_app: AppServer) -> None:
    """Any sequence of disconnects and reconnects: no gap, no overlap, code points count."""
    conversation = user.conversation()
    message_id = user.send(conversation["id"], "@fake chunks=150 size=3 delay=0.01 alphabet=mixed")[
        "assistant_message"
    ]["id"]
    rng = random.Random(7)
    received: list[tuple[int, str]] = []
    last_id: str | None = None
    connections = 0
    done = None
    while done is None and connections < 200:
        connections += 1
        headers = {"Last-Event-ID": last_id} if last_id else {}
        response = user.get(f"/api/messages/{message_id}/stream", headers=headers, stream=True)
        if response.status_code == 204:  # read to the end; only `done` was missed
            done = user.get(f"/api/messages/{message_id}").json()
            break
        assert response.status_code == 200
        budget = rng.randint(1, 4)
        for event in read_sse(response):
            if event.event == "delta":
                data = event.json()
                received.append((data["offset"], data["text"]))
                last_id = event.id
                budget -= 1
            elif event.event == "done":
                done = event.json()
                break
            if budget == 0:
                break
        response.close()
    assert done is not None and connections > 1
    offset = 0
    for start, text in received:
        assert start == offset, "gap or overlap"
        offset += len(text)
    content = "".join(t for _, t in received)
    stored = _row(
        llm_app.db_url, "SELECT content, content_length FROM messages WHERE id = %s", message_id
    )
    assert content == stored[0] and len(content) == stored[1] == done["content_length"] == 450
    assert any(ord(c) > 0xFFFF for c in content)  # astral code points count as one
    assert "\u0301" in content or "\u200d" in content


def test_conversation_stream_follows_new_messages(user: ApiClient) -> None:
    conversation = user.conversation()
    first = user.send(conversation["id"], "@fake chunks=5")["assistant_message"]
    user.wait_terminal(first["id"])
    stream = user.sse(f"/api/conversations/{conversation['id']}/stream")
    with gevent.Timeout(15):
        replay = [next(stream) for _ in range(2)]
        assert [e.event for e in replay] == ["message", "message"]
        assert replay[1].json()["status"] == "completed"
        assert replay[1].id == f"{first['id']}:20"
        second = user.send(conversation["id"], "@fake chunks=20 delay=0.01")
        answer_id = second["assistant_message"]["id"]
        seen: list[Any] = []
        for event in stream:
            seen.append(event)
            if event.event == "done":
                break
    stream.close()
    announced = [e.json()["id"] for e in seen if e.event == "message"]
    assert announced == [second["user_message"]["id"], answer_id]
    text = "".join(e.json()["text"] for e in seen if e.event == "delta")
    initial = next(
        e.json()["content"] for e in seen if e.event == "message" and e.json()["id"] == answer_id
    )
    final = user.get(f"/api/messages/{answer_id}").json()
    assert initial + text == final["content"]
    assert seen[-1].id == f"{answer_id}:{final['content_length']}"
    assert all(e.id.startswith(f"{answer_id}:") for e in seen if e.event == "delta")


def test_conversation_stream_resumes_from_last_event_id(user: ApiClient) -> None:
    conversation = user.conversation()
    first = user.send(conversation["id"], "@fake chunks=10 size=2")["assistant_message"]
    final = user.wait_terminal(first["id"])
    path = f"/api/conversations/{conversation['id']}/stream"
    with gevent.Timeout(10):
        stream = user.sse(path, headers={"Last-Event-ID": f"{first['id']}:7"})
        events = [next(stream), next(stream)]
        stream.close()
    assert [e.event for e in events] == ["delta", "done"]
    assert events[0].json()["offset"] == 7
    assert events[0].json()["text"] == final["content"][7:]
    with gevent.Timeout(10):  # read to its end: only `done` again
        stream = user.sse(path, headers={"Last-Event-ID": f"{first['id']}:20"})
        again = next(stream)
        stream.close()
    assert again.event == "done" and again.json()["content_length"] == 20
    bad = user.get(path, headers={"Last-Event-ID": "garbage"})
    assert bad.status_code == 400


def test_cancel_ends_cancelled_with_partial_content(user: ApiClient, llm_app: AppServer) -> None:
    conversation = user.conversation()
    message_id = user.send(conversation["id"], "@fake chunks=500 delay=0.01")["assistant_message"][
        "id"
    ]
    _wait_for(
        lambda: _row(
            llm_app.db_url, "SELECT content_length > 20 FROM messages WHERE id = %s", message_id
        )[0],
        what="some text",
    )
    cancelled = user.post(f"/api/conversations/{conversation['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["id"] == message_id
    assert len(cancelled.json()["content"]) == cancelled.json()["content_length"]
    final = user.wait_terminal(message_id)
    assert final["status"] == "cancelled"
    assert 20 < final["content_length"] < 2000 and len(final["content"]) == final["content_length"]
    again = user.post(f"/api/messages/{message_id}/cancel")
    assert again.status_code == 202 and again.json()["status"] == "cancelled"


def test_cancel_while_the_llm_is_silent(user: ApiClient) -> None:
    conversation = user.conversation()
    message_id = user.send(conversation["id"], "@fake chunks=50 hang_after=3")["assistant_message"][
        "id"
    ]
    events = user.sse(f"/api/messages/{message_id}/stream")
    with gevent.Timeout(10):
        first = next(e for e in events if e.event == "delta")
        assert first.json()["offset"] == 0
        user.post(f"/api/messages/{message_id}/cancel")
        started = time.monotonic()
        done = next(e for e in events if e.event == "done")
    events.close()
    assert done.json()["status"] == "cancelled"
    assert time.monotonic() - started < 1.0


def test_cancel_from_psql_is_honoured(user: ApiClient, llm_app: AppServer) -> None:
    message_id = _streaming_with_text(user, llm_app, "@fake chunks=500 delay=0.01")
    with psycopg.connect(llm_app.db_url) as conn:
        conn.execute("UPDATE messages SET cancel_requested_at = now() WHERE id = %s", (message_id,))
    final = user.wait_terminal(message_id)
    assert final["status"] == "cancelled"


def test_client_disconnect_never_cancels(user: ApiClient) -> None:
    conversation = user.conversation()
    message_id = user.send(conversation["id"], "@fake chunks=40 delay=0.01")["assistant_message"][
        "id"
    ]
    response = user.get(f"/api/messages/{message_id}/stream", stream=True)
    response.raw.read(20)
    response.close()
    final = user.wait_terminal(message_id)
    assert final["status"] == "completed" and final["content_length"] == 160


def test_provider_error_fails_keeping_partial_text(user: ApiClient) -> None:
    conversation = user.conversation()
    message_id = user.send(conversation["id"], "@fake chunks=50 fail_after=10")[
        "assistant_message"
    ]["id"]
    final = user.wait_terminal(message_id)
    assert final["status"] == "failed"
    assert final["content_length"] == 40 and len(final["content"]) == 40
    assert final["error"] and "\n" not in final["error"]
    events = list(user.sse(f"/api/messages/{message_id}/stream"))
    assert events[-1].json()["error"] == final["error"]


def test_usage_is_estimated_when_the_provider_gives_none(user: ApiClient) -> None:
    conversation = user.conversation()
    message_id = user.send(conversation["id"], "@fake chunks=8 usage=0")["assistant_message"]["id"]
    final = user.wait_terminal(message_id)
    assert final["usage"]["estimated"] is True
    assert final["usage"]["completion_tokens"] > 0
    done = list(user.sse(f"/api/messages/{message_id}/stream?offset=0"))[-1].json()
    assert done["usage"]["estimated"] is True
    usage = user.get("/api/usage").json()
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert usage["token_limit"] is None


def test_token_limit_blocks_sending(llm_app: AppServer) -> None:
    limited = ApiClient(llm_app.base, make_user(llm_app.db_url, "dave", token_limit=10))
    conversation = limited.conversation()
    message_id = limited.send(conversation["id"], "@fake chunks=20")["assistant_message"]["id"]
    limited.wait_terminal(message_id)
    response = limited.post(
        f"/api/conversations/{conversation['id']}/messages", {"content": "more"}
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "token_limit_exceeded"


def test_a_fenced_owner_cannot_write(user: ApiClient, llm_app: AppServer) -> None:
    """Another process took the stream (epoch moved on): the old owner writes nothing more."""
    llm_app.runtime.reaper.stop()  # the fake new owner below has no process to keep it alive
    message_id = _streaming_with_text(user, llm_app, "@fake chunks=400 delay=0.01")
    with psycopg.connect(llm_app.db_url) as conn:
        length = conn.execute(
            "UPDATE messages SET epoch = epoch + 1, owner = 'someone-else' WHERE id = %s "
            "RETURNING content_length",
            (message_id,),
        ).fetchone()[0]
    checkpointer = llm_app.runtime.checkpointer
    _wait_for(
        lambda: message_id not in {str(k) for k in checkpointer.streams}, what="the owner to notice"
    )
    gevent.sleep(0.3)
    row = _row(
        llm_app.db_url,
        "SELECT status, epoch, content_length, owner FROM messages WHERE id = %s",
        message_id,
    )
    assert row[0] == "streaming" and row[1] == 2 and row[3] == "someone-else"
    assert length <= row[2] <= length + 4 * 10  # at most the checkpoint already in flight
    assert checkpointer.stats.fenced == 1


def test_delete_conversation_cancels_its_answer(user: ApiClient, llm_app: AppServer) -> None:
    conversation = user.conversation()
    message_id = user.send(conversation["id"], "@fake chunks=500 delay=0.01")["assistant_message"][
        "id"
    ]
    events = user.sse(f"/api/messages/{message_id}/stream")
    with gevent.Timeout(10):
        next(e for e in events if e.event == "delta")
        assert user.delete(f"/api/conversations/{conversation['id']}").status_code == 204
        rest = list(events)
    assert all(e.event == "delta" for e in rest)  # the stream just ends
    assert user.get(f"/api/messages/{message_id}").status_code == 404
    _wait_for(lambda: not llm_app.runtime.checkpointer.streams, what="generation to stop")


def test_offline_model_streams_without_network(db_url: str) -> None:
    server = AppServer(db_url, TEST_SETTINGS.with_(model=Settings().model))
    try:
        client = ApiClient(server.base, make_user(db_url, "erin"))
        conversation = client.conversation()
        answer = client.send(conversation["id"], "What is chatsvc?")["assistant_message"]
        final = client.wait_terminal(answer["id"])
        assert final["status"] == "completed" and final["model"] == "chatsvc/offline"
        assert "What is chatsvc?" in final["content"]
        assert final["usage"]["completion_tokens"] > 10
    finally:
        server.stop()


def test_offline_model_calls_its_built_in_tool_when_asked_the_time(db_url: str) -> None:
    server = AppServer(db_url, TEST_SETTINGS.with_(model=Settings().model))
    try:
        client = ApiClient(server.base, make_user(db_url, "fay"))
        message_id = client.ask("What time is it?")
        final = client.wait_terminal(message_id)
        assert final["status"] == "completed", final
        with psycopg.connect(db_url) as conn:
            parts, content = conn.execute(
                "SELECT parts, content FROM messages WHERE id = %s", (message_id,)
            ).fetchone()
            calls = conn.execute(
                "SELECT count(*) FROM llm_calls WHERE message_id = %s", (message_id,)
            ).fetchone()
        tool, text = parts
        assert tool["name"] == "current_time" and tool["state"] == "output-available"
        assert tool["output"]["utc"].endswith("Z") and tool["output"]["utc"] in content
        assert text == {"type": "text", "text": content} and calls == (2,)
        # Asked something else, the offline model calls no tool.
        plain = client.wait_terminal(client.ask("Hello"))
        assert "current_time tool says" not in plain["content"]
    finally:
        server.stop()


def _wal_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def test_checkpoint_wal_grows_with_the_new_text_not_the_answer(
    user: ApiClient, llm_app: AppServer
) -> None:
    """A 20 KB answer in 100 checkpoints, next to rewriting the whole text each time."""
    chunks = [f"{i:04d}" + "abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] * 196 for i in range(100)]
    with psycopg.connect(llm_app.db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE naive (id int PRIMARY KEY, content text NOT NULL)")
        conn.execute("ALTER TABLE naive ALTER content SET STORAGE EXTERNAL")  # no compression
        conn.execute("INSERT INTO naive VALUES (1, '')")
        start = _wal_lsn(conn)
        for chunk in chunks:
            conn.execute("UPDATE naive SET content = content || %s WHERE id = 1", (chunk,))
        naive = _wal_lsn(conn) - start

        conversation = user.conversation()
        start = _wal_lsn(conn)
        message_id = user.send(conversation["id"], "@fake chunks=100 size=200 delay=0.01")[
            "assistant_message"
        ]["id"]
        final = user.wait_terminal(message_id)
        ours = _wal_lsn(conn) - start
        checkpoints = conn.execute(
            "SELECT count(*) FROM llm_calls WHERE message_id = %s", (message_id,)
        ).fetchone()
    assert final["content_length"] == 20_000 and checkpoints == (1,)
    assert naive > 20 * 20_000  # the whole text, rewritten a hundred times
    assert ours < 8 * 20_000, f"{ours / 20_000:.1f} WAL bytes per content byte"
    assert ours * 5 < naive
