"""Durable streaming across real gunicorn processes: fan-out, reconnects, cancel, true state."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from typing import Any

import gevent
import psycopg
import pytest
import requests

from tests.e2e.conftest import Instance
from tests.support import ApiClient, FakeLLMServer, WsClient, frames_text, make_user, read_sse

pytestmark = pytest.mark.e2e


def _content(db_url: str, message_id: str) -> tuple[str, int, str]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT content, content_length, status FROM messages WHERE id = %s", (message_id,)
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _collect(client: ApiClient, path: str, timeout: float = 30) -> list[Any]:
    with gevent.Timeout(timeout):
        return list(client.sse(path))


def _text(events: list[Any]) -> str:
    offset, parts = None, []
    for event in events:
        if event.event == "delta":
            data = event.json()
            assert offset is None or data["offset"] == offset, "gap or overlap"
            offset = data["offset"] + len(data["text"])
            parts.append(data["text"])
    return "".join(parts)


def test_subscribers_on_another_instance_receive_every_delta(
    pair: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, b = pair
    on_a, on_b = a.client(token), b.client(token)
    conversation = on_a.conversation()
    follow_conversation = gevent.spawn(
        lambda: list(_conversation_until_done(on_b, conversation["id"]))
    )
    gevent.sleep(0.3)  # let the conversation follower connect before the send
    sent = on_a.send(conversation["id"], "@fake chunks=80 size=3 delay=0.01 alphabet=mixed")
    message_id = sent["assistant_message"]["id"]
    on_message = _collect(on_b, f"/api/messages/{message_id}/stream")
    content, length, status = _content(shared_db, message_id)
    assert status == "completed" and length == 240
    assert _text(on_message) == content
    assert on_message[-1].event == "done" and on_message[-1].id == "240"
    conversation_events = follow_conversation.get(timeout=30)
    initial = next(
        e.json()["content"]
        for e in conversation_events
        if e.event == "message" and e.json()["id"] == message_id
    )
    assert initial + _text(conversation_events) == content
    # and the other direction
    reverse = on_b.send(conversation["id"], "@fake chunks=30 delay=0.01")
    reverse_id = reverse["assistant_message"]["id"]
    assert (
        _text(_collect(on_a, f"/api/messages/{reverse_id}/stream"))
        == _content(shared_db, reverse_id)[0]
    )


def _conversation_until_done(client: ApiClient, conversation_id: str) -> Any:
    for event in client.sse(f"/api/conversations/{conversation_id}/stream"):
        yield event
        if event.event == "done":
            return


def test_reconnect_storm_across_instances_has_no_gap_or_overlap(
    pair: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, b = pair
    clients = [a.client(token), b.client(token)]
    conversation = clients[0].conversation()
    message_id = clients[0].send(
        conversation["id"], "@fake chunks=300 size=2 delay=0.005 alphabet=mixed"
    )["assistant_message"]["id"]

    def reader(seed: int) -> tuple[str, int]:
        rng = random.Random(seed)
        received: list[tuple[int, str]] = []
        last_id: str | None = None
        connections = 0
        while connections < 300:
            connections += 1
            client = rng.choice(clients)
            headers = {"Last-Event-ID": last_id} if last_id else {}
            response = client.get(
                f"/api/messages/{message_id}/stream", headers=headers, stream=True
            )
            if response.status_code == 204:
                break
            assert response.status_code == 200, response.text
            budget = rng.randint(1, 6)
            finished = False
            for event in read_sse(response):
                if event.event == "delta":
                    received.append((event.json()["offset"], event.json()["text"]))
                    last_id = event.id
                    budget -= 1
                elif event.event == "done":
                    finished = True
                    break
                if budget == 0:
                    break
            response.close()
            if finished:
                break
        offset = 0
        for start, text in received:
            assert start == offset, f"reader {seed}: gap or overlap at {start} != {offset}"
            offset += len(text)
        return "".join(text for _, text in received), connections

    readers = [gevent.spawn(reader, seed) for seed in range(12)]
    gevent.joinall(readers, timeout=60, raise_error=True)
    content, length, status = _content(shared_db, message_id)
    assert status == "completed" and length == 600
    for greenlet in readers:
        text, connections = greenlet.value
        assert text == content
        assert connections > 2


def test_slow_and_stalled_subscribers_do_not_hold_back_others(
    shared_db: str, fake_llm: FakeLLMServer, pair: tuple[Instance, Instance], token: str
) -> None:
    a, _ = pair
    small = Instance(shared_db, fake_llm, env={"CHATSVC_SUBSCRIBER_QUEUE": "4"}).start()
    try:
        small.wait_ready()
        client = small.client(token)
        conversation = a.client(token).conversation()
        sent = a.client(token).send(conversation["id"], "@fake chunks=400 size=50 delay=0.005")
        message_id = sent["assistant_message"]["id"]
        path = f"/api/messages/{message_id}/stream"
        stalled = []
        for _ in range(3):  # connect, send the request, never read a byte
            sock = socket.create_connection(("127.0.0.1", small.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
            )
            stalled.append(sock)

        def slow() -> str:
            response = client.get(path, stream=True)
            parts = []
            for event in read_sse(response):
                if event.event == "delta":
                    parts.append(event.json()["text"])
                    gevent.sleep(0.02)  # far slower than the generator
                if event.event == "done":
                    break
            return "".join(parts)

        slow_reader = gevent.spawn(slow)
        started = time.monotonic()
        fast = _collect(client, path)
        fast_seconds = time.monotonic() - started
        content, length, status = _content(shared_db, message_id)
        assert status == "completed" and length == 20_000
        assert _text(fast) == content
        assert fast_seconds < 15
        assert slow_reader.get(timeout=60) == content
        for sock in stalled:
            sock.close()
    finally:
        small.stop()


def test_cancel_reaches_the_owner_in_another_process(
    pair: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, b = pair
    message_id = a.client(token).ask("@fake chunks=2000 delay=0.01")
    events = b.client(token).sse(f"/api/messages/{message_id}/stream")
    with gevent.Timeout(20):
        next(e for e in events if e.event == "delta")
        response = b.client(token).post(f"/api/messages/{message_id}/cancel")
        assert response.status_code == 202
        started = time.monotonic()
        rest = list(events)
    elapsed = time.monotonic() - started
    assert rest[-1].event == "done" and rest[-1].json()["status"] == "cancelled"
    assert elapsed < 0.1 + 0.5  # one checkpoint interval plus notification latency, generously
    content, length, status = _content(shared_db, message_id)
    assert status == "cancelled" and 0 < length < 8000 and len(content) == length


def test_true_state_from_every_reader_while_streaming(
    pair: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, b = pair
    conversation = a.client(token).conversation()
    message_id = a.client(token).send(conversation["id"], "@fake chunks=600 delay=0.01")[
        "assistant_message"
    ]["id"]
    with psycopg.connect(shared_db, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        row = None
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT content, content_length, owner, epoch FROM active_streams "
                "WHERE message_id = %s",
                (message_id,),
            ).fetchone()
            if row and row[1] >= 40:
                break
            gevent.sleep(0.05)
        assert row is not None and len(row[0]) == row[1] >= 40 and row[3] == 1
        status_row = conn.execute(
            "SELECT is_streaming, active_message_id FROM conversation_status "
            "WHERE conversation_id = %s",
            (conversation["id"],),
        ).fetchone()
        assert status_row == (True, __import__("uuid").UUID(message_id))
    on_b = b.client(token)
    status = on_b.get(f"/api/conversations/{conversation['id']}/status").json()
    assert status["is_streaming"] and status["content_length"] >= 40
    assert on_b.get(f"/api/messages/{message_id}").json()["status"] == "streaming"
    env = {"DATABASE_URL": shared_db, "PATH": "/usr/bin:/bin"}
    streams = subprocess.run(
        [sys.executable, "-m", "chatsvc", "streams"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert message_id in streams and conversation["id"] in streams
    shown = subprocess.run(
        [sys.executable, "-m", "chatsvc", "show", conversation["id"]],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert "streaming" in shown.splitlines()[0]
    assert "[assistant streaming" in shown
    on_b.post(f"/api/conversations/{conversation['id']}/cancel")
    on_b.wait_terminal(message_id)


def test_many_subscribers_on_a_two_worker_instance(
    shared_db: str, fake_llm: FakeLLMServer, token: str
) -> None:
    two = Instance(shared_db, fake_llm, workers=2).start()
    try:
        two.wait_ready()
        client = two.client(token)
        message_id = client.ask("@fake chunks=200 size=5 delay=0.01")
        path = f"/api/messages/{message_id}/stream"
        readers = [gevent.spawn(_collect, client, path) for _ in range(40)]
        gevent.joinall(readers, timeout=40, raise_error=True)
        content = _content(shared_db, message_id)[0]
        assert len(content) == 1000
        assert all(_text(r.value) == content for r in readers)
        metrics = json.dumps([client.get("/metrics").text for _ in range(6)])
        assert "chatsvc_checkpoint_transactions_total" in metrics
    finally:
        two.stop()


def test_send_semantics_through_gunicorn(
    pair: tuple[Instance, Instance], token: str, shared_db: str
) -> None:
    a, b = pair
    on_a, on_b = a.client(token), b.client(token)
    conversation = on_a.conversation()
    path = f"/api/conversations/{conversation['id']}/messages"
    first = on_a.post(path, {"content": "@fake chunks=300 delay=0.01", "client_message_id": "k"})
    assert first.status_code == 202
    message_id = first.json()["assistant_message"]["id"]
    busy = on_b.post(path, {"content": "again"})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "stream_active"
    repeat = on_b.post(path, {"content": "again", "client_message_id": "k"})
    assert repeat.status_code == 200
    assert repeat.json()["assistant_message"]["id"] == message_id
    with psycopg.connect(shared_db, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT content_length FROM messages WHERE id = %s", (message_id,)
            ).fetchone()
            if row and row[0] > 0:
                break
            gevent.sleep(0.05)
        conn.execute("UPDATE messages SET cancel_requested_at = now() WHERE id = %s", (message_id,))
    final = on_b.wait_terminal(message_id)
    assert final["status"] == "cancelled" and 0 < final["content_length"] < 1200
    stream = f"/api/messages/{message_id}/stream"
    assert on_b.get(stream + f"?offset={final['content_length']}").status_code == 204
    assert on_b.get(stream + f"?offset={final['content_length'] + 1}").status_code == 400

    failing = on_b.send(conversation["id"], "@fake chunks=40 fail_after=7")
    failed = on_a.wait_terminal(failing["assistant_message"]["id"])
    assert failed["status"] == "failed" and failed["content_length"] == 28 and failed["error"]


def test_websocket_and_project_room_across_instances(
    pair: tuple[Instance, Instance], shared_db: str
) -> None:
    a, b = pair
    owner_token = make_user(shared_db, f"owner{time.monotonic_ns()}")
    member_token = make_user(shared_db, f"member{time.monotonic_ns()}")
    owner, member = a.client(owner_token), b.client(member_token)
    member_name = member.get("/api/me").json()["name"]
    project = owner.post("/api/projects", {"name": "Room"}).json()
    owner.post(f"/api/projects/{project['id']}/members", {"user": member_name})
    room: list[Any] = []

    def read_room() -> None:
        for event in member.sse(f"/api/projects/{project['id']}/events"):
            room.append((event.event, event.json()))

    reader = gevent.spawn(read_room)
    ws = WsClient(b.base)
    ws.send({"type": "auth", "token": member_token})
    ws.send({"type": "join_project", "project_id": project["id"]})
    gevent.sleep(0.3)  # let both room followers subscribe
    try:
        conversation = owner.conversation(project_id=project["id"])
        answer = owner.send(conversation["id"], "@fake chunks=60 size=3 delay=0.01 alphabet=mixed")[
            "assistant_message"
        ]
        ws.send(
            {"type": "subscribe", "conversation_id": conversation["id"], "message_id": answer["id"]}
        )
        frames = ws.until(lambda f: f["type"] == "done")
        content = _content(shared_db, answer["id"])[0]
        assert frames_text(frames, answer["id"]) == content
        frame_types = [f["type"] for f in frames]
        assert "conversation.created" in frame_types and "stream.started" in frame_types
        with gevent.Timeout(10):
            while len(room) < 4:
                gevent.sleep(0.05)
        # The untitled conversation is titled after its first message.
        assert [e[0] for e in room] == [
            "conversation.created",
            "conversation.updated",
            "stream.started",
            "stream.finished",
        ]
        owner.delete(f"/api/projects/{project['id']}/members/{member_name}")
        reader.join(timeout=10)
        assert reader.ready()  # the removed member's room stream ended
    finally:
        ws.close()
        reader.kill()


def test_session_cookie_is_secure_behind_a_tls_proxy_on_this_host(
    pair: tuple[Instance, Instance], token: str
) -> None:
    a, _ = pair
    plain = requests.post(f"{a.base}/api/session", json={"token": token}, timeout=10)
    proxied = requests.post(
        f"{a.base}/api/session",
        json={"token": token},
        headers={"X-Forwarded-Proto": "https"},  # gunicorn trusts it from 127.0.0.1
        timeout=10,
    )
    assert plain.status_code == proxied.status_code == 201
    plain_cookie, proxied_cookie = plain.headers["Set-Cookie"], proxied.headers["Set-Cookie"]
    assert "HttpOnly" in plain_cookie and "SameSite=Strict" in plain_cookie
    assert "Secure" not in plain_cookie
    assert "Secure" in proxied_cookie and "HttpOnly" in proxied_cookie
