"""Leases between in-process servers sharing a database: hand-over, takeover, limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import psycopg
import pytest

from chatsvc.fakellm import parse_directives, script_text
from tests.support import (
    TEST_SETTINGS,
    ApiClient,
    AppServer,
    FakeLLMServer,
    chunk,
    follow_message,
    make_user,
    wait_until,
)


@pytest.fixture
def servers(db_url: str, fake_llm: FakeLLMServer, request: Any) -> Iterator[list[AppServer]]:
    overrides = getattr(request, "param", {})
    settings = fake_llm.settings(**overrides)
    started = [AppServer(db_url, settings) for _ in range(2)]
    yield started
    for server in started:
        server.stop()


def _row(db_url: str, message_id: str) -> Any:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT status, content, epoch, resume_count, error FROM messages WHERE id = %s",
            (message_id,),
        ).fetchone()


def _send(server: AppServer, token: str, content: str) -> str:
    client = ApiClient(server.base, token)
    conversation = client.conversation()
    message_id: str = client.send(conversation["id"], content)["assistant_message"]["id"]
    return message_id


def _wait_for_text(server: AppServer, token: str, message_id: str, chars: int) -> None:
    client = ApiClient(server.base, token)
    with gevent.Timeout(10, AssertionError("no text")):
        while len(client.get(f"/api/messages/{message_id}").json()["content"]) < chars:
            gevent.sleep(0.05)


def test_shutdown_hands_over_and_followers_see_the_status(servers: list[AppServer]) -> None:
    first, second = servers
    token = make_user(first.db_url, "quinn")
    content = "@fake chunks=300 size=3 delay=0.01"
    message_id = _send(first, token, content)
    follower = gevent.spawn(follow_message, [second.base], token, message_id)
    _wait_for_text(second, token, message_id, 30)
    first.runtime.shutdown()
    result = follower.get(timeout=30)
    status, stored, epoch, resumes, _ = _row(first.db_url, message_id)
    assert status == "completed" and epoch == 2 and resumes == 1
    assert result.text == stored == script_text(parse_directives(content))
    assert result.statuses == [
        {"message_id": message_id, "status": "streaming", "epoch": 2, "resumed": True}
    ]
    assert result.connections == 1  # the follower on the other server never had to reconnect
    # A client that was away during the hand-over learns of it when it (re)connects.
    client = ApiClient(second.base, token)
    resumed = {"message_id": message_id, "status": "completed", "epoch": 2, "resumed": True}
    events = list(client.sse(f"/api/messages/{message_id}/stream", headers={"Last-Event-ID": "3"}))
    assert [e.event for e in events] == ["status", "delta", "done"]
    assert events[0].json() == resumed
    conversation_id = client.get(f"/api/messages/{message_id}").json()["conversation_id"]
    with gevent.Timeout(10):
        stream = client.sse(
            f"/api/conversations/{conversation_id}/stream",
            headers={"Last-Event-ID": f"{message_id}:3"},
        )
        opening = next(stream)
        stream.close()
    assert (opening.event, opening.json()) == ("status", resumed)
    usage = ApiClient(second.base, token).get(f"/api/messages/{message_id}").json()["usage"]
    assert usage["estimated"] is True  # the handed-over call was estimated, the second reported
    with psycopg.connect(first.db_url) as conn:  # one row per LLM call, none twice
        calls = conn.execute(
            "SELECT epoch, estimated, prompt_tokens, completion_tokens "
            "FROM llm_calls WHERE message_id = %s ORDER BY epoch",
            (message_id,),
        ).fetchall()
    assert [(c[0], c[1]) for c in calls] == [(1, True), (2, False)]
    assert usage["prompt_tokens"] == calls[0][2] + calls[1][2]
    assert usage["completion_tokens"] == calls[0][3] + calls[1][3]


@pytest.mark.parametrize("servers", [{"max_resumes": 0}], indirect=True)
def test_after_max_resumes_an_orphan_is_interrupted(servers: list[AppServer]) -> None:
    first, second = servers
    token = make_user(first.db_url, "rae")
    message_id = _send(first, token, "@fake chunks=300 delay=0.01")
    _wait_for_text(second, token, message_id, 1)
    first.runtime.shutdown()
    result = follow_message([second.base], token, message_id)
    status, stored, _, _, error = _row(first.db_url, message_id)
    assert status == "interrupted" and result.done is not None
    assert result.done["status"] == "interrupted" and "CHATSVC_MAX_RESUMES=0" in error
    assert result.text == stored and stored


def test_the_reapers_add_metered_tokens_to_the_users_totals(
    servers: list[AppServer], db_url: str
) -> None:
    token = make_user(db_url, "alice")
    clients = [ApiClient(server.base, token) for server in servers]
    answers = [client.wait_terminal(client.ask("hello")) for client in clients]
    used = [
        answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
        for answer in answers
    ]
    assert all(used), answers
    # GET /api/usage counts every call at once, rolled up or not.
    assert clients[0].get("/api/usage").json()["total_tokens"] == sum(used)

    def rolled_up() -> bool:
        with psycopg.connect(db_url) as conn:
            totals = conn.execute("SELECT prompt_tokens + completion_tokens FROM users").fetchone()
            pending = conn.execute("SELECT count(*) FROM usage_pending").fetchone()
        return totals == (sum(used),) and pending == (0,)

    wait_until("the users' totals to take in the pending tokens", rolled_up)


def test_concurrent_reapers_never_claim_the_same_orphan(
    db_url: str, fake_llm: FakeLLMServer
) -> None:
    """Thirty expired leases, four processes sweeping at once: each row is claimed once."""
    with psycopg.connect(db_url) as conn:
        user = conn.execute("INSERT INTO users (name) VALUES ('sam') RETURNING id").fetchone()
        assert user is not None
        conversations = [
            conn.execute(
                "INSERT INTO conversations (user_id) VALUES (%s) RETURNING id", (user[0],)
            ).fetchone()[0]  # type: ignore[index]
            for _ in range(30)
        ]
        for conversation in conversations:
            conn.execute(
                "INSERT INTO messages (conversation_id, role, status, epoch, owner, "
                "lease_expires_at) VALUES (%s, 'assistant', 'streaming', 1, 'gone', "
                "now() - interval '1 minute')",
                (conversation,),
            )
    settings = TEST_SETTINGS.with_(
        orphan_policy="interrupt", model="openai/fake", llm_api_base=fake_llm.api_base
    )
    reapers = [AppServer(db_url, settings) for _ in range(4)]
    try:
        with gevent.Timeout(20), psycopg.connect(db_url, autocommit=True) as conn:
            while conn.execute(
                "SELECT count(*) FROM messages WHERE status = 'streaming'"
            ).fetchone() != (0,):
                gevent.sleep(0.1)
            rows = conn.execute("SELECT status, epoch, resume_count FROM messages").fetchall()
    finally:
        for server in reapers:
            server.stop()
    assert rows == [("interrupted", 2, 1)] * 30
    assert sum(server.runtime.reaper.taken for server in reapers) == 30


def test_a_streaming_answer_is_measured_by_its_chunks_not_its_row(
    db_url: str, fake_llm: FakeLLMServer
) -> None:
    """Every reader, and a takeover, take a streaming answer's committed length from its
    chunks: the row's length columns may lag behind them (a checkpoint need not write
    them), and nothing shown or resumed depends on them."""
    question = "@fake chunks=40 size=3"
    expected = script_text(parse_directives(question))
    token = make_user(db_url, "lena")
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT user_id FROM api_tokens ORDER BY created_at DESC").fetchone()
        assert row is not None
        user = row[0]
        conversation = conn.execute(
            "INSERT INTO conversations (user_id) VALUES (%s) RETURNING id", (user,)
        ).fetchone()[0]  # type: ignore[index]
        asked = conn.execute(
            "INSERT INTO messages (conversation_id, user_id, role, status, content, "
            "content_length, completed_at) VALUES (%s, %s, 'user', 'completed', %s, %s, now()) "
            "RETURNING id",
            (conversation, user, question, len(question)),
        ).fetchone()[0]  # type: ignore[index]
        # An orphan (its owner is gone) whose row says no text was committed.
        answer = conn.execute(
            "INSERT INTO messages (conversation_id, user_id, parent_id, reply_to, role, status, "
            "model, epoch, owner, lease_expires_at) VALUES (%s, %s, %s, %s, 'assistant', "
            "'streaming', 'openai/fake', 1, 'gone', now() - interval '1 minute') RETURNING id",
            (conversation, user, asked, asked),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "UPDATE conversations SET current_leaf_id = %s WHERE id = %s", (answer, conversation)
        )
        chunk(conn, answer, "text", 0, expected[:12], update_row=False)
        chunk(conn, answer, "text", 12, expected[12:30], update_row=False)
        assert conn.execute(
            "SELECT content_length FROM messages WHERE id = %s", (answer,)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT content, content_length FROM active_streams WHERE message_id = %s", (answer,)
        ).fetchone() == (expected[:30], 30)
        assert conn.execute(
            "SELECT content_length FROM conversation_status WHERE conversation_id = %s",
            (conversation,),
        ).fetchone() == (30,)
        assert conn.execute(
            "SELECT message_parts(m) FROM messages m WHERE id = %s", (answer,)
        ).fetchone() == ([{"type": "text", "text": expected[:30]}],)
    server = AppServer(db_url, fake_llm.settings())
    try:
        client = ApiClient(server.base, token)
        shown = client.get(f"/api/messages/{answer}").json()
        assert shown["content_length"] == len(shown["content"]) >= 30
        # Taken over at 30 (the chunks' end), continued, finished: no gap, no repeat.
        done = client.wait_terminal(str(answer))
    finally:
        server.stop()
    assert done["status"] == "completed" and done["epoch"] == 2
    assert done["content"] == expected and done["content_length"] == len(expected)
