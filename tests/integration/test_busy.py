"""A worker whose event loop lags refuses new answers, takes over no orphans, and says it is
not ready; reads and the answers it has go on (CHATSVC_MAX_LOOP_LAG_MS)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests

from tests.support import ApiClient, AppServer, WsClient, make_user, wait_until
from tests.support import query as rows


def _count(db_url: str, table: str) -> int:
    return int(rows(db_url, f"SELECT count(*) AS n FROM {table}")[0]["n"])


def _refusals(client: ApiClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("chatsvc_busy_refusals_total "):
            return float(line.split()[1])
    return 0.0


def _lag(server: AppServer, seconds: float) -> None:
    """Feed the worker's sampler a lasting lag of `seconds` (its own sampling is stopped)."""
    for _ in range(20):
        server.runtime.pressure.observe(seconds)


@pytest.fixture
def server(db_url: str, fake_llm: Any) -> Iterator[AppServer]:
    server = AppServer(db_url, fake_llm.settings(max_loop_lag_ms=250, orphan_policy="interrupt"))
    server.runtime.pressure.stop()  # the test decides what the loop's lag is
    yield server
    server.stop()


def _refused(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "unavailable"
    assert "too busy" in response.json()["error"]["message"]


def test_a_busy_worker_refuses_every_way_of_starting_an_answer_and_writes_nothing(
    server: AppServer,
) -> None:
    alice = ApiClient(server.base, make_user(server.db_url, "alice"))
    conversation = alice.conversation()["id"]
    sent = alice.send(conversation, "@fake chunks=2")
    answer, question = sent["assistant_message"]["id"], sent["user_message"]["id"]
    alice.wait_terminal(answer)
    stopped = alice.send(alice.conversation()["id"], "@fake chunks=2000 delay=0.01")
    stopped_id = stopped["assistant_message"]["id"]
    alice.post(f"/api/messages/{stopped_id}/cancel")
    alice.wait_terminal(stopped_id)
    before = {table: _count(server.db_url, table) for table in ("messages", "conversations")}
    refusals = _refusals(alice)

    _lag(server, 1.0)
    _refused(alice.post(f"/api/conversations/{conversation}/messages", {"content": "more"}))
    _refused(alice.post(f"/api/messages/{answer}/regenerate"))
    _refused(alice.post(f"/api/messages/{question}/edit", {"content": "again"}))
    _refused(alice.post(f"/api/messages/{stopped_id}/continue"))
    message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}
    body = {"id": "new-chat", "messages": [message], "trigger": "submit-message"}
    _refused(alice.post("/api/chat", body))
    ws = WsClient(server.base)
    try:
        ws.send({"type": "auth", "token": alice.token})
        ws.send({"type": "send", "conversation_id": conversation, "content": "by socket"})
        frame = ws.until(lambda f: f["type"] == "error")[-1]
        assert frame["code"] == "unavailable", frame
    finally:
        ws.close()
    assert {table: _count(server.db_url, table) for table in before} == before
    assert _refusals(alice) == refusals + 6
    # Reads go on, and readiness says why new work should go elsewhere.
    assert alice.get(f"/api/messages/{answer}").json()["status"] == "completed"
    ready = alice.get("/readyz")
    assert ready.status_code == 503 and "too busy" in ready.json()["error"]["message"]

    _lag(server, 0.0)
    assert alice.get("/readyz").status_code == 200
    again = alice.send(conversation, "@fake chunks=2")["assistant_message"]
    assert alice.wait_terminal(again["id"])["status"] == "completed"


def test_a_busy_worker_leaves_orphans_to_a_worker_with_room(server: AppServer) -> None:
    _lag(server, 1.0)
    with psycopg.connect(server.db_url) as conn:
        user = conn.execute("INSERT INTO users (name) VALUES ('sam') RETURNING id").fetchone()
        assert user is not None
        conversation = conn.execute(
            "INSERT INTO conversations (user_id) VALUES (%s) RETURNING id", (user[0],)
        ).fetchone()
        assert conversation is not None
        conn.execute(
            "INSERT INTO messages (conversation_id, role, status, epoch, owner, "
            "lease_expires_at) VALUES (%s, 'assistant', 'streaming', 1, 'gone', "
            "now() - interval '1 minute')",
            (conversation[0],),
        )
    reaper = server.runtime.reaper
    assert reaper.sweep() == 0
    assert rows(server.db_url, "SELECT status, epoch FROM messages") == [
        {"status": "streaming", "epoch": 1}
    ]
    _lag(server, 0.0)
    reaper.wake()
    wait_until(
        "the orphan to be taken over",
        lambda: rows(server.db_url, "SELECT status FROM messages")[0]["status"] != "streaming",
        10,
    )
    assert rows(server.db_url, "SELECT status, epoch FROM messages") == [
        {"status": "interrupted", "epoch": 2}
    ]
    assert reaper.taken == 1
