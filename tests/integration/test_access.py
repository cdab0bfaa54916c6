"""Per-user limits and revocation: too_many_streams, `users disable`, `tokens revoke`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import psycopg
import pytest
import requests
from click.testing import CliRunner

from chatsvc import cli
from chatsvc.engine.hub import RESYNC
from tests.support import (
    ApiClient,
    AppServer,
    WsClient,
    make_user,
    read_sse,
    wait_until,
)
from tests.support import query as rows

SLOW = "@fake chunks=2000 delay=0.01"


def _streaming(db_url: str) -> int:
    return int(rows(db_url, "SELECT count(*) AS n FROM active_streams")[0]["n"])


def _count(db_url: str, table: str) -> int:
    return int(rows(db_url, f"SELECT count(*) AS n FROM {table}")[0]["n"])


@pytest.fixture
def limited(db_url: str, fake_llm: Any) -> Iterator[AppServer]:
    server = AppServer(db_url, fake_llm.settings(max_active_per_user=2))
    yield server
    server.stop()


def test_a_send_beyond_the_users_active_streams_is_429_and_writes_nothing(
    limited: AppServer,
) -> None:
    alice = ApiClient(limited.base, make_user(limited.db_url, "alice"))
    bob = ApiClient(limited.base, make_user(limited.db_url, "bob"))
    first = alice.send(alice.conversation()["id"], SLOW)["assistant_message"]
    alice.send(alice.conversation()["id"], SLOW)
    third = alice.conversation()["id"]
    before = _count(limited.db_url, "messages")
    refused = alice.post(f"/api/conversations/{third}/messages", {"content": "one more"})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_streams"
    assert "CHATSVC_MAX_ACTIVE_PER_USER" in refused.json()["error"]["message"]
    assert _count(limited.db_url, "messages") == before
    # Another user is not affected, and a finished answer makes room.
    bob.send(bob.conversation()["id"], "@fake chunks=2")
    alice.post(f"/api/messages/{first['id']}/cancel")
    alice.wait_terminal(first["id"])
    assert alice.send(third, "@fake chunks=2")["assistant_message"]["status"] == "streaming"


def test_regenerate_edit_and_continue_count_against_the_limit_too(limited: AppServer) -> None:
    alice = ApiClient(limited.base, make_user(limited.db_url, "alice"))
    conversation = alice.conversation()["id"]
    sent = alice.send(conversation, "@fake chunks=2")
    answer, question = sent["assistant_message"]["id"], sent["user_message"]["id"]
    alice.wait_terminal(answer)
    stopped = alice.send(alice.conversation()["id"], SLOW)["assistant_message"]
    alice.post(f"/api/messages/{stopped['id']}/cancel")
    alice.wait_terminal(stopped["id"])
    busy = [alice.send(alice.conversation()["id"], SLOW)["assistant_message"] for _ in range(2)]
    before = _count(limited.db_url, "messages")
    for path, body in (
        (f"/api/messages/{answer}/regenerate", None),
        (f"/api/messages/{question}/edit", {"content": "again"}),
        (f"/api/messages/{stopped['id']}/continue", None),
    ):
        refused = alice.post(path, body)
        assert (refused.status_code, refused.json()["error"]["code"]) == (
            429,
            "too_many_streams",
        ), path
    assert _count(limited.db_url, "messages") == before
    assert alice.get(f"/api/messages/{stopped['id']}").json()["status"] == "cancelled"
    for message in busy:
        alice.post(f"/api/messages/{message['id']}/cancel")
        alice.wait_terminal(message["id"])
    assert alice.post(f"/api/messages/{stopped['id']}/continue").status_code == 202


def test_concurrent_sends_of_one_user_on_two_instances_never_exceed_the_limit(
    limited: AppServer,
) -> None:
    other = AppServer(limited.db_url, limited.settings)
    try:
        token = make_user(limited.db_url, "alice")
        clients = [ApiClient(server.base, token) for server in (limited, other)]
        conversations = [clients[0].conversation()["id"] for _ in range(8)]
        sends = [
            gevent.spawn(clients[i % 2].post, f"/api/conversations/{c}/messages", {"content": SLOW})
            for i, c in enumerate(conversations)
        ]
        statuses = sorted(s.get(timeout=30).status_code for s in sends)
    finally:
        other.stop()
    assert statuses == [202, 202] + [429] * 6
    streaming = "SELECT count(*) AS n FROM messages WHERE status = 'streaming'"
    assert rows(limited.db_url, streaming)[0]["n"] in (0, 1, 2)  # `other` handed its own off
    assert _count(limited.db_url, "messages") == 4


def _cli(db_url: str, *args: str) -> str:
    result = CliRunner().invoke(cli.main, list(args), env={"DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    return result.output


def _open_streams(server: AppServer, token: str) -> tuple[requests.Response, WsClient, Any]:
    """An open conversation stream (Bearer) and an authenticated WebSocket following it."""
    client = ApiClient(server.base, token)
    conversation = client.conversation()["id"]
    client.send(conversation, SLOW)
    response = client.get(f"/api/conversations/{conversation}/stream", stream=True, timeout=30)
    assert response.status_code == 200
    events = read_sse(response)
    assert next(e for e in events if e.event == "delta")
    ws = WsClient(server.base)
    ws.send({"type": "auth", "token": token})
    ws.send({"type": "subscribe", "conversation_id": conversation})
    ws.until(lambda frame: frame["type"] == "delta")
    return response, ws, events


def _ends(events: Any, ws: WsClient) -> None:
    """The SSE stream reaches its end and the socket says why and closes, both within 5 s."""
    with gevent.Timeout(5, AssertionError("the SSE stream stayed open")):
        for _ in events:
            pass
    frames = ws.until(lambda frame: frame["type"] == "error", timeout=5)
    assert frames[-1]["code"] == "unauthorized", frames[-1]
    with gevent.Timeout(5, AssertionError("the socket stayed open")):
        while ws.client.connected:
            ws.client.receive(timeout=0.1)
    assert ws.client.close_reason == 1008


def test_disabling_a_user_refuses_their_requests_and_ends_their_streams(
    limited: AppServer,
) -> None:
    db_url = limited.db_url
    token = make_user(db_url, "alice")
    browser = ApiClient(limited.base, None)
    assert browser.post("/api/session", {"token": token}).status_code == 201
    response, ws, events = _open_streams(limited, token)
    try:
        said = _cli(db_url, "users", "disable", "alice")
        assert "disabled user alice; cancelled 1 streaming answer(s)" in said
        _ends(events, ws)
    finally:
        response.close()
        if ws.client.connected:
            ws.close()
    assert ApiClient(limited.base, token).get("/api/conversations").status_code == 401
    assert browser.get("/api/conversations").status_code == 401
    wait_until("the answer to be cancelled", lambda: _streaming(db_url) == 0, 10)
    late = WsClient(limited.base)
    late.send({"type": "auth", "token": token})
    assert late.receive()["code"] == "unauthorized"
    late.close()
    _cli(db_url, "users", "enable", "alice")
    assert ApiClient(limited.base, token).get("/api/conversations").status_code == 200
    assert browser.get("/api/conversations").status_code == 200


def test_revoking_a_users_tokens_ends_their_sessions_and_streams(limited: AppServer) -> None:
    db_url = limited.db_url
    token = make_user(db_url, "alice")
    make_user(db_url, "bob")
    browser = ApiClient(limited.base, None)
    assert browser.post("/api/session", {"token": token}).status_code == 201
    response, ws, events = _open_streams(limited, token)
    try:
        assert "revoked 1 token of alice" in _cli(db_url, "tokens", "revoke", "alice")
        _ends(events, ws)
        assert _streaming(db_url) == 1  # a key rotation does not stop the answer
    finally:
        response.close()
        if ws.client.connected:
            ws.close()
    assert ApiClient(limited.base, token).get("/api/conversations").status_code == 401
    assert browser.get("/api/conversations").status_code == 401
    assert _count(db_url, "api_tokens") == 1  # bob's
    fresh = _cli(db_url, "tokens", "create", "alice").splitlines()[-1]
    assert ApiClient(limited.base, fresh).get("/api/conversations").status_code == 200


def test_disable_and_revoke_name_a_user_that_exists(db_url: str) -> None:
    for args in (["users", "disable", "nobody"], ["tokens", "revoke", "nobody"]):
        result = CliRunner().invoke(cli.main, args, env={"DATABASE_URL": db_url})
        assert result.exit_code == 1 and "No user named 'nobody'" in result.output


@pytest.mark.parametrize("how", ["auth frame", "upgrade header"])
def test_a_socket_that_missed_the_revocation_looks_again_after_a_resync(
    limited: AppServer, how: str
) -> None:
    token = make_user(limited.db_url, "alice")
    header = {"Authorization": f"Bearer {token}"}
    ws = WsClient(limited.base, header if how == "upgrade header" else None)
    try:
        if how == "auth frame":
            ws.send({"type": "auth", "token": token})
        ws.send({"type": "subscribe", "conversation_id": str(uuid.uuid4())})
        assert ws.receive()["code"] == "not_found"  # authenticated
        limited.runtime.hub.broadcast(RESYNC)  # nothing lost yet: the socket stays
        ws.send({"type": "subscribe", "conversation_id": str(uuid.uuid4())})
        assert ws.receive()["code"] == "not_found"
        with psycopg.connect(limited.db_url) as conn:  # no NOTIFY: as if it were lost
            conn.execute("UPDATE users SET disabled_at = now() WHERE name = 'alice'")
        limited.runtime.hub.broadcast(RESYNC)
        assert ws.receive()["code"] == "unauthorized"
        with gevent.Timeout(5, AssertionError("the socket stayed open")):
            while ws.client.connected:
                ws.client.receive(timeout=0.1)
    finally:
        if ws.client.connected:
            ws.close()
