"""Limits and revocation across real gunicorn instances sharing one database."""

from __future__ import annotations

from typing import Any

import gevent
import psycopg
import pytest
from click.testing import CliRunner
from simple_websocket.errors import ConnectionClosed

from chatsvc import cli
from tests.e2e.conftest import Instance
from tests.support import ApiClient, WsClient, make_user, read_sse, wait_until
from tests.support import query as rows

pytestmark = pytest.mark.e2e

SLOW = "@fake chunks=3000 delay=0.01"


def _streaming(db_url: str, user: str) -> int:
    found = rows(
        db_url,
        "SELECT count(*) AS n FROM messages m JOIN users u ON u.id = m.user_id "
        "WHERE u.name = %s AND m.status = 'streaming'",
        user,
    )
    return int(found[0]["n"])


def test_a_users_active_streams_are_counted_across_instances(
    pair: tuple[Instance, Instance], shared_db: str
) -> None:
    token = make_user(shared_db, "busy")
    clients = [instance.client(token) for instance in pair]
    conversations = [clients[0].conversation()["id"] for _ in range(10)]
    before = int(rows(shared_db, "SELECT count(*) AS n FROM messages")[0]["n"])
    sends = [
        gevent.spawn(clients[i % 2].post, f"/api/conversations/{c}/messages", {"content": SLOW})
        for i, c in enumerate(conversations)
    ]
    responses = [send.get(timeout=30) for send in sends]
    try:
        codes = sorted(r.status_code for r in responses)
        assert codes == [202] * 4 + [429] * 6, codes  # CHATSVC_MAX_ACTIVE_PER_USER = 4
        assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {
            "too_many_streams"
        }
        assert _streaming(shared_db, "busy") == 4
        after = int(rows(shared_db, "SELECT count(*) AS n FROM messages")[0]["n"])
        assert after == before + 2 * 4  # a user message and an answer per accepted send
    finally:
        for conversation in conversations:
            clients[0].post(f"/api/conversations/{conversation}/cancel")


def _cli(db_url: str, *args: str) -> None:
    result = CliRunner().invoke(cli.main, list(args), env={"DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [("users", "disable"), ("tokens", "revoke")])
def test_disable_and_revoke_close_streams_and_sockets_on_every_instance(
    pair: tuple[Instance, Instance], shared_db: str, command: tuple[str, str]
) -> None:
    a, b = pair
    name = f"gone-{command[0]}"
    token = make_user(shared_db, name)
    client = a.client(token)
    conversation = client.conversation()["id"]
    answer = client.send(conversation, SLOW)["assistant_message"]["id"]
    browser = ApiClient(b.base, None)
    assert browser.post("/api/session", {"token": token}).status_code == 201
    # An SSE stream on `a` (Bearer), one on `b` (session cookie), a WebSocket on `b`.
    streams = [
        client.get(f"/api/messages/{answer}/stream", stream=True, timeout=30),
        browser.get(f"/api/conversations/{conversation}/stream", stream=True, timeout=30),
    ]
    readers = [read_sse(response) for response in streams]
    for events in readers:
        assert next(e for e in events if e.event == "delta")
    ws = WsClient(b.base)
    ws.send({"type": "auth", "token": token})
    ws.send({"type": "subscribe", "conversation_id": conversation})
    ws.until(lambda frame: frame["type"] == "delta")
    try:
        _cli(shared_db, *command, name)
        with gevent.Timeout(5, AssertionError("an SSE stream stayed open")):
            for events in readers:
                for _ in events:
                    pass
        frames: list[dict[str, Any]] = ws.until(lambda f: f["type"] == "error", timeout=5)
        assert frames[-1]["code"] == "unauthorized"
        with gevent.Timeout(5, AssertionError("the socket stayed open")):
            while ws.client.connected:
                try:
                    ws.client.receive(timeout=0.1)
                except ConnectionClosed:
                    break  # closed between the check and the read: what we wait for
        assert ws.client.close_reason == 1008
    finally:
        for response in streams:
            response.close()
        if ws.client.connected:
            ws.close()
    for instance in pair:
        assert instance.client(token).get("/api/conversations").status_code == 401
    assert browser.get("/api/conversations").status_code == 401
    assert browser.get(f"/api/conversations/{conversation}/stream").status_code == 401
    # Disabling cancels the user's answers; revoking tokens (a key rotation) does not.
    if command[0] == "users":
        wait_until("the answer to end", lambda: _streaming(shared_db, name) == 0, 10)
        assert rows(shared_db, "SELECT status FROM messages WHERE id = %s", answer) == [
            {"status": "cancelled"}
        ]
    else:
        assert _streaming(shared_db, name) == 1
        with psycopg.connect(shared_db) as conn:
            conn.execute("UPDATE messages SET cancel_requested_at = now() WHERE id = %s", (answer,))
